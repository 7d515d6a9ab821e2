"""IB-Tune, the information-bottleneck objective of MF-LLM, and the policy-only
(SFT) objective. Keyword-only pure losses returning (loss, aux).

IB-Tune, teacher-forced over the T steps of each event:

  q(m_t | real history up to t)   the mean-field encoder, a `lax.scan` over t
  relevance   = mean over real action tokens of -log pi(a*_t | topic, s_t, m_{t-1}),
                m_{t-1} ~ q by reparameterisation (the policy's own likelihood term)
  compression = mean over valid steps of KL(q(m_{t-1}) || N(0, I)) (nats, summed over K x D)
  population  = mean over real agents of -log h(c*_t | m_{t-1}, s_t)   (with a population head h)
  loss        = relevance + population_weight * population + beta * compression

The population term (`MeanFieldEncoder.class_logits`) scores how well the
mean field predicts the population: c* is the real action's joint category
(`mfjax.categories.CLASSES`, labelled when the data is prepared: the batch key
`category`). Were h to ignore the state, the term would be the cross-entropy of
the step's predicted category distribution against the real one. Its gradient
reaches the encoder through m, so the bottleneck keeps what predicts the
population. An attribute-conditioned policy (`tags`) reads the real action's
tag after its prompt: the relevance is then -log pi(a* | topic, s, c*, m), and
relevance + population is the NLL of the action under
p(a | s, m) = sum_c h(c | m, s) pi(a | s, c, m) (the labeler reads c from a).

The mean field read at step t summarises steps < t only (at step 0: the empty
history). Gradients flow through the recurrence into the encoder and, through
the pooled hidden states, into the LM's trainable parameters.

Batches are dicts of arrays [E, T, B, ...] (`mfjax.data.batching` layout):
prompt_ids/prompt_mask [E,T,B,P], action_ids/action_mask [E,T,B,A],
agent_mask [E,T,B], parent [E,T,B] (and category [E,T,B] for a population head).

Letters: E events, T steps, B agents, P prompt, A action, C context, K slots, D width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from typing import Optional

from mfjax.categories import class_dimensions
from mfjax.meanfield import text as text_mf
from mfjax.meanfield.encoder import (MeanFieldEncoder, MFState, Posterior, agent_anchors, agent_embeddings,
                                    agent_numbers_of)
from mfjax.model.transformer import Decoder, unrolled
from mfjax.params_keys import PARAMS
from mfjax.policy import AttributeTags, action_logprobs, head_state, shared_tokens, with_context, with_tags
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
  return {**batch, **{k: take(batch[k]) for k in AGENT_FIELDS + ("category", "numbers", "anchor") if k in batch}}


def _flat(x, trailing: int):
  return x.reshape(-1, *x.shape[x.ndim - trailing:]) if trailing else x.reshape(-1)


def _per_agent_rows(x_ExTx_, agents: int):
  """What each step's agents read alike (a mean field, a context: [E, T, ...]), one row per
  (event, step, agent) as the flattened batch lays them out: [E * T * agents, ...]."""
  E, T = x_ExTx_.shape[:2]
  return jnp.broadcast_to(x_ExTx_[:, :, None], (E, T, agents) + x_ExTx_.shape[2:]).reshape(E * T * agents,
                                                                                            *x_ExTx_.shape[2:])


def _categories_read(encoder: MeanFieldEncoder, batch):
  """The actions' categories [E, T, B] where the encoder reads them (`category_features`), else None."""
  if not encoder.cfg.category_features:
    return None
  if "category" not in batch:
    raise ValueError("the mean-field encoder reads each action's category (category_features): "
                     "the batch needs the key 'category' ([E, T, B] joint classes, -1: unlabelled)")
  return batch["category"]


def batch_head_state(model: Decoder, encoder: MeanFieldEncoder, lm_params, batch):
  """[E, T, B, ...]: the population head's agent state of every agent of the batch (`head_state`), with the
  batch's `numbers` where the head reads them (`MeanFieldConfig.state_numbers`)."""
  return head_state(model, lm_params, batch["prompt_ids"], batch["prompt_mask"], encoder.cfg.state_tail,
                    agent_numbers_of(encoder.cfg, batch))


def mean_field_path(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, rng, remat: bool = False,
                    lm_grad: bool = True, sample: bool = True, drawn: float = 0.0, drawn_after: int = 0,
                    topic_len: int = 0):
  """Teacher-forced mean field of each step: a reparameterised sample m and the
  posteriors (mu, logvar) read at steps 0..T-1, each [E, T, K, D].

  lm_grad=False treats the LM's agent embeddings as fixed inputs of the
  encoder (no backward pass through that LM forward: about a third cheaper;
  the LM still trains through the policy term). sample=False reads the
  posterior mean instead of a draw (deterministic evaluation).

  `drawn` > 0 (with `category_features`): scheduled sampling of the categories
  the encoder reads. From step `drawn_after` on (a rollout's warm-up), each
  agent's category enters the mean field as a class drawn from the population
  head on the m of its step and its state, as in a rollout, with probability
  `drawn` (1: always), else its real label. The draws carry no gradient; the
  head is still scored against the real labels (`population_terms`), so it
  learns to forecast from a mean field that holds its own earlier draws.

  `topic_len` > 0: the prompts start with the event's topic block of that many tokens (`BatchConfig.topic_len`),
  computed once for a step's agents here and in the losses below (the same values)."""
  E, T = batch["agent_mask"].shape[:2]
  pooled = agent_embeddings(model, params[PARAMS.lm], batch["prompt_ids"], batch["prompt_mask"], batch["action_ids"],
                            batch["action_mask"], shared=shared_tokens(topic_len))  # [E, T, B, D]
  if not lm_grad:
    pooled = jax.lax.stop_gradient(pooled)
  enc = lambda method, *a: encoder.apply({"params": params[PARAMS.mf]}, *a, method=method)
  category = _categories_read(encoder, batch)
  if drawn and category is None:
    raise ValueError("drawn categories (scheduled sampling) need an encoder that reads them (category_features)")
  per_step = lambda x: jnp.swapaxes(x, 0, 1)  # [E, T, ...] -> [T, E, ...], the scan's leading axis
  if not drawn:
    xs = (per_step(enc(MeanFieldEncoder.features, pooled, category)),)
  else:  # the text's part of the features; the categories' part is added per step, real or drawn
    xs = (per_step(enc(MeanFieldEncoder.features, pooled, jnp.full_like(category, -1))), per_step(category),
          per_step(batch_head_state(model, encoder, params[PARAMS.lm], batch)),
          jax.tree.map(per_step, agent_anchors(encoder.cfg, batch)), jnp.arange(T))

  def step(state, xs):
    mask_ExB, key, (feats_ExBxF, *rest) = xs[0], xs[1], xs[2:]
    q = enc(MeanFieldEncoder.posterior, state)
    m = q.sample(key) if sample else q.mu
    if drawn:
      real, state_ExBxD, anchor_ExBxC, t = rest  # anchor None without one
      m_B = jnp.broadcast_to(m[:, None], (E, real.shape[-1]) + m.shape[1:])
      logits = jax.lax.stop_gradient(enc(MeanFieldEncoder.class_logits, m_B, state_ExBxD, anchor_ExBxC))
      c = jax.random.categorical(jax.random.fold_in(key, 1), logits)
      swap = (t >= drawn_after) & (jax.random.uniform(jax.random.fold_in(key, 2), real.shape) < drawn)
      feats_ExBxF = feats_ExBxF + enc(MeanFieldEncoder.category_vectors, jnp.where(swap, c, real))
    return enc(MeanFieldEncoder.update, state, feats_ExBxF, mask_ExB), (m, q.mu, q.logvar)

  if remat:
    step = jax.checkpoint(step)
  xs = (per_step(batch["agent_mask"]), jax.random.split(rng, T)) + xs
  _, (m, mu, logvar) = jax.lax.scan(step, MFState.zeros(encoder.cfg, (E,)), xs)
  return tuple(jnp.swapaxes(x, 0, 1) for x in (m, mu, logvar))


def population_terms(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, m_ExTxKxD) -> dict:
  """The population head's cross-entropies against the real actions' categories, nats per real agent:
  `population` (the joint class) and `population_<dimension>` (each dimension's marginal; in aux only)."""
  state = batch_head_state(model, encoder, params[PARAMS.lm], batch)
  m = jnp.broadcast_to(m_ExTxKxD[:, :, None], state.shape[:3] + m_ExTxKxD.shape[2:])
  anchor = agent_anchors(encoder.cfg, batch)  # from the warm-up's real classes
  logits = encoder.apply({"params": params[PARAMS.mf]}, m, state, anchor, method=MeanFieldEncoder.class_logits)
  logp = jax.nn.log_softmax(logits, -1)  # [E, T, B, C]
  cat = batch["category"]
  w = (batch["agent_mask"] & (cat >= 0)).astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  mean = lambda x: -(x * w).sum() / n
  out = {"population": mean(jnp.take_along_axis(logp, jnp.maximum(cat, 0)[..., None], -1)[..., 0])}
  probs = jnp.exp(logp)
  for dim, of_class in class_dimensions().items():
    onehot = jax.nn.one_hot(jnp.asarray(of_class), max(of_class) + 1)  # [C, C_dim]
    p_dim = jnp.maximum(probs @ onehot, 1e-12)  # [E, T, B, C_dim]
    true_dim = jnp.asarray(of_class)[jnp.maximum(cat, 0)]
    out[f"population_{dim}"] = mean(jnp.log(jnp.take_along_axis(p_dim, true_dim[..., None], -1)[..., 0]))
  return out


def ib_tune_loss(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, rng, beta, remat: bool = False,
                 agents: int = 0, lm_grad: bool = True, sample: bool = True, population_weight: float = 0.0,
                 tags: Optional[AttributeTags] = None, drawn: float = 0.0, drawn_after: int = 0,
                 topic_len: int = 0):
  """IB-Tune loss (module docstring). params = {"lm": ..., "mf": ...}; beta and population_weight may
  be traced; `agents` > 0 scores that many random agents per step (the mean
  field still reads all of them); `lm_grad`, `sample`, `drawn` and `drawn_after` as in `mean_field_path`.
  With a population head (encoder.cfg.classes) the population term is in aux (and,
  weighted by `population_weight`, in the loss); `tags`: the policy reads the real
  action's tag after its prompt (an attribute-conditioned policy; needs the head); `topic_len` as in
  `mean_field_path`."""
  # an array weight (traced: a sweep's) is not checked here; the pipeline's config check refuses one > 0 without a head
  weighted = not isinstance(population_weight, jax.Array) and bool(population_weight)
  if (tags is not None or weighted) and not encoder.cfg.classes:
    raise ValueError("a population term or tags need the encoder's population head (MeanFieldConfig.classes)")
  k_m, k_a = jax.random.split(rng)
  m, mu, logvar = mean_field_path(model=model, encoder=encoder, params=params, batch=batch, rng=k_m, remat=remat,
                                  lm_grad=lm_grad, sample=sample, drawn=drawn, drawn_after=drawn_after,
                                  topic_len=topic_len)
  scored = subsample_agents(batch, k_a, agents)
  prefix = _per_agent_rows(m, scored["agent_mask"].shape[2])
  prompt_ids, prompt_mask = _flat(scored["prompt_ids"], 1), _flat(scored["prompt_mask"], 1)
  if tags is not None:
    prompt_ids, prompt_mask = with_tags(prompt_ids, prompt_mask, tags, _flat(scored["category"], 0))
  logp = action_logprobs(model, params[PARAMS.lm], prompt_ids, prompt_mask, _flat(scored["action_ids"], 1),
                         _flat(scored["action_mask"], 1), prefix_NxKxD=prefix, shared=shared_tokens(topic_len),
                         group=scored["agent_mask"].shape[2])
  relevance, tokens = _token_nll(logp, scored)
  kl = Posterior(mu=mu, logvar=logvar).kl_to_standard_normal()  # [E, T]
  valid = batch["agent_mask"].any(-1).astype(jnp.float32)
  compression = (kl * valid).sum() / jnp.maximum(valid.sum(), 1.0)
  loss = relevance + beta * compression
  aux = {"relevance": relevance, "compression": compression, "compression_bits": compression / math.log(2.0),
         "beta": jnp.asarray(beta, jnp.float32), "tokens": tokens}
  if encoder.cfg.classes:
    aux.update(population_terms(model=model, encoder=encoder, params=params, batch=batch, m_ExTxKxD=m))
    loss = loss + population_weight * aux["population"]
  return loss, {"loss": loss, **aux}


# The batch keys of a head-only stage's cached mean field (`teacher_forced_posteriors`): q's mean and log-variance
# read at every step, [E, T, K, D]
MF_MU, MF_LOGVAR = "mf_mu", "mf_logvar"


def teacher_forced_posteriors(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, topic_len: int = 0):
  """{MF_MU, MF_LOGVAR}: q(m_t) read at every step along the batch's real history ([E, T, K, D] each,
  float32; `mean_field_path` without a sample, a gradient or scheduled sampling), what `head_loss` reads."""
  _, mu, logvar = mean_field_path(model=model, encoder=encoder, params=params, batch=batch,
                                  rng=jax.random.PRNGKey(0), lm_grad=False, sample=False, topic_len=topic_len)
  return {MF_MU: jax.lax.stop_gradient(mu).astype(jnp.float32),
          MF_LOGVAR: jax.lax.stop_gradient(logvar).astype(jnp.float32)}


def head_loss(*, model: Decoder, encoder: MeanFieldEncoder, params, batch, rng):
  """The population head's loss on a mean field computed once (a head-only stage): the population term of
  IB-Tune (`population_terms`, nats per real agent) with m drawn from the cached q of each step (batch keys
  MF_MU, MF_LOGVAR from `teacher_forced_posteriors`), as a rollout's head reads a draw of q. Only the head's
  parameters get a gradient that matters: nothing else is between them and the loss but the LM's token
  embeddings, which `head_state` reads without one."""
  for key in (MF_MU, MF_LOGVAR, "category"):
    if key not in batch:
      raise ValueError(f"a head-only stage's batch needs {key!r} (teacher_forced_posteriors; the real labels)")
  q = Posterior(mu=batch[MF_MU], logvar=batch[MF_LOGVAR])
  terms = population_terms(model=model, encoder=encoder, params=params, batch=batch, m_ExTxKxD=q.sample(rng))
  labelled = (batch["agent_mask"] & (batch["category"] >= 0)).sum().astype(jnp.float32)
  return terms["population"], {"loss": terms["population"], **terms, "tokens": labelled}


def _leave_one_out(x_ExT, valid_ExT):
  """Per (event, step): the mean of x over the other valid events of the step (0 where there is none)."""
  v = valid_ExT.astype(jnp.float32)
  total, n = (x_ExT * v).sum(0, keepdims=True), v.sum(0, keepdims=True)
  return jnp.where(n - v > 0, (total - x_ExT * v) / jnp.maximum(n - v, 1.0), 0.0)


def text_ib_tune_loss(*, model: Decoder, spec: text_mf.TextMFSpec, params, batch, rng, beta, agents: int = 0,
                      topic_len: int = 0, share_prefix: bool = True):
  """IB-Tune with the text mean field (`mfjax.meanfield.text`), as the paper
  trains it. params = {"lm": the policy, "mf_lm": the summary writer, and
  optionally "prior": the LM of p0 (not trained; without it, p0 is the writer
  with its LoRA adapters zeroed, `text_mf.prior_params`)}.

  Along each event's real history the writer samples m_t ~ q(m | m_{t-1}, the
  real actions of step t) (temperature 1: q itself), and the policy reads
  m_{t-1} at step t:

    relevance   = mean over real action tokens of -log pi(a*_t | topic, s_t, m_{t-1})
    compression = mean over written summaries of log q(m_t | prompt) - log p0(m_t)
                  (nats: a one-sample estimate of KL(q || p0))
    loss        = relevance + beta * compression     (the value reported)

  The policy's gradient is the relevance's. Summaries are discrete, so the
  writer's is a score-function (REINFORCE) gradient: each m_t is rewarded with
  r_t = (mean log pi of the real action tokens of step t+1, which read it)
  - beta * (log q(m_t) - log p0(m_t)), less the mean reward of the batch's other
  events at that step (a leave-one-out baseline, which keeps the estimate
  unbiased; 0 without other events), and the writer follows
  (r_t - baseline) * grad log q(m_t).
  Only summaries that a later step reads are rewarded. `agents` > 0 scores that
  many random agents per step (the writer still reads all of them). The summary the policy reads (and the
  topic block, `topic_len`) is computed once for a step's agents; share_prefix=False computes every agent's
  prompt whole (the same values)."""
  E, T, B = batch["agent_mask"].shape
  S = spec.summary_len
  k_w, k_a = jax.random.split(rng)
  w_model, writer = unrolled(model, jax.lax.stop_gradient(params[PARAMS.mf_lm]))  # unstacked once, not at every step

  def step(summary, xs):
    act_ids, act_mask, agent_mask, key = xs
    w_ids, w_mask = text_mf.writer_prompt(spec, *summary, act_ids, act_mask, agent_mask)
    written = text_mf.write(w_model, writer, spec, w_ids, w_mask, rng=key)
    return text_mf.next_summary(spec, written, *summary, agent_mask), (summary, w_ids, w_mask, written.tokens,
                                                                       written.mask)

  xs = tuple(jnp.swapaxes(batch[k], 0, 1) for k in ("action_ids", "action_mask", "agent_mask")) + (
      jax.random.split(k_w, T),)
  _, (read, w_ids, w_mask, m_ids, m_mask) = jax.lax.scan(step, text_mf.empty_summary(spec, (E,)), xs)
  et = lambda x: _flat(jnp.swapaxes(x, 0, 1), 1)  # [T, E, X] -> [E * T, X]
  m_ids, m_mask = et(m_ids), et(m_mask)
  log_q = text_mf.summary_logprobs(model, params[PARAMS.mf_lm], et(w_ids), et(w_mask), m_ids, m_mask).reshape(E, T)
  prior = (jax.lax.stop_gradient(params[PARAMS.prior]) if PARAMS.prior in params
           else text_mf.prior_params(params[PARAMS.mf_lm]))
  log_p0 = text_mf.summary_logprobs(model, prior,
                                    *text_mf.prior_prompt(spec, E * T), m_ids, m_mask).reshape(E, T)

  scored = subsample_agents(batch, k_a, agents)
  b = scored["agent_mask"].shape[2]
  ctx_ids, ctx_mask = text_mf.policy_context(spec, et(read[0]), et(read[1]))  # [E * T, C]: m_{t-1} at step t
  rep = lambda x: _per_agent_rows(x.reshape(E, T, -1), b)
  prompt_ids, prompt_mask = with_context(rep(ctx_ids), rep(ctx_mask), _flat(scored["prompt_ids"], 1),
                                         _flat(scored["prompt_mask"], 1))
  logp = action_logprobs(model, params[PARAMS.lm], prompt_ids, prompt_mask, _flat(scored["action_ids"], 1),
                         _flat(scored["action_mask"], 1),
                         shared=shared_tokens(topic_len, ctx_ids.shape[-1], share_prefix), group=b)
  relevance, tokens = _token_nll(logp, scored)

  w = (scored["action_mask"].astype(jnp.float32) * scored["agent_mask"][..., None]).reshape(E, T, -1)
  lp_step = (logp.reshape(E, T, -1) * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)  # [E, T] mean per real token
  written = batch["agent_mask"].any(-1)  # [E, T]: step t wrote a summary
  rewarded = written[:, :-1] & (w.sum(-1)[:, 1:] > 0)  # ... that step t+1 reads with real actions to score
  info = log_q - log_p0
  compression = (info * written).sum() / jnp.maximum(written.sum(), 1.0)
  reward = jax.lax.stop_gradient(lp_step[:, 1:] - beta * info[:, :-1])
  advantage = (reward - _leave_one_out(reward, rewarded)) * rewarded
  surrogate = relevance - (advantage * log_q[:, :-1]).sum() / jnp.maximum(rewarded.sum(), 1.0)
  value = relevance + beta * compression
  loss = surrogate + jax.lax.stop_gradient(value - surrogate)  # the value, with the surrogate's gradient
  aux = {"loss": loss, "relevance": relevance, "compression": compression,
         "compression_bits": compression / math.log(2.0), "beta": jnp.asarray(beta, jnp.float32), "tokens": tokens,
         "summary_tokens": (m_mask.reshape(E, T, S) * written[..., None]).sum() / jnp.maximum(written.sum(), 1)}
  return loss, aux


def policy_loss(*, model: Decoder, params, batch, rng, context: ContextSpec | None = None,
                context_kinds=(0,), agents: int = 0, topic_len: int = 0, share_prefix: bool = True):
  """Policy-only NLL of the real actions (the `sft` mode and LM pre-training).

  With `context`, each event's prompts carry a population context of a kind
  drawn from `context_kinds` (ids in `mfjax.rollout.context.KINDS`), so that
  one model learns to read the `recent` / `popular` prompts. params = {"lm": ...};
  `agents` > 0 scores that many random agents per step; `topic_len` as in `mean_field_path`. The context (and
  the topic block) is computed once for a step's agents; share_prefix=False computes every prompt whole."""
  lm = params[PARAMS.lm]
  k_kind, k_a = jax.random.split(rng)
  scored = subsample_agents(batch, k_a, agents)
  prompt_ids, prompt_mask = _flat(scored["prompt_ids"], 1), _flat(scored["prompt_mask"], 1)
  E, T, B = scored["agent_mask"].shape
  context_len = 0
  if context is not None:
    kinds = jnp.asarray(context_kinds, jnp.int32)[jax.random.randint(k_kind, (E,), 0, len(context_kinds))]
    ctx_ids, ctx_mask = jax.vmap(lambda *a: step_contexts(context, *a))(
        kinds, batch["action_ids"], batch["action_mask"], batch["agent_mask"], batch["parent"])  # [E, T, C]
    prompt_ids, prompt_mask = with_context(_per_agent_rows(ctx_ids, B), _per_agent_rows(ctx_mask, B), prompt_ids,
                                           prompt_mask)
    context_len = ctx_ids.shape[-1]
  shared = shared_tokens(topic_len, context_len, share_prefix)
  logp = action_logprobs(model, lm, prompt_ids, prompt_mask, _flat(scored["action_ids"], 1),
                         _flat(scored["action_mask"], 1), shared=shared, group=B)
  nll, tokens = _token_nll(logp, scored)
  return nll, {"loss": nll, "relevance": nll, "tokens": tokens}
