"""The top-level keys of a policy's parameter tree, spelt in one place.

A policy's parameters are one tree {PARAMS.lm: ..., PARAMS.mf: ...} holding only the keys its
method uses. The values are also the names in a stage's checkpoint on disk: they never change.
A leaf module (it imports nothing from mfjax), so that every layer that builds or reads the tree
(parallel/, ibtune/, rollout/, the pipeline) may import it without importing another layer.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ParamsKeys:
  lm: str = "lm"  # the policy: decoder params (LoRA adapters under .../lora)
  mf: str = "mf"  # the mean-field encoder's params (method mf)
  mf_lm: str = "mf_lm"  # the text mean field's summary writer, an LM like lm (method mf_text)
  prior: str = "prior"  # the writer's prior p0, an LM never trained (a text stage trained in full)


PARAMS = ParamsKeys()
