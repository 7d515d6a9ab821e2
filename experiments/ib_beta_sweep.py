"""IB-Tune's beta: the information-bottleneck curve on the synthetic world.

Trains one mean-field stage per beta in {0, 1e-3, 1e-2, 1e-1, 1} (from the same
base policy), and for each reports the validation relevance (NLL per action
token) against the compression (KL(q(m) || prior) per step, in bits), and the
KL of its rollouts against the real events (3 seeds). beta = 0 is the
no-compression ablation; large beta squeezes m towards the prior until the
policy can no longer read the population from it. Written to results.json
(`ib_sweep`), the printed table and plots/ib_curve.png; `state` and `sft` are
rolled out as references.

About 10 minutes on 2 CPU cores (582 s; `smoke`: 122 s, both with the compile
cache off; one compile serves every beta). Results: docs/experiments/ib_beta_sweep.md.

  python -m mfjax run --config experiments/ib_beta_sweep.py --workdir runs/ib_beta_sweep
  python -m mfjax run --config experiments/ib_beta_sweep.py:smoke
"""

from mfjax.pipeline_config import mf_llm_config

BETAS = "0,0.001,0.01,0.1,1"


def get_config(arg: str = ""):
  c = mf_llm_config()
  c.ib.sweep = BETAS
  c.rollout.methods = "state,sft"
  if arg == "smoke":
    c.data.train_events = 32
    c.data.val_events = 4
    c.data.eval_events = 8
    c.base.steps, c.sft.steps, c.mf_train.steps = 30, 5, 10
    c.train.log_every, c.train.ckpt_every, c.train.eval_every = 10, 10, 0
    c.rollout.seeds = 1
    c.rollout.batch_events = 8
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for ib_beta_sweep (use '' or 'smoke')")
  return c
