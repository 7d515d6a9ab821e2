"""The paper's own mean field against ours, on the synthetic world: the
quickstart, plus `mf_text`, where the mean field is text (mfjax.meanfield.text).

After every step a writer LM (the quickstart's base policy, fine-tuned with its
own weights) writes a summary of the step's actions and its previous summary,
and the policy reads the latest summary in its prompt. Stage `mf_text` trains
both by IB-Tune as the paper does: the policy on the NLL of the next step's real
actions given the summary, the writer by a score-function gradient on that NLL
less beta x (log q(summary) - log p0(summary)), p0 being the base LM. It gets
the `mf` stage's budget and settings (full fine-tuning, learning rate, steps,
beta), so the two mean fields differ only in their representation and how it
is trained. `mf` here is the latent mean field read by the policy as prefix
vectors (the quickstart's attribute-conditioned settings are turned off), so
that each mean field is read by the policy itself. Every method rolls out with
the same keys as in the quickstart.
docs/experiments/text_mean_field.md has the result: `mf_text` gains next to
nothing over `sft` given the same budget, and its writer's summaries stop
depending on the actions.

About 17 minutes on 2 CPU cores (1005 s with other jobs beside it; the `mf_text`
stage alone trains at 1.6 steps/s; `smoke`: 70 s):

  python -m mfjax run --config experiments/text_mean_field.py --workdir runs/text_mean_field
  python -m mfjax run --config experiments/text_mean_field.py:smoke
"""

import os

from mfjax.configs import load_config

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")


def get_config(arg: str = ""):
  if arg not in ("", "smoke"):
    raise ValueError(f"unknown argument {arg!r} for text_mean_field (use '' or 'smoke')")
  c = load_config(QUICKSTART + (":" + arg if arg else ""), [])
  c.rollout.methods = "state,recent,popular,sft,mf,mf_text"
  # The latent mean field as the policy's prefix, as mf_text is its context: the two differ only in the
  # representation (the quickstart's own mf, which draws categories from a head, is another design).
  c.mf.attributes = False
  c.ib.population_weight = 0.0
  c.mf.category_features = False
  for key in ("steps", "lr", "warmup", "batch_events", "agents", "trainable"):
    c.mf_text_train[key] = c.mf_train[key]
  c.mf_text.beta = c.ib.beta
  return c
