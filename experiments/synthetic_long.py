r"""Long horizons on the synthetic world: the quickstart's trained stages rolled out for 256 steps of
16 agents (4,096 actions an event; the stages trained on 12 steps), where the world's own law gives
the exact reference at every step: each method's and reference simulator's KL per step, and its drift
from steps 4-16 to steps 193-256 (results.json "drift", plots/kl_per_step.png).

It changes only rollout and scoring keys of experiments/quickstart.py, so it reads a finished
quickstart run's stages (--trained-from; nothing is trained) or, run alone, trains the same stages
first. 16 events, 2 seeds, every quickstart method: 5 min on 2 CPU cores with --trained-from. `40k`
goes past MF-MDP's anchor once: 2,500 steps of 16 agents (40,000 actions an event), 8 events, `state`
and `mf`, 1 seed: 6 min. Results and analysis: docs/experiments/long_horizons.md.

  python -m mfjax run --trained-from runs/quickstart --config experiments/synthetic_long.py \
    --workdir runs/synthetic_long
  python -m mfjax run --trained-from runs/quickstart --config experiments/synthetic_long.py:40k \
    --workdir runs/synthetic_40k
"""

import os

from mfjax.configs import load_config

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")


def get_config(arg: str = ""):
  if arg not in ("", "40k", "smoke"):
    raise ValueError(f"unknown argument {arg!r} for synthetic_long (use '', '40k' or 'smoke')")
  c = load_config(QUICKSTART + (":smoke" if arg == "smoke" else ""), [])  # only rollout and scoring keys change below
  c.data.eval_events = 16
  c.rollout.steps = 256
  c.rollout.seeds = 2
  c.rollout.batch_events = 16
  c.eval.drift = "4-16,193-256"  # the stability windows
  if arg == "40k":
    c.data.eval_events = 8
    c.rollout.steps = 2500
    c.rollout.methods = "state,mf"
    c.rollout.seeds = 1
    c.rollout.batch_events = 8
    c.eval.drift = "4-16,193-256,2437-2500"
  elif arg == "smoke":  # a quickstart.py:smoke run's stages, 32 steps
    c.data.eval_events = 8
    c.rollout.steps = 32
    c.rollout.batch_events = 8
    c.eval.drift = "4-8,28-32"
  return c
