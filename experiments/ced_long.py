r"""Long horizons on real events: the CED run's trained stages rolled out over every val event with at
least 256 actions, as 32 steps of 8 agents (the stages trained on 12 steps of 16), with each method's
and reference simulator's KL per step and its drift from steps 4-12 to steps 25-32 (results.json
"drift", plots/kl_per_step.png).

It reads the stages of a finished `experiments/ced_weibo.py` run (--trained-from; its config may
differ only in the rollout and scoring keys, which is all this file changes) and trains nothing:
`state`, `mf` (with the writer's channel, as ced_weibo.py's default) and `blind`, 2 seeds, over the 230
long val events: 33 min 46 s on 2 CPU cores alone (an Intel Xeon with AVX-512: data 2.4 min, rollouts
225 s for `state`, 324-348 s for `mf`, 289 s for `blind`, then labelling and scoring) with the channel's
file copied from the trained run's workdir, about 4.5 min more where the run estimates it. Results and
analysis: docs/experiments/long_horizons.md.

  python -m mfjax run --config experiments/ced_long.py --set data.path=data/ced \
    --trained-from runs/ced_weibo --workdir runs/ced_long
  python -m mfjax run --config experiments/ced_long.py:smoke --set data.path=../shared/data/ced \
    --trained-from runs/ced_smoke --workdir runs/ced_long_smoke   # from a ced_weibo.py:smoke run
"""

import os

from mfjax.configs import load_config

CED_WEIBO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ced_weibo.py")


def get_config(arg: str = ""):
  if arg not in ("", "smoke"):
    raise ValueError(f"unknown argument {arg!r} for ced_long (use '' or 'smoke')")
  c = load_config(CED_WEIBO + (":" + arg if arg else ""), [])  # only rollout and scoring keys change below
  c.data.eval_min_actions = 256  # 230 of the 364 val events
  c.data.eval_events = 364  # every one of them
  c.rollout.steps, c.rollout.agents_per_step = 32, 8
  c.rollout.methods = "state,mf,blind"  # blind: mf's design without the population (docs/experiments/ced.md)
  c.rollout.seeds = 2
  c.rollout.batch_events = 58  # 4 calls for the 230 events (the last wraps around by 2)
  c.eval.drift = "4-12,25-32"  # the stability windows: steps 25-32 against 4-12
  if arg == "smoke":  # a ced_weibo.py:smoke run's stages (4 steps of 8 agents, warm-up 1) over 16 steps of 4
    c.data.eval_events = 4
    c.rollout.steps, c.rollout.agents_per_step = 16, 4
    c.data.eval_min_actions = 64
    c.rollout.batch_events = 4
    c.eval.drift = "2-4,13-16"
  return c
