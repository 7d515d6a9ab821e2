"""Hugging Face checkpoints <-> mfjax: `load_pretrained` and `save_pretrained`.

Reads a local HF folder (config.json; `model.safetensors`, or shards listed in
`model.safetensors.index.json`) of the Qwen2/Qwen2.5, Qwen3, Llama 2/3 and
Mistral families, with config.json in either spelling found in the wild
(`rope_theta` + `rope_scaling`, or transformers 5's `rope_parameters`). Loading
is strict: an unknown architecture, an unsupported option, a missing,
unexpected or misshapen tensor is an error that names it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mfjax.errors import UserError
from mfjax.model import safetensors_io
from mfjax.model.config import ModelConfig, RopeScaling
from mfjax.model.lora import merge_lora
from mfjax.model.transformer import Decoder, init_params, stack_layers, unstack_layers

_ARCHS = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
          "mistral": "MistralForCausalLM"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


class CheckpointError(UserError):
  """A checkpoint folder that mfjax cannot load faithfully."""


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides) -> ModelConfig:
  """ModelConfig from a parsed HF config.json (both rope spellings)."""
  def need(key):
    if key not in hf:
      raise CheckpointError(f"{source}: missing key {key!r}")
    return hf[key]

  family = hf.get("model_type")
  if family not in _ARCHS:
    raise CheckpointError(f"{source}: unknown architecture model_type={family!r} "
                          f"(architectures={hf.get('architectures')}); supported: {sorted(_ARCHS)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
  if hf.get("mlp_bias"):
    raise CheckpointError(f"{source}: mlp_bias=true is not supported")
  if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
    raise CheckpointError(f"{source}: use_sliding_window=true is not supported for {family}")
  layer_types = hf.get("layer_types") or []
  if any(t != "full_attention" for t in layer_types):
    raise CheckpointError(f"{source}: layer_types other than 'full_attention' are not supported: {layer_types}")

  rope_params = hf.get("rope_parameters")
  if isinstance(rope_params, dict) and rope_params:
    theta, scaling, where = rope_params.get("rope_theta", hf.get("rope_theta", 10000.0)), rope_params, "rope_parameters"
  else:
    theta, scaling, where = hf.get("rope_theta", 10000.0), hf.get("rope_scaling") or {}, "rope_scaling"
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind not in ("default", "linear", "llama3"):
    raise CheckpointError(f"{source}: {where}.rope_type={kind!r} is not supported (default, linear, llama3)")
  if float(scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
    raise CheckpointError(f"{source}: partial_rotary_factor != 1 is not supported")
  rope = None
  if kind != "default":
    keys = ["factor"] + (["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
                         if kind == "llama3" else [])
    missing = [k for k in keys if k not in scaling]
    if missing:
      raise CheckpointError(f"{source}: {where} of type {kind!r} lacks {missing}")
    rope = RopeScaling(kind, **{k: scaling[k] for k in keys})

  heads = need("num_attention_heads")
  attention_bias = bool(hf.get("attention_bias", False))

  def token_id(key):
    v = hf.get(key)
    return v[0] if isinstance(v, list) and v else v

  cfg = dict(
      family=family, vocab_size=need("vocab_size"), hidden_size=need("hidden_size"),
      num_layers=need("num_hidden_layers"), num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or need("hidden_size") // heads,
      intermediate_size=need("intermediate_size"), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope_theta=float(theta), rope_scaling=rope,
      qkv_bias=family == "qwen2" or attention_bias, o_bias=family != "qwen2" and attention_bias,
      qk_norm=family == "qwen3", tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      sliding_window=hf.get("sliding_window") if family == "mistral" else None,
      max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
      init_std=float(hf.get("initializer_range", 0.02)),
      bos_token_id=token_id("bos_token_id"), eos_token_id=token_id("eos_token_id"),
      pad_token_id=token_id("pad_token_id"))
  cfg.update(overrides)
  return ModelConfig(**cfg)


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
  """An HF config.json dict for `cfg` (readable by transformers 4 and 5)."""
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  legacy_scaling = None
  if cfg.rope_scaling is not None and cfg.rope_scaling.kind != "default":
    s = cfg.rope_scaling
    extra = {"factor": s.factor}
    if s.kind == "llama3":
      extra.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                   original_max_position_embeddings=s.original_max_position_embeddings)
    rope = {"rope_type": s.kind, "rope_theta": cfg.rope_theta, **extra}
    legacy_scaling = {"rope_type": s.kind, **extra}
  out = {
      "architectures": [_ARCHS[cfg.family]], "model_type": cfg.family, "hidden_act": "silu",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      "intermediate_size": cfg.intermediate_size, "rms_norm_eps": cfg.rms_norm_eps,
      "rope_parameters": rope, "rope_theta": cfg.rope_theta, "rope_scaling": legacy_scaling,
      "tie_word_embeddings": cfg.tie_word_embeddings, "max_position_embeddings": cfg.max_position_embeddings,
      "initializer_range": cfg.init_std, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id, "dtype": dtype,
  }
  if cfg.family == "qwen2":
    if cfg.o_bias:
      raise CheckpointError("qwen2 has no output-projection bias; this config cannot be saved as qwen2")
    out.update(use_sliding_window=False, sliding_window=None)
  else:
    if cfg.qkv_bias != cfg.o_bias:
      raise CheckpointError(f"{cfg.family} has bias on all of q/k/v/o or on none (attention_bias)")
    out["attention_bias"] = cfg.qkv_bias
  if cfg.family == "qwen3":
    out.update(use_sliding_window=False, sliding_window=None)
  if cfg.family == "mistral":
    out["sliding_window"] = cfg.sliding_window
  return out


# ----------------------------------------------------------------------------- tensors


def _layer_map(cfg: ModelConfig):
  """(hf suffix, our path within a layer, hf->ours, ours->hf) for one layer."""
  D, H, N, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  T = lambda w: w.T
  rows = []
  for name, heads in (("q", H), ("k", N), ("v", N)):
    rows.append((f"self_attn.{name}_proj.weight", ("attn", name, "kernel"),
                 lambda w, h=heads: w.T.reshape(D, h, Dh), lambda k, h=heads: k.reshape(D, h * Dh).T))
    if cfg.qkv_bias:
      rows.append((f"self_attn.{name}_proj.bias", ("attn", name, "bias"),
                   lambda b, h=heads: b.reshape(h, Dh), lambda b, h=heads: b.reshape(h * Dh)))
  rows.append(("self_attn.o_proj.weight", ("attn", "o", "kernel"),
               lambda w: w.T.reshape(H, Dh, D), lambda k: k.reshape(H * Dh, D).T))
  if cfg.o_bias:
    rows.append(("self_attn.o_proj.bias", ("attn", "o", "bias"), lambda b: b, lambda b: b))
  if cfg.qk_norm:
    rows += [("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), lambda w: w, lambda w: w),
             ("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), lambda w: w, lambda w: w)]
  for name in ("gate", "up", "down"):
    rows.append((f"mlp.{name}_proj.weight", ("mlp", name, "kernel"), T, T))
  rows += [("input_layernorm.weight", ("attn_norm", "scale"), lambda w: w, lambda w: w),
           ("post_attention_layernorm.weight", ("mlp_norm", "scale"), lambda w: w, lambda w: w)]
  return rows


def _global_map(cfg: ModelConfig):
  rows = [("model.embed_tokens.weight", ("embedder", "embedding"), lambda w: w, lambda w: w),
          ("model.norm.weight", ("final_norm", "scale"), lambda w: w, lambda w: w)]
  if not cfg.tie_word_embeddings:
    rows.append(("lm_head.weight", ("lm_head",), lambda w: w.T, lambda w: w.T))
  return rows


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def _expected_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  model = Decoder(cfg.replace(scan_layers=False, lora=None))
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), 1, 1))
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], source: str = "checkpoint", *,
                   host: bool = False):
  """Our (unrolled or scanned, per cfg) param tree from HF-named tensors: device
  arrays, or with `host` numpy arrays (to be cut per device by
  `mfjax.parallel.state.place`, so that no device ever holds the whole model)."""
  shapes = _expected_shapes(cfg)
  dtype = cfg.weights_dtype
  params: dict = {}
  used = set()

  def take(hf_name, path, to_ours):
    if hf_name not in tensors:
      raise CheckpointError(f"{source}: missing tensor {hf_name!r}")
    value = to_ours(tensors[hf_name])
    want = shapes[path]
    if tuple(value.shape) != want:
      raise CheckpointError(f"{source}: tensor {hf_name!r} has shape {tuple(tensors[hf_name].shape)}, "
                            f"which does not fit the config (expected {want} after conversion)")
    used.add(hf_name)
    value = np.asarray(value).astype(jnp.dtype(dtype))
    _set(params, path, value if host else jnp.asarray(value))

  for hf_name, path, to_ours, _ in _global_map(cfg):
    take(hf_name, path, to_ours)
  for i in range(cfg.num_layers):
    for suffix, path, to_ours, _ in _layer_map(cfg):
      take(f"model.layers.{i}.{suffix}", (f"layers_{i}",) + path, to_ours)
  unexpected = sorted(n for n in tensors if n not in used and not n.endswith(_IGNORED_SUFFIXES)
                      and not (cfg.tie_word_embeddings and n == "lm_head.weight"))
  if unexpected:
    raise CheckpointError(f"{source}: unexpected tensor(s) not used by a {cfg.family} model with this config: "
                          f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  return stack_layers(params, cfg.num_layers) if cfg.scan_layers else params


def params_to_hf(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
  """HF-named numpy tensors from our params (adapters must be merged first)."""
  if cfg.scan_layers:
    params = unstack_layers(params, cfg.num_layers)
  out = {}
  for hf_name, path, _, to_hf in _global_map(cfg):
    out[hf_name] = np.asarray(to_hf(_get(params, path)))
  for i in range(cfg.num_layers):
    for suffix, path, _, to_hf in _layer_map(cfg):
      out[f"model.layers.{i}.{suffix}"] = np.asarray(to_hf(_get(params, (f"layers_{i}",) + path)))
  return out


# ----------------------------------------------------------------------------- folders


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of an HF folder (single file or sharded with an index)."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(path, shard)
      if not os.path.exists(shard_path):
        raise CheckpointError(f"{index}: lists shard {shard!r}, which is missing")
      tensors.update(safetensors_io.read(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise CheckpointError(f"{index}: tensors listed but absent from their shards: {missing[:8]}")
    return tensors
  if os.path.exists(single):
    return safetensors_io.read(single)
  others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".msgpack", ".h5"))]
  raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json"
                        + (f" (found {others}; convert to safetensors first)" if others else ""))


def load_config(path: str, **overrides) -> ModelConfig:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{path}: no config.json (is this a Hugging Face model folder?)")
  with open(cfg_path) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
  return config_from_hf(hf, cfg_path, **overrides)


def load_pretrained(path: str, dtype="float32", *, param_dtype=None, scan_layers: bool = True,
                    remat_policy: str = "none", unroll_stacked: bool = False,
                    host: bool = False) -> tuple[Decoder, dict]:
  """(model, params) from a local HF folder. `dtype` is the compute dtype,
  `param_dtype` (default: `dtype`) the storage dtype of the parameters;
  `host` keeps them as numpy arrays (see `params_from_hf`)."""
  dtype = jnp.dtype(dtype).name
  cfg = load_config(path, dtype=dtype, param_dtype=jnp.dtype(param_dtype or dtype).name,
                    scan_layers=scan_layers, remat_policy=remat_policy, unroll_stacked=unroll_stacked)
  params = params_from_hf(cfg, read_tensors(path), source=path, host=host)
  return Decoder(cfg), params


def check_tokenizer(tokenizer, cfg: ModelConfig, tokenizer_path: str, model_path: str) -> None:
  """CheckpointError when ids the tokenizer produces do not fit the model's
  vocabulary: its base vocabulary or its bos/eos/pad id past the embedding
  table (another model's tokenizer, whose ids would be clamped silently into
  wrong tokens). Added tokens past it that text does not produce are allowed,
  such as the unk token transformers' Qwen2 tokenizer class adds to a
  byte-level BPE saved beside a Qwen2 config (mfjax's own exports)."""
  needs = {"base vocabulary": tokenizer.vocab_size}
  for name in ("bos", "eos", "pad"):
    token_id = getattr(tokenizer, f"{name}_token_id")
    if token_id is not None:
      needs[f"{name} token (id {token_id})"] = token_id + 1
  for what, size in needs.items():
    if size > cfg.vocab_size:
      raise CheckpointError(f"the tokenizer in {tokenizer_path} does not fit the model in {model_path}: its {what} "
                            f"needs {size:,} ids, the model has {cfg.vocab_size:,}; it belongs to another model")


def save_pretrained(model: Decoder, params, path: str, *, overwrite: bool = False) -> None:
  """Write an HF folder (config.json + model.safetensors) that `transformers`
  and `load_pretrained` read. LoRA adapters are merged into the weights."""
  model, params = merge_lora(model, params)
  os.makedirs(path, exist_ok=True)
  target = os.path.join(path, "model.safetensors")
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
  tensors = params_to_hf(model.cfg, jax.device_get(params))
  dtypes = {str(t.dtype) for t in tensors.values()}
  dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
  safetensors_io.write(target, tensors, metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(model.cfg, dtype), f, indent=2)
