"""The policy pi(a | topic, state, context, m) on top of the decoder LM:
teacher-forced log-probabilities of actions, and how its inputs are laid out.

An agent's input is [population context C | prompt P | tag G] (context and tag
optional, their padding interior and masked: positions count valid tokens
only), with the K mean-field vectors in front as prefix embeddings when the
method has a mean field; the action follows. The tag (`AttributeTags`) is an
attribute-conditioned policy's: the action's joint category
(`mfjax.categories.CLASSES`) written out, which the policy writes the action given.

Letters: N rows (agents), C context tokens, P prompt tokens, G tag tokens,
A action tokens, K prefix vectors, D width, V vocab.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mfjax.categories import CLASSES
from mfjax.data.prompts import attribute_tag
from mfjax.model.transformer import Decoder, prompt_queries_from, shared_extend
from mfjax.sampling import token_logprobs


@dataclasses.dataclass(frozen=True)
class AttributeTags:
  """Every class's tag tokens, left-padded to one length G (hashable: a static argument)."""

  ids: tuple  # [C][G] token ids
  mask: tuple  # [C][G] 0/1

  @classmethod
  def from_tokenizer(cls, tokenizer) -> "AttributeTags":
    rows = tokenizer([attribute_tag(c) for c in CLASSES], add_special_tokens=False)["input_ids"]
    G = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return cls(tuple(tuple([pad] * (G - len(r)) + list(r)) for r in rows),
               tuple(tuple([0] * (G - len(r)) + [1] * len(r)) for r in rows))

  @property
  def length(self) -> int:
    return len(self.ids[0])

  def __call__(self, classes_N):
    """The tags of classes [...] (ids into CLASSES; clipped into range): (ids, mask) [..., G] int32."""
    c = jnp.clip(classes_N, 0, len(self.ids) - 1)
    return jnp.asarray(np.array(self.ids, np.int32))[c], jnp.asarray(np.array(self.mask, np.int32))[c]


def with_tags(prompt_ids_NxP, prompt_mask_NxP, tags: AttributeTags, classes_N):
  """[prompt | tag of each row's class] ids and mask (`AttributeTags`)."""
  t_ids, t_mask = tags(classes_N)
  return (jnp.concatenate([prompt_ids_NxP, t_ids.astype(prompt_ids_NxP.dtype)], -1),
          jnp.concatenate([prompt_mask_NxP, t_mask.astype(prompt_mask_NxP.dtype)], -1))


def prompt_state(model: Decoder, params, prompt_ids_NxP, prompt_mask_NxP, tail: int = 0):
  """An agent's state as the population head reads it: the mean of its prompt's token embeddings,
  [..., D] float32, without a gradient into the LM. With `tail` > 0 also the embeddings of the prompt's
  last `tail` positions, in order (zero where padded): prompts are left-padded and end with the agent's
  own state line, which the whole prompt's mean dilutes in the topic and a mean would scramble (its
  numbers share tokens): [..., (1 + tail) D]."""
  lead, P = prompt_ids_NxP.shape[:-1], prompt_ids_NxP.shape[-1]
  emb = model.apply({"params": params}, prompt_ids_NxP.reshape(-1, P), method=Decoder.embed).astype(jnp.float32)
  w = prompt_mask_NxP.reshape(-1, P).astype(jnp.float32)
  state = jnp.einsum("npd,np->nd", emb, w) / jnp.maximum(w.sum(-1), 1.0)[:, None]
  if tail:
    if tail > P:
      raise ValueError(f"the head's state reads the prompt's last {tail} tokens, but prompts have {P}")
    last = (emb * w[..., None])[:, P - tail:]  # [N, tail, D]
    state = jnp.concatenate([state, last.reshape(last.shape[0], -1)], -1)
  return jax.lax.stop_gradient(state).reshape(*lead, -1)


def head_state(model: Decoder, params, prompt_ids_NxP, prompt_mask_NxP, tail: int = 0, numbers_NxF=None):
  """The population head's agent state: `prompt_state`, then the agent's state as numbers where the
  head reads them ([..., F] float32, `mfjax.data.step_numbers`; None: none): [..., (1 + tail) D + F]."""
  state = prompt_state(model, params, prompt_ids_NxP, prompt_mask_NxP, tail)
  if numbers_NxF is None:
    return state
  return jnp.concatenate([state, jnp.asarray(numbers_NxF, jnp.float32).reshape(*state.shape[:-1], -1)], -1)


def with_context(ctx_ids_NxC, ctx_mask_NxC, prompt_ids_NxP, prompt_mask_NxP):
  """[context | prompt] ids and mask; no context (None) leaves the prompt as it is."""
  if ctx_ids_NxC is None:
    return prompt_ids_NxP, prompt_mask_NxP
  return (jnp.concatenate([ctx_ids_NxC, prompt_ids_NxP], -1),
          jnp.concatenate([ctx_mask_NxC.astype(prompt_mask_NxP.dtype), prompt_mask_NxP], -1))


def shared_tokens(topic_len: int, context_len: int = 0, share: bool = True) -> int:
  """How many of an agent's input tokens are alike for a step's agents and computed once (`shared=`): the
  quoted context (`with_context`), then the event's topic block (`BatchConfig.topic_len`). share=False: 0,
  every row computed whole (the same values: the reference the exactness tests and benchmarks compare with)."""
  return topic_len + context_len if share else 0


def action_logprobs(model: Decoder, params, prompt_ids_NxP, prompt_mask_NxP, action_ids_NxA, action_mask_NxA, *,
                    prefix_NxKxD=None, shared: int = 0, group: int = 1):
  """log pi(a_j | input, a_<j) of every action token [N, A] (float32; 0 where
  the action mask is 0). Prompts are left-padded so the token before the first
  action token is the prompt's last, which predicts it.

  `shared` > 0: the prefix vectors and the prompts' first `shared` tokens are alike in every `group`
  consecutive rows (`shared_extend`: computed once per group; the same log-probabilities)."""
  P = prompt_ids_NxP.shape[-1]
  tokens = jnp.concatenate([prompt_ids_NxP, action_ids_NxA], -1)
  mask = jnp.concatenate([prompt_mask_NxP, action_mask_NxA.astype(prompt_mask_NxP.dtype)], -1)
  variables = {"params": params}
  # Only positions P-1.. predict action tokens: the last layer's queries and MLP
  # run for those alone (queries_from), and the LM head for all but the last.
  if shared:
    K = 0 if prefix_NxKxD is None else prefix_NxKxD.shape[1]
    _, hidden, _ = shared_extend(model, params, tokens, mask, shared=shared, group=group, slots=K + tokens.shape[1],
                                 prefix_embeds_BxKxD=prefix_NxKxD, queries_from=prompt_queries_from(shared, P))
  else:
    _, hidden = model.apply(variables, tokens, mask, prefix_embeds_BxKxD=prefix_NxKxD, return_hidden=True,
                            queries_from=P - 1)
  logits = model.apply(variables, hidden[:, :-1], method=Decoder.logits)
  return token_logprobs(logits, action_ids_NxA, action_mask_NxA)


def per_agent(x_ExK, agents: int):
  """Repeat a per-event array [E, ...] for each of its B agents: [E * B, ...]."""
  return jnp.repeat(x_ExK, agents, axis=0)
