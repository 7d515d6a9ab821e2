"""Typed, frozen configuration of the decoder LM family.

One `ModelConfig` covers Qwen2/Qwen2.5, Qwen3, Llama 2/3 and Mistral by flags.
Presets with the real sizes live at the bottom (used with `jax.eval_shape`, so a
full-size model is checked without allocating memory).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

FAMILIES = ("qwen2", "qwen3", "llama", "mistral")
ROPE_KINDS = ("default", "linear", "llama3")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary-embedding frequency scaling (HF `rope_parameters` / `rope_scaling`)."""

  # 'default' (none), 'linear' (all frequencies / factor) or 'llama3'
  # (Llama 3.1+: low frequencies / factor, high kept, smooth in between).
  kind: str = "default"
  # Context-extension factor; 1.0 means no scaling.
  factor: float = 1.0
  # llama3 only: wavelength band edges, as in the Llama 3.1 release.
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  # llama3 only: the context length the model was pre-trained with.
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.kind not in ROPE_KINDS:
      raise ValueError(f"rope scaling kind {self.kind!r} is not supported; use one of {ROPE_KINDS}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters W + (alpha / rank) * A @ B on chosen projections."""

  # Adapter rank r. Larger = more capacity and memory; 8-64 is usual.
  rank: int = 8
  # Scale numerator; the update is multiplied by alpha / rank.
  alpha: float = 16.0
  # Which projections get adapters: any of q, k, v, o, gate, up, down.
  targets: tuple[str, ...] = ("q", "v")

  def __post_init__(self):
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    if bad:
      raise ValueError(f"unknown LoRA target(s) {bad}; choose from {LORA_TARGETS}")
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture, numerics and memory policy of one decoder LM."""

  # Sizes. head_dim is explicit because Qwen3 decouples it from width/heads.
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  # HF `model_type` written by save_pretrained; selects nothing else.
  family: str = "qwen2"
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  # Qwen2: bias on q/k/v. Llama/Qwen3 `attention_bias=True`: bias on q/k/v/o.
  qkv_bias: bool = False
  o_bias: bool = False
  # Qwen3: RMSNorm over head_dim on queries and keys before RoPE.
  qk_norm: bool = False
  # Output head shares the token embedding matrix (small Qwen2 models).
  tie_word_embeddings: bool = False
  # Mistral: a key is visible only from queries less than this many slots later.
  sliding_window: Optional[int] = None
  max_position_embeddings: int = 32768
  # Stddev of the normal init of weights trained from scratch (HF initializer_range).
  init_std: float = 0.02
  # Special token ids, recorded for save_pretrained / generation defaults.
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  # Numerics: parameters stored in param_dtype, matmuls in dtype. Norms,
  # softmax and logits are always float32.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Memory: scan over layers (one compile whatever the depth; params stacked on
  # a leading 'layers' axis) and rematerialise each layer in the backward pass
  # by a jax.checkpoint_policies name ('none' = keep all activations,
  # 'full' = save nothing, 'dots', 'dots_with_no_batch_dims_saveable', ...).
  scan_layers: bool = True
  # With scan_layers: run the stacked layers as a Python loop over their slices
  # instead of a lax.scan. The parameters (and checkpoints) stay stacked; the
  # backward pass keeps no stacked residual buffers (their zero fills, dynamic
  # update slices and copies); the program holds every layer, so its compile
  # time grows with depth. The benchmark's bfloat16 train step took 30% less
  # kernel time so on an H100 (docs/benchmarks.md). pipeline: model.layer_loop.
  unroll_stacked: bool = False
  remat_policy: str = "none"
  # LoRA adapters (None = none). Adapter params live under `.../lora/{a,b}`.
  lora: Optional[LoraConfig] = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family {self.family!r} is not supported; use one of {FAMILIES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weights_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


# What makes a from-scratch model one of its family: its architectural switches only.
SCRATCH_SWITCHES = {"qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True}, "llama": {}, "mistral": {}}


def scratch(family: str, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
            intermediate_size: int, tie_word_embeddings: bool, **extra) -> ModelConfig:
  """A model of `family` to train from scratch (no checkpoint): the family's switches
  (`SCRATCH_SWITCHES`: qwen2 q/k/v bias, qwen3 q/k norm, llama and mistral none),
  head_dim = hidden_size // num_heads, and the defaults of the rest (plain RoPE,
  no rope scaling, no sliding window). `extra`: further ModelConfig fields (token
  ids, max_position_embeddings, layer storage), which override these."""
  fields = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                num_kv_heads=num_kv_heads, head_dim=hidden_size // num_heads, intermediate_size=intermediate_size,
                family=family, tie_word_embeddings=tie_word_embeddings, **SCRATCH_SWITCHES.get(family, {}))
  return ModelConfig(**{**fields, **extra})


def tiny(family: str = "qwen2", **kw) -> ModelConfig:
  """A few-kilobyte model of the given family for tests: `scratch`'s, plus, so that
  tests cover them, llama3 rope scaling on llama and a sliding window of 8 on mistral."""
  test = {"llama": dict(rope_theta=500000.0, rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64)),
          "mistral": dict(sliding_window=8)}.get(family, {})
  base = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
              intermediate_size=128, tie_word_embeddings=False)
  return scratch(family, **{**base, **test, **kw})


def qwen2_1_5b(**kw) -> ModelConfig:
  """Qwen/Qwen2-1.5B (the MF-LLM paper's backbone): 1,543,714,304 parameters."""
  return ModelConfig(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                     head_dim=128, intermediate_size=8960, family="qwen2", rope_theta=1000000.0,
                     qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=131072, **kw)


def qwen2_5_7b(**kw) -> ModelConfig:
  """Qwen/Qwen2.5-7B: 7,615,616,512 parameters."""
  return ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                     head_dim=128, intermediate_size=18944, family="qwen2", rope_theta=1000000.0,
                     qkv_bias=True, max_position_embeddings=131072, **kw)


def llama3_8b(**kw) -> ModelConfig:
  """meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters."""
  return ModelConfig(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                     head_dim=128, intermediate_size=14336, family="llama", rope_theta=500000.0,
                     rms_norm_eps=1e-5, max_position_embeddings=8192, **kw)


PRESETS = {"qwen2-1.5b": qwen2_1_5b, "qwen2.5-7b": qwen2_5_7b, "llama3-8b": llama3_8b}
