"""The decoder LM: token embedding (+ optional prefix embeddings), a stack of
blocks (scanned or unrolled, optionally rematerialised), final norm, head.

Two entry points on one parameter tree:
- `model.apply({"params": p}, tokens, mask)` -> logits [B, L, V] (float32),
  or (logits, hidden) with `return_hidden=True`; the full-sequence forward used
  for training and scoring.
- `model.apply({"params": p}, tokens, kv_mask, positions, cache, cache_index,
  method="extend")` -> (logits, hidden, cache); appends L tokens to an explicit
  KV cache (the sampler's prefill and decode steps).

Letters: B batch, L tokens, K prefix vectors, S cache slots, D width, V vocab,
Y layers.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mfjax.model.config import ModelConfig
from mfjax.model.layers import HIDDEN, Block, RMSNorm, _init, at_use, flat_matmul
from mfjax.parallel import axes
from mfjax.parallel.mesh import constrain


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer: k, v each stacked, [Y, B, N, S, Dh], for a
  scanned stack of layers; for an unrolled stack (`scan_layers=False`), tuples
  of Y per-layer buffers [B, N, S, Dh], so that each layer's attention reads its
  own buffer. (A layer's slice of a stacked cache is copied out at every decode
  step: 3.5 ms of op time per step of the benchmark's model on 2 CPU cores, where
  those copies overlapped other ops and the step's wall time, bound by reading
  the weights, changed within noise; on an accelerator each is a kernel moving
  the layer's whole cache.)"""

  k: Union[jax.Array, tuple]
  v: Union[jax.Array, tuple]

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, slots: int, dtype=None) -> "KVCache":
    """An empty cache in the form `cfg`'s stack reads (stacked if `cfg.scan_layers`)."""
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    dtype = cfg.compute_dtype if dtype is None else dtype
    if cfg.scan_layers:
      return cls(jnp.zeros((cfg.num_layers, *shape), dtype), jnp.zeros((cfg.num_layers, *shape), dtype))
    layers = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return cls(layers(), layers())


def positions_from_mask(mask_BxL):
  """Position of each token counting only valid tokens before it (left padding
  gives the first real token position 0); padding positions get 0."""
  mask = mask_BxL.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask


def checkpoint_policy(remat_policy: Optional[str]):
  """The `jax.checkpoint` policy a `ModelConfig.remat_policy` names (None for 'none');
  ValueError for a name that is none of 'none', 'full', 'dots' or jax.checkpoint_policies'."""
  if remat_policy in ("none", None):
    return None
  if remat_policy == "full":
    return jax.checkpoint_policies.nothing_saveable
  if remat_policy == "dots":
    return jax.checkpoint_policies.checkpoint_dots
  policy = getattr(jax.checkpoint_policies, remat_policy, None)
  if policy is None:
    raise ValueError(f"unknown remat_policy {remat_policy!r}: use 'none', 'full', 'dots' "
                     "or a name in jax.checkpoint_policies")
  return policy


def _block_class(cfg: ModelConfig, in_scan: bool):
  policy = checkpoint_policy(cfg.remat_policy)
  if policy is None:
    return Block
  return nn.remat(Block, policy=policy, prevent_cse=not in_scan)


def _scanned(block, length: int):
  """`block` scanned over `length` layers, its parameters stacked on a leading axis."""
  return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                 in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=length,
                 metadata_params={nn.PARTITION_NAME: axes.LAYERS})


class Decoder(nn.Module):
  """A causal LM of the Qwen2/Qwen3/Llama/Mistral family (see ModelConfig)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
                             param_dtype=cfg.weights_dtype,
                             embedding_init=_init(cfg, (axes.VOCAB, axes.EMBED)))
    block = _block_class(cfg, cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = _scanned(block, cfg.num_layers)(cfg)
    else:
      self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg.rms_norm_eps, cfg.weights_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param("lm_head", _init(cfg, (axes.EMBED, axes.VOCAB)),
                                (cfg.hidden_size, cfg.vocab_size), cfg.weights_dtype)

  def embed(self, tokens_BxL):
    """Token embeddings [B, L, D] in the compute dtype (for building prefixes).

    The table is read whole along its width (`at_use`: FSDP gathers it before
    the lookup, as it gathers every other weight before its matmul), so that the
    rows come out split like the tokens; a lookup into the width-split table
    gives width-split rows, which XLA cannot reshard to row-split ones but by
    replicating them (and their gradient) first."""
    table = at_use(self.embedder.embedding, (axes.VOCAB, axes.EMBED))
    return constrain(jnp.take(table.astype(self.cfg.compute_dtype), tokens_BxL, axis=0), HIDDEN)

  def _stack(self, x_BxLxD, positions_BxL, kv_mask_BxS, cache: Optional[KVCache], cache_index,
             queries_from: int = 0):
    """Final hidden states [B, L - queries_from, D] and the updated cache."""
    cfg, Y = self.cfg, self.cfg.num_layers
    per_layer = cache is not None and isinstance(cache.k, tuple)
    if per_layer and cfg.scan_layers:
      raise ValueError("a scanned stack of layers needs a stacked KVCache (KVCache.zeros of its config)")
    # unroll_stacked: a loop over the stacked weights' per-layer slices, cut by one
    # `lax.split` each (whose gradient is one concatenate of the layers' gradients)
    loop = cfg.scan_layers and cfg.unroll_stacked and not self.is_initializing()
    if loop:
      parts = jax.tree.map(lambda a: jax.lax.split(a, [1] * Y), self.variables["params"]["layers"])
      slices = [jax.tree.map(lambda p: p[i][0], parts, is_leaf=lambda a: isinstance(a, list)) for i in range(Y)]
      block = _block_class(cfg, False)(cfg, parent=None)
      layers = [functools.partial(block.apply, {"params": p}) for p in slices]
    else:
      layers = None if cfg.scan_layers else list(self.layers)
    if queries_from:
      # The last layer runs apart, its queries and MLP on positions queries_from.. only,
      # on its own slice of the parameters (functionally: it is a different module).
      params = self.variables["params"]  # plain arrays here (apply), sliced below
      if loop:
        last = slices[Y - 1]
      elif cfg.scan_layers:
        last = jax.tree.map(lambda a: a[Y - 1], params["layers"])
      else:
        last = params[f"layers_{Y - 1}"]
      tail = _block_class(cfg, False)(cfg, queries_from=queries_from, parent=None)
      tail = functools.partial(tail.apply, {"params": last})
      if layers is not None:
        layers[-1] = tail
    if per_layer:
      new_k, new_v = [], []
      for i, layer in enumerate(layers):  # layer None: the cache given is this layer's own
        (x_BxLxD, (k, v)), _ = layer((x_BxLxD, (cache.k[i], cache.v[i])), None, positions_BxL, kv_mask_BxS,
                                     cache_index)
        new_k.append(k)
        new_v.append(v)
      return self.final_norm(x_BxLxD), KVCache(tuple(new_k), tuple(new_v))
    carry = (x_BxLxD, None if cache is None else (cache.k, cache.v))
    if layers is None and not queries_from:  # a lax.scan over the stacked layers
      carry, _ = self.layers(carry, jnp.arange(Y), positions_BxL, kv_mask_BxS, cache_index)
    elif layers is None:
      if Y > 1:
        front = jax.tree.map(lambda a: a[:Y - 1], params["layers"])
        scan = _scanned(_block_class(cfg, True), Y - 1)(cfg, parent=None)
        carry, _ = scan.apply({"params": front}, carry, jnp.arange(Y - 1), positions_BxL, kv_mask_BxS, cache_index)
      carry, _ = tail(carry, jnp.int32(Y - 1), positions_BxL, kv_mask_BxS, cache_index)
    else:
      for i, layer in enumerate(layers):
        carry, _ = layer(carry, jnp.int32(i), positions_BxL, kv_mask_BxS, cache_index)
    x_BxLxD, new = carry
    return self.final_norm(x_BxLxD), (None if new is None else KVCache(*new))

  def logits(self, hidden_BxLxD):
    """Float32 logits [B, L, V] from final hidden states."""
    if self.cfg.tie_word_embeddings:
      head = self.embedder.embedding.T
    else:
      head = self.lm_head
    dt = self.cfg.compute_dtype
    head = at_use(head, (axes.EMBED, axes.VOCAB))
    logits = flat_matmul(hidden_BxLxD.astype(dt), head.astype(dt), 1, preferred_element_type=jnp.float32)
    names = (axes.ACT_BATCH,) + (axes.ACT_LENGTH,) * (logits.ndim - 2) + (axes.ACT_VOCAB,)
    return constrain(logits, names)

  def _embed_with_prefix(self, tokens_BxL, prefix_embeds_BxKxD):
    """Token embeddings with the prefix vectors (if any) in front: [B, K + L, D]."""
    x = self.embed(tokens_BxL)  # pinned as HIDDEN already
    if prefix_embeds_BxKxD is None:
      return x
    return constrain(jnp.concatenate([prefix_embeds_BxKxD.astype(x.dtype), x], axis=1), HIDDEN)

  def _inputs(self, tokens_BxL, mask_BxL, prefix_embeds_BxKxD):
    x = self._embed_with_prefix(tokens_BxL, prefix_embeds_BxKxD)
    if prefix_embeds_BxKxD is None:
      return x, mask_BxL
    B, K = prefix_embeds_BxKxD.shape[:2]
    return x, jnp.concatenate([jnp.ones((B, K), mask_BxL.dtype), mask_BxL], axis=1)

  def __call__(self, tokens_BxL, mask_BxL=None, *, prefix_embeds_BxKxD=None, positions_BxL=None,
               return_hidden: bool = False, queries_from: int = 0):
    """Full-sequence forward. `prefix_embeds` [B, K, D] are prepended (always
    valid, positions 0..K-1, tokens follow); outputs cover the tokens only.
    Positions default to counting valid tokens (left padding safe).

    `queries_from` q > 0: outputs cover tokens q.. only ([B, L - q, ...]), and
    the last layer computes its queries and MLP for those positions alone (its
    keys and values still cover all of them). The outputs equal the same slice
    of a full forward's."""
    if mask_BxL is None:
      mask_BxL = jnp.ones(tokens_BxL.shape, jnp.int32)
    x, mask = self._inputs(tokens_BxL, mask_BxL, prefix_embeds_BxKxD)
    if positions_BxL is None:
      positions = positions_from_mask(mask)
    elif prefix_embeds_BxKxD is not None:
      K = prefix_embeds_BxKxD.shape[1]
      positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(K), (x.shape[0], K)), positions_BxL + K], axis=1)
    else:
      positions = positions_BxL
    hidden, _ = self._stack(x, positions, mask, None, jnp.int32(0), self._queries_from(x, tokens_BxL, queries_from))
    if not queries_from:
      hidden = hidden[:, x.shape[1] - tokens_BxL.shape[1]:]
    logits = self.logits(hidden)
    return (logits, hidden) if return_hidden else logits

  def extend(self, tokens_BxL, kv_mask_BxS, positions_BxL, cache: KVCache, cache_index, *,
             prefix_embeds_BxKxD=None, return_logits: bool = True, queries_from: int = 0):
    """Append tokens (after optional prefix vectors) to `cache` at `cache_index`.

    kv_mask [B, S] marks valid slots of the whole cache (prefix, prompt, and
    slots to be generated); positions cover prefix + tokens. Returns float32
    logits and hidden of the tokens, and the updated cache. `return_logits`
    False skips the LM head (logits None), for callers that need the logits of
    a few positions only (`Decoder.logits` of a slice: a sampler's prefill).
    `queries_from` as in `__call__` (the cache gets every position's keys and
    values all the same)."""
    x = self._embed_with_prefix(tokens_BxL, prefix_embeds_BxKxD)
    hidden, cache = self._stack(x, positions_BxL, kv_mask_BxS, cache, cache_index,
                                self._queries_from(x, tokens_BxL, queries_from))
    if not queries_from:
      hidden = hidden[:, x.shape[1] - tokens_BxL.shape[1]:]
    return (self.logits(hidden) if return_logits else None), hidden, cache

  @staticmethod
  def _queries_from(x_BxLxD, tokens_BxL, queries_from: int) -> int:
    """`queries_from` counted in tokens -> in the stack's positions (prefix first)."""
    L = tokens_BxL.shape[1]
    if not isinstance(queries_from, int) or not 0 <= queries_from < L:
      raise ValueError(f"queries_from must be a Python int in [0, {L}) for {L} tokens, got {queries_from!r}")
    return x_BxLxD.shape[1] - L + queries_from if queries_from else 0


def shared_extend(model: Decoder, params, tokens_BxL, mask_BxL, *, shared: int, group: int, slots: int,
                  prefix_embeds_BxKxD=None, queries_from: int = 0, return_logits: bool = False):
  """[prefix | tokens] of B rows into a fresh KV cache of `slots` slots, where the prefix vectors and the
  first `shared` tokens (ids and mask) are the same in every `group` consecutive rows (an event's topic,
  a step's mean field and context, read alike by its agents): their keys and values are computed once
  per group, on B / group rows, and given to the group's rows, whose own tokens `shared`.. then attend
  to them. Positions count the valid tokens of the whole row, as `Decoder.__call__` counts them, so the
  outputs equal `extend`'s of the whole rows (hence `__call__`'s) up to float rounding; nothing checks
  that the rows of a group are alike.

  Returns (logits or None, hidden, cache): logits and hidden [B, L - shared - queries_from, ...] of the
  rows' own tokens (from `queries_from` on, counted from `shared`, as in `extend`), and the cache of
  every row, [B, slots] (prefix, tokens, and any slots after them, empty)."""
  B, L = tokens_BxL.shape
  K = 0 if prefix_embeds_BxKxD is None else prefix_embeds_BxKxD.shape[1]
  if not (isinstance(shared, int) and isinstance(group, int) and 0 < shared < L and group >= 1 and B % group == 0):
    raise ValueError(f"shared_extend: need 0 < shared < {L} tokens and groups that divide {B} rows, "
                     f"got shared={shared!r}, group={group!r}")
  if slots < K + L:
    raise ValueError(f"shared_extend: {slots} cache slots for {K + L} positions")
  mask = mask_BxL.astype(jnp.int32)
  if K:
    mask = jnp.concatenate([jnp.ones((B, K), jnp.int32), mask], axis=1)
  positions = positions_from_mask(mask)
  kv_mask = jnp.pad(mask, ((0, 0), (0, slots - K - L)))
  variables = {"params": params}
  ext = functools.partial(model.apply, variables, method=Decoder.extend)
  first = lambda x: None if x is None else x[::group]  # one row of each group
  # The shared part: its last layer's queries and MLP only for its last token, whose output nobody reads
  # but which `extend` needs one of.
  _, _, cache = ext(first(tokens_BxL[:, :shared]), first(kv_mask), first(positions[:, :K + shared]),
                    KVCache.zeros(model.cfg, B // group, slots), jnp.int32(0),
                    prefix_embeds_BxKxD=first(prefix_embeds_BxKxD), return_logits=False, queries_from=shared - 1)
  # every row of a group starts from its group's keys and values (the batch axis: 1 stacked, 0 per layer)
  cache = jax.tree.map(lambda a: jnp.repeat(a, group, axis=a.ndim - 4), cache)
  return ext(tokens_BxL[:, shared:], kv_mask, positions[:, K + shared:], cache, jnp.int32(K + shared),
             return_logits=return_logits, queries_from=queries_from)


def prompt_queries_from(shared: int, prompt_len: int) -> int:
  """`shared_extend`'s queries_from where positions prompt_len - 1.. predict (the prompt's last token,
  then an action's): the shared part must leave the row a prompt token of its own."""
  if shared >= prompt_len:
    raise ValueError(f"{shared} shared tokens leave no prompt token of a row's own in prompts of {prompt_len}")
  return prompt_len - 1 - shared


def init_params(model: Decoder, rng, batch: int = 1, length: int = 8):
  """Parameters (plain arrays, no partitioning boxes) for `model`."""
  tokens = jnp.zeros((batch, length), jnp.int32)
  return jax.jit(lambda r: nn.meta.unbox(model.init(r, tokens)["params"]))(rng)


def param_specs(model: Decoder):
  """Logical axis names of every parameter, from `jax.eval_shape` (no memory)."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
  return nn.get_partition_spec(abstract)["params"]


def count_params(model: Decoder) -> int:
  """Number of parameters, by `jax.eval_shape` (nothing is allocated)."""
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), 1, 1))
  return sum(int(x.size) for x in jax.tree.leaves(abstract))


def stack_layers(params, num_layers: int):
  """Unrolled params (`layers_0`, `layers_1`, ...) -> scanned (`layers`, leading axis)."""
  params = dict(params)
  per = [params.pop(f"layers_{i}") for i in range(num_layers)]
  stack = lambda *xs: np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)  # host stays host
  params["layers"] = jax.tree.map(stack, *per)
  return params


def unstack_layers(params, num_layers: int):
  """Scanned params -> unrolled params."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return params


def unrolled(model: Decoder, params) -> tuple[Decoder, dict]:
  """(model, params) with the layers unrolled; as given if they already are.
  Unrolled layers read each weight in place, where a scanned loop slices
  (copies) every layer's weights out of the stacked arrays at each call."""
  if not model.cfg.scan_layers:
    return model, params
  return Decoder(model.cfg.replace(scan_layers=False)), unstack_layers(params, model.cfg.num_layers)
