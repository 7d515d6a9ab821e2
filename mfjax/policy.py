"""The policy pi(a | topic, state, context, m) on top of the decoder LM:
teacher-forced log-probabilities of actions, and how its inputs are laid out.

An agent's input is [population context C | prompt P] (context optional, its
padding interior and masked: positions count valid tokens only), with the K
mean-field vectors in front as prefix embeddings when the method has a mean
field; the action follows.

Letters: N rows (agents), C context tokens, P prompt tokens, A action tokens,
K prefix vectors, D width, V vocab.
"""

from __future__ import annotations

import jax.numpy as jnp

from mfjax.model.transformer import Decoder
from mfjax.sampling import token_logprobs


def with_context(ctx_ids_NxC, ctx_mask_NxC, prompt_ids_NxP, prompt_mask_NxP):
  """[context | prompt] ids and mask; no context (None) leaves the prompt as it is."""
  if ctx_ids_NxC is None:
    return prompt_ids_NxP, prompt_mask_NxP
  return (jnp.concatenate([ctx_ids_NxC, prompt_ids_NxP], -1),
          jnp.concatenate([ctx_mask_NxC.astype(prompt_mask_NxP.dtype), prompt_mask_NxP], -1))


def action_logprobs(model: Decoder, params, prompt_ids_NxP, prompt_mask_NxP, action_ids_NxA, action_mask_NxA, *,
                    prefix_NxKxD=None):
  """log pi(a_j | input, a_<j) of every action token [N, A] (float32; 0 where
  the action mask is 0). Prompts are left-padded so the token before the first
  action token is the prompt's last, which predicts it."""
  P = prompt_ids_NxP.shape[-1]
  tokens = jnp.concatenate([prompt_ids_NxP, action_ids_NxA], -1)
  mask = jnp.concatenate([prompt_mask_NxP, action_mask_NxA.astype(prompt_mask_NxP.dtype)], -1)
  variables = {"params": params}
  # Only positions P-1.. predict action tokens: the last layer's queries and MLP
  # run for those alone (queries_from), and the LM head for all but the last.
  _, hidden = model.apply(variables, tokens, mask, prefix_embeds_BxKxD=prefix_NxKxD, return_hidden=True,
                          queries_from=P - 1)
  logits = model.apply(variables, hidden[:, :-1], method=Decoder.logits)
  return token_logprobs(logits, action_ids_NxA, action_mask_NxA)


def per_agent(x_ExK, agents: int):
  """Repeat a per-event array [E, ...] for each of its B agents: [E * B, ...]."""
  return jnp.repeat(x_ExK, agents, axis=0)
