"""IB-Tune, the information-bottleneck objective of MF-LLM, and the policy-only
(SFT) objective. Keyword-only pure losses returning (loss, aux).

IB-Tune, teacher-forced over the T steps of each event:

  q(m_t | real history up to t)   the mean-field encoder, a `lax.scan` over t
  relevance   = mean over real action tokens of -log pi(a*_t | topic, s_t, m_{t-1}),
                m_{t-1} ~ q by reparameterisation (the policy's own likelihood term)
  compression = mean over valid steps of KL(q(m_{t-1}) || N(0, I)) (nats, summed over K x D)
  loss        = relevance + beta * compression

The mean field read at step t summarises steps < t only (at step 0: the empty
history). Gradients flow through the recurrence into the encoder and, through
the pooled hidden states, into the LM's trainable parameters.

Batches are dicts of arrays [E, T, B, ...] (`mfjax.data.batching` layout):
prompt_ids/prompt_mask [E,T,B,P], action_ids/action_mask [E,T,B,A],
agent_mask [E,T,B], parent [E,T,B].

Letters: E events, T steps, B agents, P prompt, A action, C context, K slots, D width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mfjax.meanfield.encoder import MeanFieldEncoder, MFState, Posterior, agent_embeddings
from mfjax.model.transformer import Decoder
from mfjax.policy import action_logprobs, with_context
from mfjax.rollout.context import ContextSpec, step_contexts


def _token_nll(logp_NxA, batch):
  """Mean NLL per real action token, and the token count."""
  w = batch["action_mask"].astype(jnp.float32) * batch["agent_mask"][..., None]
  w = w.reshape(logp_NxA.shape)
  n = jnp.maximum(w.sum(), 1.0)
  return -(logp_NxA * w).sum() / n, n


AGENT_FIELDS = ("prompt_ids", "prompt_mask", "action_ids", "action_mask", "agent_mask")


def subsample_agents(batch, rng, agents: int):
  """The batch with `agents` of the B agents of every step, drawn at random
  (for the NLL terms: an unbiased estimate at a fraction of the cost). The
  population history (contexts, mean field) is still built from all agents."""
  B = batch["agent_mask"].shape[2]
  if not agents or agents >= B:
    return batch
  order = jnp.argsort(jax.random.uniform(rng, batch["agent_mask"].shape), axis=-1)[..., :agents]  # [E, T, b]
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 3)), axis=2)
  return {**batch, **{k: take(batch[k]) for k in AGENT_FIELDS}}


def _flat(x, trailing: int):
  return x.reshape(-1, *x.shape[x.ndim - trailing:]) if trailing else x.reshape(-1)


def mean_field_path(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, rng, remat: bool = False,
                    lm_grad: bool = True, sample: bool = True):
  """Teacher-forced mean field of each step: a reparameterised sample m and the
  posteriors (mu, logvar) read at steps 0..T-1, each [E, T, K, D].

  lm_grad=False treats the LM's agent embeddings as fixed inputs of the
  encoder (no backward pass through that LM forward: about a third cheaper;
  the LM still trains through the policy term). sample=False reads the
  posterior mean instead of a draw (deterministic evaluation)."""
  E, T = batch["agent_mask"].shape[:2]
  pooled = agent_embeddings(model, params["lm"], batch["prompt_ids"], batch["prompt_mask"], batch["action_ids"],
                            batch["action_mask"])  # [E, T, B, D]
  if not lm_grad:
    pooled = jax.lax.stop_gradient(pooled)
  enc = lambda method, *a: encoder.apply({"params": params["mf"]}, *a, method=method)
  feats = enc(MeanFieldEncoder.features, pooled)

  def step(state, xs):
    feats_ExBxF, mask_ExB, key = xs
    q = enc(MeanFieldEncoder.posterior, state)
    m = q.sample(key) if sample else q.mu
    return enc(MeanFieldEncoder.update, state, feats_ExBxF, mask_ExB), (m, q.mu, q.logvar)

  if remat:
    step = jax.checkpoint(step)
  xs = (jnp.swapaxes(feats, 0, 1), jnp.swapaxes(batch["agent_mask"], 0, 1), jax.random.split(rng, T))
  _, (m, mu, logvar) = jax.lax.scan(step, MFState.zeros(encoder.cfg, (E,)), xs)
  return tuple(jnp.swapaxes(x, 0, 1) for x in (m, mu, logvar))


def ib_tune_loss(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, rng, beta, remat: bool = False,
                 agents: int = 0, lm_grad: bool = True, sample: bool = True):
  """IB-Tune loss (module docstring). params = {"lm": ..., "mf": ...}; beta may
  be traced; `agents` > 0 scores that many random agents per step (the mean
  field still reads all of them); `lm_grad` and `sample` as in `mean_field_path`."""
  k_m, k_a = jax.random.split(rng)
  m, mu, logvar = mean_field_path(model=model, encoder=encoder, params=params, batch=batch, rng=k_m, remat=remat,
                                  lm_grad=lm_grad, sample=sample)
  scored = subsample_agents(batch, k_a, agents)
  E, T, B = scored["agent_mask"].shape
  prefix = jnp.broadcast_to(m[:, :, None], (E, T, B) + m.shape[2:]).reshape(E * T * B, *m.shape[2:])
  logp = action_logprobs(model, params["lm"], _flat(scored["prompt_ids"], 1), _flat(scored["prompt_mask"], 1),
                         _flat(scored["action_ids"], 1), _flat(scored["action_mask"], 1), prefix_NxKxD=prefix)
  relevance, tokens = _token_nll(logp, scored)
  kl = Posterior(mu=mu, logvar=logvar).kl_to_standard_normal()  # [E, T]
  valid = batch["agent_mask"].any(-1).astype(jnp.float32)
  compression = (kl * valid).sum() / jnp.maximum(valid.sum(), 1.0)
  loss = relevance + beta * compression
  aux = {"loss": loss, "relevance": relevance, "compression": compression,
         "compression_bits": compression / math.log(2.0), "beta": jnp.asarray(beta, jnp.float32), "tokens": tokens}
  return loss, aux


def policy_loss(*, model: Decoder, params, batch, rng, context: ContextSpec | None = None,
                context_kinds=(0,), agents: int = 0):
  """Policy-only NLL of the real actions (the `sft` mode and LM pre-training).

  With `context`, each event's prompts carry a population context of a kind
  drawn from `context_kinds` (ids in `mfjax.rollout.context.KINDS`), so that
  one model learns to read the `recent` / `popular` prompts. params = {"lm": ...};
  `agents` > 0 scores that many random agents per step."""
  lm = params["lm"]
  k_kind, k_a = jax.random.split(rng)
  scored = subsample_agents(batch, k_a, agents)
  prompt_ids, prompt_mask = _flat(scored["prompt_ids"], 1), _flat(scored["prompt_mask"], 1)
  if context is not None:
    E, T, B = scored["agent_mask"].shape
    kinds = jnp.asarray(context_kinds, jnp.int32)[jax.random.randint(k_kind, (E,), 0, len(context_kinds))]
    ctx_ids, ctx_mask = jax.vmap(lambda *a: step_contexts(context, *a))(
        kinds, batch["action_ids"], batch["action_mask"], batch["agent_mask"], batch["parent"])  # [E, T, C]
    rep = lambda x: jnp.broadcast_to(x[:, :, None], (E, T, B, x.shape[-1])).reshape(E * T * B, -1)
    prompt_ids, prompt_mask = with_context(rep(ctx_ids), rep(ctx_mask), prompt_ids, prompt_mask)
  logp = action_logprobs(model, lm, prompt_ids, prompt_mask, _flat(scored["action_ids"], 1),
                         _flat(scored["action_mask"], 1))
  nll, tokens = _token_nll(logp, scored)
  return nll, {"loss": nll, "relevance": nll, "tokens": tokens}
