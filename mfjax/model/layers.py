"""Building blocks of the decoder: RMSNorm, RoPE, projections with LoRA,
grouped-query attention with a KV cache, SwiGLU MLP, and the transformer block.

Letters in names: B batch, L new tokens, S key/value slots (cache length),
D width, H query heads, G query heads per kv head, N kv heads, Dh head width,
F MLP width, R LoRA rank.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfjax.model.config import ModelConfig, RopeScaling
from mfjax.parallel import axes
from mfjax.parallel.mesh import constrain

_NEG = -1e30  # additive-free mask value: scores are replaced, never added to.

# Logical names of the activations this module pins (`constrain`; a no-op
# outside a jitted step traced under `mfjax.parallel.mesh.activation_sharding`).
HIDDEN = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


def at_use(weight, names: Sequence[str]):
  """`weight` (parameter logical `names`) pinned in the layout its matmul reads:
  FSDP's gathered one (`axes.AT_USE`; a no-op outside a pinned step)."""
  return constrain(weight, tuple(axes.AT_USE[n] for n in names))


def _init(cfg: ModelConfig, names: Sequence[str], std: Optional[float] = None):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std if std is None else std), tuple(names))


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in float32 and cast back (as HF Llama/Qwen)."""

  eps: float
  param_dtype: jnp.dtype = jnp.float32
  axis_name: str = axes.NORM

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling]) -> np.ndarray:
  """Inverse frequencies [Dh/2] (float32), with linear or llama3 scaling."""
  inv = (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))).astype(np.float32)
  if scaling is None or scaling.kind == "default":
    return inv
  if scaling.kind == "linear":
    return (inv / scaling.factor).astype(np.float32)
  # llama3: long wavelengths divided by factor, short kept, a smooth blend between.
  old = scaling.original_max_position_embeddings
  low_wl, high_wl = old / scaling.low_freq_factor, old / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wl, inv / scaling.factor, inv)
  smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
  blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
  return np.where(medium, blended, scaled).astype(np.float32)


def apply_rope(x_BxLxHxDh, positions_BxL, inv_freq):
  """Rotate-half RoPE (HF convention: first and second halves of Dh pair up)."""
  angles = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # B,L,Dh/2
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x_BxLxHxDh.dtype), jnp.sin(angles).astype(x_BxLxHxDh.dtype)
  half = x_BxLxHxDh.shape[-1] // 2
  rotated = jnp.concatenate([-x_BxLxHxDh[..., half:], x_BxLxHxDh[..., :half]], axis=-1)
  return x_BxLxHxDh * cos + rotated * sin


def flat_matmul(x, kernel, n_in: int, preferred_element_type=None):
  """x [..., in...] @ kernel [in..., out...] -> [..., out...], computed as one 2-D
  matmul [tokens, prod(in)] @ [prod(in), prod(out)] (reshapes of contiguous
  dims, free). Its gradients are then plain 2-D matmuls too: with the leading
  dims kept, XLA:CPU turned each weight gradient (a contraction over batch and
  length) into a transposing copy of the activations first: 15% of the op time
  of the benchmark's IB-Tune gradient, which went from 9.9 to 8.0 s."""
  lead, in_shape = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
  out_shape = kernel.shape[n_in:]
  y = jnp.dot(x.reshape(-1, math.prod(in_shape)), kernel.reshape(math.prod(in_shape), -1),
              preferred_element_type=preferred_element_type)
  return y.reshape(lead + out_shape)


class Proj(nn.Module):
  """A linear map contracting the last `len(in_names)` input dims into `features`,
  with optional bias and an optional LoRA adapter in its own `lora` subtree."""

  features: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  cfg: ModelConfig
  use_bias: bool = False
  use_lora: bool = False

  @nn.compact
  def __call__(self, x):
    cfg, n_in = self.cfg, len(self.in_names)
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", _init(cfg, self.in_names + self.out_names), in_shape + self.features,
                        cfg.weights_dtype)
    dt = cfg.compute_dtype
    kernel = at_use(kernel, self.in_names + self.out_names)
    y = flat_matmul(x.astype(dt), kernel.astype(dt), n_in)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.out_names),
                        self.features, cfg.weights_dtype)
      y = y + bias.astype(dt)
    if self.use_lora:
      y = y + LoRA(self.features, self.in_names, self.out_names, cfg, name="lora")(x)
    return y


class LoRA(nn.Module):
  """(alpha / r) * (x @ A) @ B with A [in..., R] ~ N(0, 1/fan_in), B [R, out...] = 0,
  so a freshly added adapter leaves the model unchanged.

  Both products are 2-D matmuls (`flat_matmul`), as in `Proj`: a LoRA gradient
  of the benchmark's model (rank 16 on all seven projections, 32 x 160 tokens,
  2 CPU cores, best of 5, alternated runs) took 6.5 and 6.7 s against 8.8 and
  8.2 s contracted in 3-D; nearly all of the gain is h @ B's, whose weight
  gradient XLA:CPU otherwise starts with a transposing copy of h."""

  features: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg, lora, n_in = self.cfg, self.cfg.lora, len(self.in_names)
    in_shape = x.shape[-n_in:]
    a = self.param("a", _init(cfg, self.in_names + (axes.LORA_RANK,), 1.0 / math.sqrt(math.prod(in_shape))),
                   in_shape + (lora.rank,), cfg.weights_dtype)
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, (axes.LORA_RANK,) + self.out_names),
                   (lora.rank,) + self.features, cfg.weights_dtype)
    dt = cfg.compute_dtype
    a = at_use(a, self.in_names + (axes.LORA_RANK,))
    b = at_use(b, (axes.LORA_RANK,) + self.out_names)
    h = flat_matmul(x.astype(dt), a.astype(dt), n_in)
    return flat_matmul(h, b.astype(dt), 1) * jnp.asarray(lora.scale, dt)


def _lora_on(cfg: ModelConfig, target: str) -> bool:
  return cfg.lora is not None and target in cfg.lora.targets


class Attention(nn.Module):
  """Grouped-query attention over a key/value buffer of S slots.

  Without a cache, the buffer is this call's own keys (S = L, slots 0..L-1).
  With a cache (k, v of every layer, each [Y, B, N, S, Dh]), this call's keys
  are written in place at layer `layer`, slots `cache_index .. cache_index+L-1`,
  and the queries see every earlier slot that `kv_mask` marks valid (causal by
  slot; Mistral's window by slot too). The whole stacked cache is passed along
  (not one layer's slice) so that XLA updates it in place instead of copying
  it into a new stacked buffer at every layer and every decode step. With
  `layer` None, the cache is this layer's own k, v [B, N, S, Dh] (an unrolled
  stack's, see `KVCache`).

  `queries_from` t > 0: keys and values of all L positions, queries (and the
  output) of positions t.. only, [B, L - t, D]: a last layer whose earlier
  positions' outputs nobody reads.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, kv_mask_BxS, cache, layer, cache_index, queries_from: int = 0):
    cfg = self.cfg
    H, N, Dh, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    E = (axes.EMBED,)
    t = queries_from
    by_heads = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_KV)
    by_kv_heads = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_KV_HEADS, axes.ACT_KV)
    q = Proj((H, Dh), E, (axes.HEADS, axes.KV), cfg, cfg.qkv_bias, _lora_on(cfg, "q"), name="q")(x_BxLxD[:, t:])
    k = Proj((N, Dh), E, (axes.KV_HEADS, axes.KV), cfg, cfg.qkv_bias, _lora_on(cfg, "k"), name="k")(x_BxLxD)
    v = Proj((N, Dh), E, (axes.KV_HEADS, axes.KV), cfg, cfg.qkv_bias, _lora_on(cfg, "v"), name="v")(x_BxLxD)
    q, k, v = constrain(q, by_heads), constrain(k, by_kv_heads), constrain(v, by_kv_heads)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, cfg.weights_dtype, axes.KV, name="q_norm")(q)
      k = RMSNorm(cfg.rms_norm_eps, cfg.weights_dtype, axes.KV, name="k_norm")(k)
    inv_freq = rope_inv_freq(Dh, cfg.rope_theta, cfg.rope_scaling)
    q = apply_rope(q, positions_BxL[:, t:], inv_freq)
    k = apply_rope(k, positions_BxL, inv_freq)

    B, L = q.shape[:2]  # L: the query positions
    # Keys/values are kept heads-major, [B, N, S, Dh], so that both attention
    # contractions are plain batched matmuls over (B, N) with no transposes of
    # the (possibly long) cache.
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    if cache is None:
      keys, values, new_cache = k, v, None
      q_slot = t + jnp.arange(L)
    else:
      ck, cv = cache
      if layer is None:
        idx = (0, 0, cache_index, 0)
        keys = ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), idx)
        values = cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), idx)
      else:
        idx = (layer, 0, 0, cache_index, 0)
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), idx)
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), idx)
        keys = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False)
        values = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False)
      new_cache = (ck, cv)
      q_slot = cache_index + t + jnp.arange(L)
    S = keys.shape[2]
    k_slot = jnp.arange(S)
    visible_LxS = k_slot[None, :] <= q_slot[:, None]
    if cfg.sliding_window is not None:
      visible_LxS &= (q_slot[:, None] - k_slot[None, :]) < cfg.sliding_window
    visible_BxLxS = visible_LxS[None] & kv_mask_BxS[:, None, :].astype(bool)

    G = H // N
    q = q.reshape(B, L, N, G, Dh)
    dt = cfg.compute_dtype
    scores = jnp.einsum("blngd,bnsd->bngls", q.astype(dt), keys.astype(dt),
                        preferred_element_type=jnp.float32) / math.sqrt(Dh)
    scores = jnp.where(visible_BxLxS[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    # Values first: XLA:CPU runs probs-first as a slow batched dot (at one decode
    # token, 34 vs 13 ms for 8 layers of 128 rows; a training forward of 32 x 164
    # tokens, 52 vs 42 ms).
    out = jnp.einsum("bnsd,bngls->blngd", values.astype(dt), probs.astype(dt))
    out = constrain(out.reshape(B, L, H, Dh), by_heads)
    y = Proj((D,), (axes.HEADS, axes.KV), E, cfg, cfg.o_bias, _lora_on(cfg, "o"), name="o")(out)
    return y, new_cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    E, M = (axes.EMBED,), (axes.MLP,)
    F, D = cfg.intermediate_size, cfg.hidden_size
    by_mlp = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)
    gate = Proj((F,), E, M, cfg, use_lora=_lora_on(cfg, "gate"), name="gate")(x_BxLxD)
    up = Proj((F,), E, M, cfg, use_lora=_lora_on(cfg, "up"), name="up")(x_BxLxD)
    h = constrain(nn.silu(constrain(gate, by_mlp)) * constrain(up, by_mlp), by_mlp)
    return Proj((D,), M, E, cfg, use_lora=_lora_on(cfg, "down"), name="down")(h)


class Block(nn.Module):
  """Pre-norm transformer layer. Signature fits `nn.scan`: the carry is
  (hidden [B, L, D], stacked KV cache or None); `layer` is this layer's index.
  With `queries_from` t > 0 the hidden carried out covers positions t.. only,
  [B, L - t, D]: attention reads (and caches) the keys and values of all L
  positions, while its queries and the MLP cover the tail (`Decoder`'s
  `queries_from`)."""

  cfg: ModelConfig
  queries_from: int = 0

  @nn.compact
  def __call__(self, carry, layer, positions_BxL, kv_mask_BxS, cache_index):
    cfg, t = self.cfg, self.queries_from
    x_BxLxD, cache = carry
    x_BxLxD = constrain(x_BxLxD, HIDDEN)
    h, cache = Attention(cfg, name="attn")(
        RMSNorm(cfg.rms_norm_eps, cfg.weights_dtype, name="attn_norm")(x_BxLxD),
        positions_BxL, kv_mask_BxS, cache, layer, cache_index, queries_from=t)
    x_BxLxD = x_BxLxD[:, t:] + h.astype(x_BxLxD.dtype)
    h = MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, cfg.weights_dtype, name="mlp_norm")(x_BxLxD))
    return (constrain(x_BxLxD + h.astype(x_BxLxD.dtype), HIDDEN), cache), None
