"""The text mean field: the paper's own representation of m (DESIGN.md, option 2).

m_t is text, a summary of at most S tokens that an LM, the *writer* (the
policy's architecture with its own parameters, `params["mf_lm"]`), writes after
every step from the previous summary and the step's actions:

  writer prompt   [WRITER_HEADER | m_{t-1} | ACTIONS_HEADER | a_1 SEP ... a_B SEP | WRITER_END]
  m_t ~ q(m | writer prompt)     S tokens from the KV-cache sampler (<eos> included)
  policy at t+1   reads [SUMMARY_HEADER | m_t] as its population context (`mfjax.policy.with_context`)

Everything is in token space with static shapes: the previous summary and each
action have a slot of fixed length whose padding (and <eos>) is masked, and
positions count valid tokens only. Before the first summary the policy's
context is fully masked (the prompt then reads as no context), as for `recent`
with an empty history. The writer reads the actions only (the step's agents'
states are in the policy's prompts).

The IB's prior p0(m) is the base LM (the writer with its LoRA adapters zeroed:
`prior_params`) reading m after SUMMARY_HEADER alone: log q(m | prompt) -
log p0(m) estimates what the summary says about this event beyond a generic one.
IB-Tune with this mean field: `mfjax.ibtune.objective.text_ib_tune_loss`.

Letters: E events, B agents, A action tokens, S summary tokens, W writer prompt
tokens, C policy context tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mfjax import sampling
from mfjax.model.lora import is_lora_path
from mfjax.model.transformer import Decoder
from mfjax.policy import action_logprobs

SUMMARY_HEADER = "群体总结："  # "population summary:", before m in the policy's context and the prior's prompt
WRITER_HEADER = "此前总结："  # "summary so far:"
ACTIONS_HEADER = "最新动态："  # "latest actions:"
WRITER_END = "新总结："  # "new summary:", the writer's last prompt tokens (always present)
SEP = "；"


@dataclasses.dataclass(frozen=True)
class TextMFSpec:
  """Static token layout of the text mean field (hashable: a jit static)."""

  summary_header: tuple  # token ids of SUMMARY_HEADER
  writer_header: tuple
  actions_header: tuple
  writer_end: tuple
  sep: tuple
  eos_id: int
  pad_id: int
  summary_len: int  # S: the summary's length, <eos> included
  action_len: int  # A
  agents: int  # B

  @classmethod
  def from_tokenizer(cls, tokenizer, *, summary_len: int, action_len: int, agents: int) -> "TextMFSpec":
    enc = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return cls(enc(SUMMARY_HEADER), enc(WRITER_HEADER), enc(ACTIONS_HEADER), enc(WRITER_END), enc(SEP),
               int(tokenizer.eos_token_id), int(pad), int(summary_len), int(action_len), int(agents))

  @property
  def context_len(self) -> int:  # C
    return len(self.summary_header) + self.summary_len

  @property
  def writer_len(self) -> int:  # W
    return (len(self.writer_header) + self.summary_len + len(self.actions_header)
            + self.agents * (self.action_len + len(self.sep)) + len(self.writer_end))


def _const(ids: tuple, lead: tuple):
  return jnp.broadcast_to(jnp.asarray(ids, jnp.int32), lead + (len(ids),))


def _body_mask(ids, mask, eos_id: int):
  """The tokens of a slot that are read: valid ones, <eos> dropped."""
  return (mask > 0) & (ids != eos_id)


def empty_summary(spec: TextMFSpec, lead: tuple):
  """(ids, mask) [..., S] of no summary yet."""
  return jnp.full(lead + (spec.summary_len,), spec.pad_id, jnp.int32), jnp.zeros(lead + (spec.summary_len,), bool)


def policy_context(spec: TextMFSpec, summary_ids_ExS, summary_mask_ExS):
  """The policy's context [..., C]: ids and int32 mask (all masked before any summary)."""
  lead = summary_ids_ExS.shape[:-1]
  body = _body_mask(summary_ids_ExS, summary_mask_ExS, spec.eos_id)
  header = jnp.broadcast_to(body.any(-1, keepdims=True), lead + (len(spec.summary_header),))
  ids = jnp.concatenate([_const(spec.summary_header, lead), summary_ids_ExS.astype(jnp.int32)], -1)
  return ids, jnp.concatenate([header, body], -1).astype(jnp.int32)


def writer_prompt(spec: TextMFSpec, summary_ids_ExS, summary_mask_ExS, action_ids_ExBxA, action_mask_ExBxA,
                  agent_mask_ExB):
  """The writer's prompt [E, W] (ids, int32 mask): the previous summary and the
  step's valid agents' actions (each followed by SEP), ending in WRITER_END."""
  E, B, A = action_ids_ExBxA.shape
  lead = (E,)
  a_body = _body_mask(action_ids_ExBxA, action_mask_ExBxA, spec.eos_id) & agent_mask_ExB[..., None]
  sep_mask = jnp.broadcast_to(agent_mask_ExB[..., None], (E, B, len(spec.sep)))
  acts = jnp.concatenate([action_ids_ExBxA.astype(jnp.int32), _const(spec.sep, (E, B))], -1).reshape(E, -1)
  acts_mask = jnp.concatenate([a_body, sep_mask], -1).reshape(E, -1)
  on = lambda ids: jnp.ones(lead + (len(ids),), bool)
  ids = jnp.concatenate([_const(spec.writer_header, lead), summary_ids_ExS.astype(jnp.int32),
                         _const(spec.actions_header, lead), acts, _const(spec.writer_end, lead)], -1)
  mask = jnp.concatenate([on(spec.writer_header), _body_mask(summary_ids_ExS, summary_mask_ExS, spec.eos_id),
                          on(spec.actions_header), acts_mask, on(spec.writer_end)], -1)
  return ids, mask.astype(jnp.int32)


def write(model: Decoder, writer_params, spec: TextMFSpec, prompt_ids_ExW, prompt_mask_ExW, *, rng,
          temperature=1.0, top_k: int = 0, top_p: float = 1.0) -> sampling.SampleOutput:
  """m ~ q(m | writer prompt): S tokens per event (pad after <eos>, `mask` up to and including it)."""
  return sampling.generate(model, writer_params, prompt_ids_ExW, prompt_mask_ExW, rng=rng,
                           max_new_tokens=spec.summary_len, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_id=spec.eos_id, pad_id=spec.pad_id)


def next_summary(spec: TextMFSpec, written: sampling.SampleOutput, old_ids_ExS, old_mask_ExS, agent_mask_ExB):
  """The summary after a step: the written one, or the old one where the step has no agent (padding)."""
  keep = agent_mask_ExB.any(-1)[:, None]
  return jnp.where(keep, written.tokens, old_ids_ExS), jnp.where(keep, written.mask, old_mask_ExS)


def summary_logprobs(model: Decoder, params, prompt_ids_NxW, prompt_mask_NxW, summary_ids_NxS, summary_mask_NxS):
  """log of the probability of each summary (its tokens up to and including <eos>) after its prompt: [N] float32."""
  return action_logprobs(model, params, prompt_ids_NxW, prompt_mask_NxW, summary_ids_NxS, summary_mask_NxS).sum(-1)


def prior_prompt(spec: TextMFSpec, n: int):
  """The prior's prompt [n, len(SUMMARY_HEADER)] (ids, mask): the header alone."""
  ids = _const(spec.summary_header, (n,))
  return ids, jnp.ones_like(ids)


def prior_params(writer_params):
  """The prior p0: the writer's base LM (LoRA adapters zeroed), without gradient."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if is_lora_path(p) else jax.lax.stop_gradient(x), writer_params)
