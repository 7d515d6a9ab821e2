"""Batched, jitted sampling with an explicit KV cache.

`generate` prefills the (left-padded) prompts once, then decodes one token per
iteration of a `lax.while_loop` whose carry (`SamplerState`) holds the KV cache
and the output buffers; the loop stops early once every row has emitted eos.
Nothing on the hot path is a Python loop over tokens or rows.
`score_and_generate` also scores given continuations of the prompts
(teacher-forced) in the pass that fills the prompts' cache. With `utf8`
(`ValidUtf8`, built from the tokens' bytes), every sample is valid UTF-8: a
byte-level token that would break a character, or leave one unfinished by the
last slot, is never drawn (the row's decoder state rides in the carry).

Letters: B batch, P prompt tokens, K prefix vectors, N new tokens, A scored
tokens, S = K + P + max(N, A) cache slots, V vocab.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

import flax.struct
import jax
import jax.numpy as jnp

from mfjax.model.transformer import (Decoder, KVCache, positions_from_mask, prompt_queries_from, shared_extend,
                                     unrolled)
from mfjax.parallel.mesh import pinning


# The UTF-8 decoder's states: 0 between characters; then how many continuation bytes are still due
# and, after the lead bytes E0, ED, F0 and F4, the narrower range of the next one (no overlong form,
# no surrogate, nothing past U+10FFFF).
_UTF8_PENDING = np.array([0, 1, 2, 2, 2, 3, 3, 3], np.int32)
_UTF8_STATES = len(_UTF8_PENDING)


def _utf8_step(state: int, b: int) -> int:
  """The decoder state after byte `b` in `state`, or -1 where `b` cannot come there."""
  if state == 0:
    if b < 0x80:
      return 0
    if 0xC2 <= b <= 0xDF:
      return 1
    return {0xE0: 3, 0xED: 4, 0xF0: 6, 0xF4: 7}.get(b, 2 if 0xE1 <= b <= 0xEF else 5 if 0xF1 <= b <= 0xF3 else -1)
  low, high, after = {1: (0x80, 0xBF, 0), 2: (0x80, 0xBF, 1), 3: (0xA0, 0xBF, 1), 4: (0x80, 0x9F, 1),
                      5: (0x80, 0xBF, 2), 6: (0x90, 0xBF, 2), 7: (0x80, 0x8F, 2)}[state]
  return after if low <= b <= high else -1


class ValidUtf8:
  """What a sampler may draw so that its text decodes as valid UTF-8: for every token id and decoder
  state, the state after the token's bytes (-1: the token breaks a character, has no bytes, or is
  a special token). Hashed by identity (a static argument of the jitted sampler): build it once per
  tokenizer (`mfjax.data.tokenizers.token_bytes` gives the bytes)."""

  def __init__(self, token_bytes: Sequence[Optional[bytes]]):
    table = np.full((len(token_bytes), _UTF8_STATES), -1, np.int8)
    for i, data in enumerate(token_bytes):
      if not data:
        continue
      for start in range(_UTF8_STATES):
        state = start
        for b in data:
          state = _utf8_step(state, b)
          if state < 0:
            break
        table[i, start] = state
    self.table = table  # [V, states]

  def allowed(self, state_B, slots_left, eos_id, vocab: int):
    """[B, vocab] bool: the tokens a row in `state_B` may draw with `slots_left` tokens after this one
    (each continuation byte may need a token of its own); eos only between characters."""
    table = jnp.asarray(self.table, jnp.int32)
    nxt = table.T[state_B]  # [B, V]
    ok = (nxt >= 0) & (jnp.asarray(_UTF8_PENDING)[jnp.maximum(nxt, 0)] <= slots_left)
    ok = jnp.pad(ok, ((0, 0), (0, vocab - ok.shape[1]))) if vocab > ok.shape[1] else ok[:, :vocab]
    return jnp.where(jnp.arange(vocab)[None] == eos_id, (state_B == 0)[:, None], ok)

  def next_state(self, state_B, token_B):
    """The rows' states after their drawn tokens (0 after a token the table does not cover)."""
    table = jnp.asarray(self.table, jnp.int32)
    safe = jnp.clip(token_B, 0, table.shape[0] - 1)
    return jnp.maximum(table[safe, state_B], 0)


@flax.struct.dataclass
class SamplerState:
  """Carry of the decode loop."""

  step: jax.Array  # int32 []: tokens generated so far (the next one is index `step`)
  cache: KVCache  # keys/values of all S slots
  kv_mask_BxS: jax.Array  # int32: 1 where a slot holds (or will hold) a real token
  last_token_B: jax.Array  # int32: the token generated at `step - 1`
  position_B: jax.Array  # int32: RoPE position of the next token
  done_B: jax.Array  # bool: the row has emitted eos
  tokens_BxN: jax.Array  # int32 output buffer (pad after eos)
  logprobs_BxN: jax.Array  # float32 output buffer (0 after eos)
  mask_BxN: jax.Array  # bool: token is real (up to and including eos)
  utf8_B: jax.Array  # int32: the UTF-8 decoder's state after the row's tokens (0 without `ValidUtf8`)


@flax.struct.dataclass
class SampleOutput:
  tokens: jax.Array  # [B, N] int32; after eos, `pad_id`
  logprobs: jax.Array  # [B, N] float32 log p(token) under the model (temperature 1, unfiltered)
  mask: jax.Array  # [B, N] bool: True for generated tokens up to and including eos


def _nucleus_cutoff(sorted_x, top_p: float):
  """The smallest logit of the top-p nucleus of descending `sorted_x` [..., k]: [..., 1]."""
  probs = jax.nn.softmax(sorted_x, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
  keep = before < top_p  # the first token is always kept
  return jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)


def _scaled(logits_BxV, temperature):
  """Float32 logits / temperature (temperature may be traced; 0 is clamped)."""
  return logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)


def filter_logits(logits_BxV, *, temperature, top_k: int = 0, top_p: float = 1.0):
  """Temperature-scaled logits with everything outside top-k / the top-p
  nucleus set to -inf. `temperature` may be traced; top_k/top_p are static."""
  x = _scaled(logits_BxV, temperature)
  sorted_x = None
  if top_k and top_k < x.shape[-1]:
    # descending; the barrier keeps XLA from rewriting top_k + a slice of it into a full
    # sort of the vocabulary (on CPU: 19 ms instead of 0.4 ms for 16 x 8192 logits)
    sorted_x = jax.lax.optimization_barrier(jax.lax.top_k(x, top_k)[0])
    x = jnp.where(x < sorted_x[..., -1:], -jnp.inf, x)
  if top_p < 1.0:
    # the nucleus of what top-k kept lies within its k values: no sort of the whole vocabulary
    sorted_x = jnp.sort(x, axis=-1)[..., ::-1] if sorted_x is None else sorted_x
    x = jnp.where(x < _nucleus_cutoff(sorted_x, top_p), -jnp.inf, x)
  return x


# XLA's GPU top-k kernel takes k <= 16 (and rows of at least 1024); a larger k is lowered
# to a sort of each whole row (XLA's TopkSpecializer). On an H100, for 1024 rows of 8192
# float32 logits and k 50 (docs/benchmarks.md): that sort took 0.69 ms; the
# top-16 kernel 0.64 ms a call (so rounds of it, tried, were slower still); top-k in rows of
# 512, then over the 800 candidates, 0.40 ms (rows of 256: 0.41, 1024: 0.44, 2048: 0.50).
# On a CPU whole rows are fastest (0.33 ms for 16 rows, 2.2 ms in rows of 512):
# tools/bench_top_k.py.
GPU_TOP_K_KERNEL_MAX = 16
GPU_TOP_K_CHUNK = 512


def top_k_chunked(x_BxV, k: int, chunk: int = GPU_TOP_K_CHUNK):
  """`lax.top_k(x, k)` in stages: while a row is longer than 4 chunks, keep the top k of
  each `chunk` consecutive values (the last chunk padded with -inf), then one top k of
  what is left. A row's k largest are among its chunks' k largest, and the candidates keep
  the row's order among equal values (chunk by chunk, lowest id first within one), so the
  values and, where the backend's top-k keeps the lowest ids among ties (XLA's does), the
  ids are `lax.top_k`'s, ties at -inf included. For 8192 logits and chunk 512: 16 top-k's
  of 512, then one of 800. `lax.top_k` itself where chunk < k."""
  B = x_BxV.shape[0]
  ids = None  # [B, n]: the row's id of each value left (None: the identity)
  while chunk >= k and x_BxV.shape[-1] > 4 * chunk:  # static: a few stages at most
    n = x_BxV.shape[-1]
    c = -(-n // chunk)
    if c * chunk > n:  # padding sorts after every real value, -inf ones included
      x_BxV = jnp.pad(x_BxV, ((0, 0), (0, c * chunk - n)), constant_values=-jnp.inf)
      ids = None if ids is None else jnp.pad(ids, ((0, 0), (0, c * chunk - n)))
    v, i = jax.lax.top_k(x_BxV.reshape(B, c, chunk), k)  # [B, c, k]
    i = (i + (jnp.arange(c, dtype=jnp.int32) * chunk)[:, None]).reshape(B, c * k)
    ids = i if ids is None else jnp.take_along_axis(ids, i, axis=-1)
    x_BxV = v.reshape(B, c * k)
  v, i = jax.lax.top_k(x_BxV, k)
  return v, (i if ids is None else jnp.take_along_axis(ids, i, axis=-1))


def select_top_k(x_BxV, k: int):
  """(values, ids) of the k largest of each row, descending: `lax.top_k`, except on GPUs
  with k > 16, where `top_k_chunked` sorts rows of `GPU_TOP_K_CHUNK` instead of whole
  rows. Other platforms keep `lax.top_k` (on a CPU its program is unchanged)."""
  if k <= GPU_TOP_K_KERNEL_MAX:
    return jax.lax.top_k(x_BxV, k)
  gpu = functools.partial(top_k_chunked, k=k, chunk=GPU_TOP_K_CHUNK)
  return jax.lax.platform_dependent(x_BxV, cuda=gpu, rocm=gpu, default=lambda x: tuple(jax.lax.top_k(x, k)))


def _sample_filtered(logits_BxV, rng, *, temperature, top_k: int, top_p: float):
  """A token [B] drawn from softmax(filter_logits(...)). With top-k, the draw is
  among the k candidates only: k random numbers per row instead of V (on CPU,
  the vocabulary-wide Gumbel noise was about 3 ms of op time per decode step of
  the benchmark's model, V 8192).
  Same distribution as drawing over the filtered vocabulary, except that of
  tokens tied at the k-th logit exactly k are candidates (`lax.top_k` keeps the
  lowest ids), where `filter_logits` keeps every tied one."""
  if not (top_k and top_k < logits_BxV.shape[-1]):
    return jax.random.categorical(rng, filter_logits(logits_BxV, temperature=temperature, top_p=top_p), axis=-1)
  vals, ids = select_top_k(_scaled(logits_BxV, temperature), top_k)  # descending
  if top_p < 1.0:
    vals = jnp.where(vals < _nucleus_cutoff(vals, top_p), -jnp.inf, vals)
  pick = jax.random.categorical(rng, vals, axis=-1)
  return jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0]


def sample_token(logits_BxV, rng, *, temperature, top_k: int = 0, top_p: float = 1.0):
  """(token [B], model log-prob of it [B]). temperature == 0 is greedy."""
  logprobs = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
  # lax.cond, not jnp.where: greedy decoding skips the filters and random bits.
  token = jax.lax.cond(
      temperature == 0,
      lambda: jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32),
      lambda: _sample_filtered(logits_BxV, rng, temperature=temperature, top_k=top_k, top_p=top_p).astype(jnp.int32))
  return token, jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]


def token_logprobs(logits_BxAxV, ids_BxA, mask_BxA):
  """log softmax(logits) of each token of `ids` [B, A] (float32; 0 where `mask` is 0)."""
  logp = jax.nn.log_softmax(logits_BxAxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, ids_BxA[..., None], axis=-1)[..., 0] * mask_BxA.astype(jnp.float32)


def _generate_impl(model: Decoder, params, prompt_BxP, prompt_mask_BxP, rng, temperature, eos_id, pad_id,
                   prefix_BxKxD, score_BxA, score_mask_BxA, *, max_new_tokens: int, top_k: int, top_p: float,
                   unroll: bool, utf8: Optional[ValidUtf8] = None, shared: int = 0,
                   group: int = 1) -> tuple[SampleOutput, Optional[jax.Array]]:
  if unroll:  # a scanned loop would copy every layer's weights at every decode step
    model, params = unrolled(model, params)
  B, P = prompt_BxP.shape
  K = 0 if prefix_BxKxD is None else prefix_BxKxD.shape[1]
  N = max_new_tokens
  head_mask = jnp.concatenate([jnp.ones((B, K), jnp.int32), prompt_mask_BxP.astype(jnp.int32)], axis=1)
  variables = {"params": params}
  draw = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)
  extend = functools.partial(model.apply, variables, method=Decoder.extend)

  def sample(logits_BxV, key, step, utf8_B):
    """(token, its unfiltered log-prob, the row's UTF-8 state after it)."""
    if utf8 is None:
      return (*draw(logits_BxV, key), utf8_B)
    ok = utf8.allowed(utf8_B, N - 1 - step, eos_id, logits_BxV.shape[-1])
    token, _ = draw(jnp.where(ok, logits_BxV, -jnp.inf), key)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits_BxV.astype(jnp.float32), -1), token[:, None], -1)[:, 0]
    return token, logprob, utf8.next_state(utf8_B, token)

  # Prefill: prefix + prompt (+ the continuations to score, teacher-forced) in one
  # pass; the prompt's last slot is a real token in every row because prompts are
  # left-padded, and it predicts the first sampled token (and the first scored
  # one). The prompt's keys and values do not depend on what follows them
  # (causal); the scored tokens' slots are overwritten by the sampled ones before
  # any query can see them (causal by slot). The pass's attention covers the slots
  # it fills, not the generation slots after them, which are padded on afterwards.
  scoring = score_BxA is not None
  A = score_BxA.shape[1] if scoring else 0
  tokens, mask = prompt_BxP, head_mask
  if scoring:
    tokens = jnp.concatenate([prompt_BxP, score_BxA.astype(jnp.int32)], axis=1)
    mask = jnp.concatenate([head_mask, score_mask_BxA.astype(jnp.int32)], axis=1)
  # Only positions P-1.. predict (the first sampled token, and the scored ones):
  # the last layer's queries and MLP run for those alone.
  # With `shared`, the prefix and the prompts' first `shared` tokens are computed once per group of rows.
  if shared:
    _, hidden, cache = shared_extend(model, params, tokens, mask[:, K:], shared=shared, group=group,
                                     slots=K + P + A, prefix_embeds_BxKxD=prefix_BxKxD,
                                     queries_from=prompt_queries_from(shared, P))
  else:
    _, hidden, cache = extend(tokens, mask, positions_from_mask(mask), KVCache.zeros(model.cfg, B, K + P + A),
                              jnp.int32(0), prefix_embeds_BxKxD=prefix_BxKxD, return_logits=False,
                              queries_from=P - 1)
  logits = model.apply(variables, hidden[:, :max(A, 1)], method=Decoder.logits)
  scored = token_logprobs(logits[:, :A], score_BxA, score_mask_BxA) if scoring else None
  first_logits = logits[:, 0]
  G = max(N, A)  # generation slots
  cache = jax.tree.map(lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, G - A), (0, 0)]), cache)
  token, logprob, utf8_B = sample(first_logits, jax.random.fold_in(rng, 0), 0, jnp.zeros((B,), jnp.int32))
  done = token == eos_id
  state = SamplerState(
      step=jnp.int32(1), cache=cache, kv_mask_BxS=jnp.concatenate([head_mask, jnp.ones((B, G), jnp.int32)], axis=1),
      last_token_B=token, position_B=jnp.sum(head_mask, axis=1), done_B=done,
      tokens_BxN=jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(token),
      logprobs_BxN=jnp.zeros((B, N), jnp.float32).at[:, 0].set(logprob),
      mask_BxN=jnp.zeros((B, N), bool).at[:, 0].set(True), utf8_B=utf8_B)

  def cond(s: SamplerState):
    return (s.step < N) & ~jnp.all(s.done_B)

  def body(s: SamplerState):
    logits, _, cache = extend(s.last_token_B[:, None], s.kv_mask_BxS, s.position_B[:, None], s.cache,
                              K + P + s.step - 1)
    token, logprob, utf8_B = sample(logits[:, -1], jax.random.fold_in(rng, s.step), s.step, s.utf8_B)
    live = ~s.done_B
    token = jnp.where(live, token, pad_id)
    col = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), (0, s.step))
    return SamplerState(
        step=s.step + 1, cache=cache, kv_mask_BxS=s.kv_mask_BxS, last_token_B=token,
        position_B=s.position_B + 1, done_B=s.done_B | (token == eos_id),
        tokens_BxN=col(s.tokens_BxN, token), logprobs_BxN=col(s.logprobs_BxN, jnp.where(live, logprob, 0.0)),
        mask_BxN=col(s.mask_BxN, live), utf8_B=jnp.where(live, utf8_B, s.utf8_B))

  state = jax.lax.while_loop(cond, body, state)
  return SampleOutput(state.tokens_BxN, state.logprobs_BxN, state.mask_BxN), scored


_generate = jax.jit(_generate_impl, static_argnames=("model", "max_new_tokens", "top_k", "top_p", "unroll", "utf8",
                                                    "shared", "group"))


def _sampler():
  """The sampler, jitted; its plain implementation inside a step that pins
  activations (whose trace must not be cached for, or taken from, other calls:
  `mfjax.parallel.mesh.activation_sharding`)."""
  return _generate_impl if pinning() else _generate


def _arguments(prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id):
  """Checked prompt arrays and the eos / pad scalars of a sampling call."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
  if prompt_ids.shape != prompt_mask.shape:
    raise ValueError(f"prompt_ids {prompt_ids.shape} and prompt_mask {prompt_mask.shape} differ in shape")
  eos = -1 if eos_id is None else int(eos_id)
  pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
  return prompt_ids, prompt_mask, jnp.int32(eos), jnp.int32(pad)


def generate(model: Decoder, params, prompt_ids, prompt_mask, *, rng, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: Optional[int] = None,
             pad_id: Optional[int] = None, prefix_embeds=None, unroll_layers: bool = True,
             utf8: Optional[ValidUtf8] = None, shared: int = 0, group: int = 1) -> SampleOutput:
  """Sample `max_new_tokens` continuations of left-padded prompts.

  prompt_ids, prompt_mask: [B, P] (mask 1 on real tokens; padding on the left).
  prefix_embeds: optional [B, K, D] vectors placed before the prompt (the mean
  field enters the policy this way). temperature 0 is greedy; top_k 0 and
  top_p 1 disable those filters. After a row emits `eos_id` it stops: later
  tokens are `pad_id` (default: eos_id, else 0) with log-prob 0 and mask False.
  `unroll_layers` runs a scanned model's layers unrolled inside the sampler
  (faster decoding; compile time grows with depth). Jitted once per (model,
  shapes, max_new_tokens, top_k, top_p, unroll_layers, utf8). With `utf8` every
  row's tokens decode as valid UTF-8 (module docstring); the log-probs stay the
  model's own. `shared` > 0: the prefix and the prompts' first `shared` tokens are alike in every
  `group` consecutive rows (an event's topic, a step's mean field): the prefill computes them once per
  group (`mfjax.model.shared_extend`); the samples are the same.
  """
  prompt_ids, prompt_mask, eos, pad = _arguments(prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id)
  out, _ = _sampler()(model, params, prompt_ids, prompt_mask, rng, jnp.float32(temperature), eos, pad,
                      prefix_embeds, None, None, max_new_tokens=int(max_new_tokens), top_k=int(top_k),
                      top_p=float(top_p), unroll=bool(unroll_layers), utf8=utf8, shared=int(shared),
                      group=int(group))
  return out


def score_and_generate(model: Decoder, params, prompt_ids, prompt_mask, score_ids, score_mask, *, rng,
                       max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       eos_id: Optional[int] = None, pad_id: Optional[int] = None, prefix_embeds=None,
                       unroll_layers: bool = True, utf8: Optional[ValidUtf8] = None, shared: int = 0,
                       group: int = 1) -> tuple[jax.Array, SampleOutput]:
  """(log p(score_ids | prompt) [B, A], `generate`'s samples) from one pass over the prompts.

  score_ids, score_mask: [B, A] given continuations of the prompts, scored
  teacher-forced (float32 log-probs, 0 where the mask is 0), as
  `mfjax.policy.action_logprobs` does. Their forward pass also fills the
  prompts' keys and values for the sampler, which a separate `generate` would
  compute again: the pass over the prompts is shared. Other arguments and the
  samples' distribution are `generate`'s.
  """
  prompt_ids, prompt_mask, eos, pad = _arguments(prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id)
  score_ids, score_mask = jnp.asarray(score_ids, jnp.int32), jnp.asarray(score_mask, jnp.int32)
  if score_ids.shape != score_mask.shape or score_ids.shape[0] != prompt_ids.shape[0]:
    raise ValueError(f"score_ids {score_ids.shape} and score_mask {score_mask.shape} must be equal and have the "
                     f"prompts' {prompt_ids.shape[0]} rows")
  out, scored = _sampler()(model, params, prompt_ids, prompt_mask, rng, jnp.float32(temperature), eos, pad,
                           prefix_embeds, score_ids, score_mask, max_new_tokens=int(max_new_tokens),
                           top_k=int(top_k), top_p=float(top_p), unroll=bool(unroll_layers), utf8=utf8,
                           shared=int(shared), group=int(group))
  return scored, out
