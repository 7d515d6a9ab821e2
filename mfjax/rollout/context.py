"""Population context for the text baselines, built in token space.

`recent` quotes the last k actions before the step; `popular` the k actions
reposted most so far (counted through `parent` links; ties go to the earlier
action). The context is `header`, then each quoted action's tokens (its <eos>
dropped) followed by `sep`, in history order. Shapes are static: every quote
takes a slot of A + len(sep) tokens whose padding is masked, so the same
function serves training (real history, all steps at once) and rollouts
(a history buffer in the scan carry).

Letters: N history slots (T * B), A action tokens, k quoted actions,
C = len(header) + k * (A + len(sep)) context tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NONE, RECENT, POPULAR = 0, 1, 2
KINDS = {"none": NONE, "recent": RECENT, "popular": POPULAR}
CONTEXT_HEADER = "群体动态："
CONTEXT_SEP = "；"


@dataclasses.dataclass(frozen=True)
class ContextSpec:
  """Static token layout of the population context (hashable: a jit static)."""

  header: tuple  # token ids of CONTEXT_HEADER
  sep: tuple  # token ids of CONTEXT_SEP
  eos_id: int
  k: int  # quoted actions
  action_len: int  # A

  @classmethod
  def from_tokenizer(cls, tokenizer, *, k: int, action_len: int) -> "ContextSpec":
    enc = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"])
    return cls(enc(CONTEXT_HEADER), enc(CONTEXT_SEP), int(tokenizer.eos_token_id), int(k), int(action_len))

  @property
  def length(self) -> int:
    return len(self.header) + self.k * (self.action_len + len(self.sep))


def repost_counts(parent_M, valid_M, slots: int):
  """How often each of `slots` history slots is the parent of a valid action
  among the M given: [slots] float32 (parent -1 = the original post or outside
  the window)."""
  N = slots
  target = jnp.where((parent_M >= 0) & valid_M, parent_M, N)
  return jax.ops.segment_sum(jnp.ones_like(target, jnp.float32), target, num_segments=N + 1)[:N]


def selection_scores(kind, counts_N):
  """Higher = quoted first: recency for RECENT, repost count then earliness for POPULAR (kind may be traced)."""
  N = counts_N.shape[-1]
  index = jnp.arange(N, dtype=jnp.float32)
  return jnp.where(kind == POPULAR, counts_N * (N + 1) - index, index)


def quoted_slots(k: int, hist_valid_N, scores_N):
  """The k best-scoring valid history slots, in history order: (slot indices [k], ok [k]: the slot
  holds a valid action; False where fewer than k are valid)."""
  masked = jnp.where(hist_valid_N, scores_N, -jnp.inf)
  top, idx = jax.lax.top_k(masked, k)
  ok = top > -jnp.inf
  order = jnp.argsort(jnp.where(ok, idx, hist_valid_N.shape[-1] + jnp.arange(k)))  # history order
  return idx[order], ok[order]


def context_tokens(spec: ContextSpec, q_ids_kxA, q_mask_kxA, ok_k):
  """Context tokens [C] and mask [C] quoting the k actions given (their rows `ok`): the header, then
  each action's tokens (its <eos> dropped) and the separator; all masked when none is ok."""
  k = spec.k
  q_mask = (q_mask_kxA > 0) & (q_ids_kxA != spec.eos_id) & ok_k[:, None]
  sep = jnp.broadcast_to(jnp.asarray(spec.sep, jnp.int32), (k, len(spec.sep)))
  body_ids = jnp.concatenate([q_ids_kxA.astype(jnp.int32), sep], -1).reshape(-1)
  body_mask = jnp.concatenate([q_mask, jnp.broadcast_to(ok_k[:, None], sep.shape)], -1).reshape(-1)
  header = jnp.asarray(spec.header, jnp.int32)
  ids = jnp.concatenate([header, body_ids])
  mask = jnp.concatenate([jnp.broadcast_to(ok_k.any(), header.shape), body_mask]).astype(jnp.int32)
  return ids, mask


def quote_context(spec: ContextSpec, hist_ids_NxA, hist_mask_NxA, hist_valid_N, scores_N):
  """Context tokens [C] and mask [C] quoting the k best-scoring valid slots;
  all masked when the history is empty (the prompt then reads as no context)."""
  idx, ok = quoted_slots(spec.k, hist_valid_N, scores_N)
  return context_tokens(spec, hist_ids_NxA[idx], hist_mask_NxA[idx], ok)


def step_contexts(spec: ContextSpec, kind, action_ids_TxBxA, action_mask_TxBxA, agent_mask_TxB, parent_TxB):
  """Contexts of every step of one event from its real history (steps < t):
  ids [T, C] and mask [T, C] (all masked for kind NONE)."""
  T, B, A = action_ids_TxBxA.shape
  hist_ids = action_ids_TxBxA.reshape(T * B, A)
  hist_mask = action_mask_TxBxA.reshape(T * B, A)
  valid_all = agent_mask_TxB.reshape(-1)
  parent = parent_TxB.reshape(-1)

  def one(t):
    valid = valid_all & (jnp.arange(T * B) < t * B)
    ids, mask = quote_context(spec, hist_ids, hist_mask, valid, selection_scores(kind, repost_counts(parent, valid, T * B)))
    return ids, mask * (kind != NONE)

  return jax.vmap(one)(jnp.arange(T))
