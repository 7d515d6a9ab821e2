"""The paper's intervention application on the synthetic world: the quickstart's
methods, trained as there, roll out the eval events again with the last half of
the agents of step 4 writing a counter-rumor comment (别信谣言，扩散: "don't
believe the rumor, pass it on"), and the run reports how each method's
population changes after it against the rollout without it (same keys). The
world answers the same intervention exactly (`synthetic.generate` with it,
every random draw unchanged), so each method's predicted change is compared
with the true one: `state` and `sft` cannot see it (their change is exactly 0),
`recent` and `popular` see it only when they quote it, `mf` through the mean
field.

The intervention's keys (`intervention.*`) change only the rollouts: with
`--trained-from` a quickstart run's trained stages are reused as they are
(116 s on 2 CPU cores after the README's main command). From scratch it trains
those stages first. Results: docs/experiments/intervention.md.

  python -m mfjax run --config experiments/intervention.py --workdir runs/intervention
  python -m mfjax run --config experiments/intervention.py --trained-from runs/quickstart --workdir runs/intervention
  python -m mfjax run --config experiments/intervention.py:smoke
"""

import os

from mfjax.configs import load_config

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")


def get_config(arg: str = ""):
  if arg not in ("", "smoke"):
    raise ValueError(f"unknown argument {arg!r} for intervention (use '' or 'smoke')")
  c = load_config(QUICKSTART + (":" + arg if arg else ""), [])
  c.intervention.text = "别信谣言，扩散"
  c.intervention.step = 4
  c.intervention.agents = c.data.agents_per_step // 2
  return c
