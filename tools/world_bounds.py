"""How much a population signal can help in a synthetic world, from its exact truth.

For a WorldConfig, prints (JSON) the mean KL(real || simulated) over the steps
after warm-up of ideal simulators that sample B agents per step:
  floor_real     the real step proportions against their exact distribution (no sampling on the sim side)
  oracle         samples from the exact per-event distribution given the real history
  state_oracle   samples from the mean distribution of events with the same label (population-blind)
  free           the world itself, run on from the real warm-up with its own draws (`synthetic.run_free`):
                 the perfect simulator, whose history past the warm-up is its own, as a rollout's is
A method can only beat `state` by what separates oracle from state_oracle, and a rollout past its
warm-up can at best score as `free` does.

  python tools/world_bounds.py                          # the module's defaults
  python tools/world_bounds.py --herding 10 --mood-herding 6 --share-herding 6   # the quickstart world
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mfjax.categories import DIMENSIONS  # noqa: E402
from mfjax.data import synthetic  # noqa: E402
from mfjax.errors import checked, positive_int  # noqa: E402
from mfjax.evaluation import metrics  # noqa: E402
from mfjax.parallel import distributed  # noqa: E402


def bounds(config: synthetic.WorldConfig, events: int, warmup: int, seed: int) -> dict:
  _, truth = synthetic.generate(events, seed=seed, config=config)
  rng = np.random.default_rng(seed)
  E, T, B = events, config.steps, config.agents_per_step
  mask = np.ones((E, T, B), bool)
  w = (np.arange(T)[None] >= warmup) * np.ones((E, 1))
  out = {}
  free = synthetic.run_free(truth, warmup, seed=seed + 1)
  for name in ("floor_real", "oracle", "state_oracle", "free"):
    kls = []
    for d, cats in DIMENSIONS.items():
      real = np.asarray(metrics.step_distributions(truth.attributes[d], mask, len(cats))[0])
      p = truth.probs[d]
      if name == "state_oracle":
        p = np.stack([p[truth.rumor == r].mean(0) for r in truth.rumor])
      if name == "floor_real":
        q = p
      elif name == "free":
        q = np.asarray(metrics.step_distributions(free.attributes[d], mask, len(cats))[0])
      else:
        flat = p.reshape(-1, len(cats))
        q = np.stack([rng.multinomial(B, x / x.sum()) for x in flat]).reshape(p.shape) / B
      kls.append(float((np.asarray(metrics.kl(real, q)) * w).sum() / w.sum()))
    out[name] = float(np.mean(kls))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  steps = synthetic.WorldConfig.steps
  ap.add_argument("--events", type=positive_int, default=400, help="events drawn (default: %(default)s)")
  ap.add_argument("--warmup", type=checked(int, lambda v: 0 <= v < steps, f"in [0, {steps}) (the world's steps)"),
                  default=3, help="steps given from the real history, not scored (default: %(default)s)")
  ap.add_argument("--seed", type=int, default=5, help="the world's and the draws' seed (default: %(default)s)")
  ap.add_argument("--herding", type=float, default=synthetic.WorldConfig.herding,
                  help="pull of the population's doubt so far on each agent (default: %(default)s)")
  ap.add_argument("--mood-herding", type=float, default=synthetic.WorldConfig.mood_herding,
                  help="the same for sentiment (default: %(default)s)")
  ap.add_argument("--share-herding", type=float, default=synthetic.WorldConfig.share_herding,
                  help="the same for share vs comment (default: %(default)s)")
  ap.add_argument("--agents-per-step", type=positive_int, default=synthetic.WorldConfig.agents_per_step,
                  help="B, agents sampled per step (default: %(default)s)")
  a = ap.parse_args(argv)
  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts
  cfg = synthetic.WorldConfig(herding=a.herding, mood_herding=a.mood_herding, share_herding=a.share_herding,
                              agents_per_step=a.agents_per_step)
  print(json.dumps({"world": {"herding": a.herding, "mood_herding": a.mood_herding, "share_herding": a.share_herding,
                              "agents_per_step": a.agents_per_step}, **bounds(cfg, a.events, a.warmup, a.seed)}))


if __name__ == "__main__":
  main()
