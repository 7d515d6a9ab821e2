"""LoRA: add adapters to a model, train only them (an Optax mask), fold them in.

Adapters live in their own subtree under each adapted projection:
`.../attn/q/lora/{a, b}` beside `.../attn/q/kernel`. `b` starts at zero, so a
model with fresh adapters computes exactly what the base model computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mfjax.model.config import LoraConfig
from mfjax.model.transformer import Decoder, init_params

LORA_KEY = "lora"


def _path_keys(path) -> list[str]:
  return [getattr(k, "key", getattr(k, "name", str(k))) for k in path]


def is_lora_path(path) -> bool:
  return LORA_KEY in _path_keys(path)


def lora_mask(params):
  """A pytree of bools: True on adapter leaves, False on everything else."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_lora_path(p), params)


def only_lora(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` on LoRA adapters, zero updates (and no optimizer state) on the rest.

  (`optax.masked` alone would pass the raw gradient through on unmasked leaves;
  `multi_transform` with `set_to_zero` truly freezes them.)"""
  labels = lambda params: jax.tree.map(lambda m: "lora" if m else "frozen", lora_mask(params))
  return optax.multi_transform({"lora": tx, "frozen": optax.set_to_zero()}, labels)


def add_lora(model: Decoder, params, lora: LoraConfig, rng) -> tuple[Decoder, dict]:
  """A model with `lora` adapters and its params: the base leaves of `params`,
  fresh adapters (A random, B zero) from `rng`. Only the adapters are
  initialised (the rest of the fresh init is dead code under jit), so a large
  model is never allocated twice; the base leaves are `params`' own arrays."""
  if model.cfg.lora is not None:
    raise ValueError("model already has LoRA adapters; merge_lora first")
  new_model = Decoder(model.cfg.replace(lora=lora))
  shapes = jax.eval_shape(lambda: init_params(new_model, rng))
  adapter_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0] if is_lora_path(p)]
  adapters = jax.jit(lambda r: [leaf for p, leaf in jax.tree_util.tree_flatten_with_path(
      init_params(new_model, r))[0] if is_lora_path(p)])(rng)
  fresh = dict(zip(map(jax.tree_util.keystr, adapter_paths), adapters))

  def pick(path, _):
    if is_lora_path(path):
      return fresh[jax.tree_util.keystr(path)]
    node = params
    for k in _path_keys(path):
      node = node[k]
    return node

  return new_model, jax.tree_util.tree_map_with_path(pick, shapes)


def merge_lora(model: Decoder, params) -> tuple[Decoder, dict]:
  """Fold every adapter into its base kernel: W + (alpha / r) * A @ B.
  Returns a model without LoRA and params without `lora` subtrees."""
  lora = model.cfg.lora
  if lora is None:
    return model, params
  scale = lora.scale

  def fold(node, scanned):
    if not isinstance(node, dict):
      return node
    if LORA_KEY in node:
      a, b = node[LORA_KEY]["a"], node[LORA_KEY]["b"]
      delta_fn = lambda a, b: jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1)
      delta = jax.vmap(delta_fn)(a, b) if scanned else delta_fn(a, b)
      out = {k: v for k, v in node.items() if k != LORA_KEY}
      out["kernel"] = (out["kernel"].astype(jnp.float32) + scale * delta).astype(node["kernel"].dtype)
      return out
    return {k: fold(v, scanned or (k == "layers" and model.cfg.scan_layers)) for k, v in node.items()}

  return Decoder(model.cfg.replace(lora=None)), fold(dict(params), False)
