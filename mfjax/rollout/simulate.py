"""Rollouts: one jitted `lax.scan` over the T steps of a batch of events.

The carry (`RolloutState`) holds the PRNG key, the state of the method's
population signal (`mfjax.rollout.signals`: init, read, update), and only
that one: the quoting baselines' history (which slots hold an action, whether
the real one, its repost count), the latent mean field's state, the text mean
field's latest summary, or nothing; and the output buffers ([E, T, ...], step t
written in place at step t: no stacked copy, so the memory beyond the output
does not grow with T, but for the quoting baselines' three numbers a slot).
At step t, for every event at once:

  1. the key splits into (next key, k_m, k_s); the method's input is the prompt
     (topic + state) and what the signal reads (`read`): the population context
     quoted from the history (`recent`, `popular`) or the latest summary
     (`mf_text`), or the mean field m_{t-1} sampled from q with k_m and read as
     K prefix vectors (`mf`);
  2. the log-probabilities of the real actions of step t under that input
     (teacher-forced: the NLL the method assigns to what really happened);
  3. B actions sampled with k_s by the KV-cache sampler from the same input (2
     and 3 share one pass over the input: `sampling.score_and_generate`);
  With an attribute-conditioned `mf` (`RolloutSpec.tags`), each agent first
  draws its joint category from the population head (`MeanFieldEncoder.class_logits`
  on m_{t-1} and its state, with a key folded from k_s) and the sampler writes
  the action from [prompt | the category's tag]; the real action is scored
  under its own category's tag, plus the head's log-probability of that category
  (on its first token: the action's total is log h(c*) + log pi(a* | c*)).
  With the writer's channel (`RolloutSpec.channel`, `mfjax.rollout.channel`) the
  tag is drawn so that the labelled actions follow the head's distribution.
  4. the step's actions enter the signal (`update`): the real ones during
     warm-up (t < warmup) and those of `forced` agents (an intervention's
     injected actions, `mfjax.data.intervention`), the sampled ones otherwise;
     the mean field is updated from them (with `category_features`, from their
     categories too: the real labels, or the classes the agents drew, or with a
     channel the classes the labeler would read), or the writer LM, params["mf_lm"],
     writes the next summary from them and the latest one (sampled with k_m).

The step writes one step of `RolloutOutput` (arrays [E, ...]) into the carry's buffers.

Methods: `state` and `sft` (prompt only: the base and the fine-tuned policy),
`recent`, `popular` (context), `mf` (latent mean field), `mf_text` (the paper's
text mean field, `mfjax.meanfield.text`). `recent`/`popular` share one
compilation (the kind is traced), as do `state`/`sft`.

Letters: E events, T steps, B agents, P prompt, A action, C context, N = T * B
history slots, K slots, D width, S summary tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from mfjax import sampling
from mfjax.meanfield import text as text_mf
from mfjax.meanfield.encoder import MeanFieldEncoder, agent_numbers_of, anchor_counts, given_anchor
from mfjax.model.transformer import Decoder, unrolled
from mfjax.parallel.mesh import RULES, batch_sharding, check_events, replicated, with_activation_sharding
from mfjax.parallel.state import abstract_policy, place, policy_shardings
from mfjax.params_keys import PARAMS
from mfjax.policy import (AttributeTags, action_logprobs, head_state, per_agent, shared_tokens, with_context,
                          with_tags)
from mfjax.rollout import channel as writer_channel
from mfjax.rollout.context import KINDS, NONE, ContextSpec
from mfjax.rollout.signals import (Inputs, LatentMeanField, NoSignal, PopulationSignal, QuotedHistory, Reading, Step,
                                   TextMeanField)

METHODS = ("state", "recent", "popular", "sft", "mf", "mf_text", "blind")
BATCH_KEYS = ("prompt_ids", "prompt_mask", "action_ids", "action_mask", "agent_mask", "parent")


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
  """The static part of a rollout (a jit static argument)."""

  use_context: bool  # quote the history in the prompt (recent / popular)
  use_mf: bool  # read the latent mean field (mf)
  max_new_tokens: int  # A: sampled action length (<eos> included)
  top_k: int = 0
  top_p: float = 1.0
  context: Optional[ContextSpec] = None
  score_real: bool = True  # compute the real actions' log-probs (the NLL column); False leaves zeros
  text: Optional[text_mf.TextMFSpec] = None  # read and write the text mean field (mf_text)
  tags: Optional[AttributeTags] = None  # mf: draw each agent's category from the population head, write given it
  utf8: Optional[sampling.ValidUtf8] = None  # sample only actions that decode as valid UTF-8
  # with tags: after the warm-up the head reads the m it read at the first step after it (the real warm-up's
  # mean field), not the m of its own later draws; the policy and the mean field run on as before
  head_warmup_m: bool = False
  # with tags: the temperature of the text written given the drawn category (None: the rollout's temperature,
  # at which the head still draws)
  writer_temperature: Optional[float] = None
  # the batch's prompts start with the event's topic block of this many tokens (`BatchConfig.topic_len`): with the
  # step's mean field and context before it, computed once for the step's agents (`mfjax.model.shared_extend`)
  topic_len: int = 0
  # the quoted context and the topic block computed once for a step's agents; False: every agent's prompt whole
  # (the same rollout; the reference of the exactness tests and benchmarks)
  share_prefix: bool = True
  # with tags: the writer's channel W [C, C] as nested tuples (`mfjax.rollout.channel`): the tag is drawn so that
  # the labelled actions follow the head (argmin_q KL(p || q W)) and the mean field reads a class drawn from W[tag]
  channel: Optional[tuple] = None
  # with tags (the method 'blind'): the attribute-conditioned policy blind to the population: no mean field is
  # kept; at every step the head and the writer read m drawn from the prior N(0, I), and the head's anchor knows
  # nothing of the event (a counted anchor: no counts; a given one: the batch's `anchor`, which the caller makes
  # blind)
  blind: bool = False


@flax.struct.dataclass
class RolloutState:
  """Carry of the scan over steps."""

  rng: jax.Array  # PRNG key, split at every step
  signal: Any  # the population signal's state after the steps so far ([E, ...] arrays; () for none)
  out: Any  # RolloutOutput [E, T, ...]: the steps so far written, zeros after
  head_m: Any = ()  # [E, K, D] the m the head reads after the warm-up (`RolloutSpec.head_warmup_m`; () without)


@flax.struct.dataclass
class RolloutOutput:
  """A rollout's outputs; the scan's step writes one step of them ([E, ...], no T axis) into the carry's."""

  tokens: jax.Array  # [E, T, B, A] int32 sampled actions (pad after eos; warm-up and forced agents sample too)
  mask: jax.Array  # [E, T, B, A] bool: sampled token is real (up to and including eos)
  real_logprobs: jax.Array  # [E, T, B, A] float32 log-prob of each real action token under the method (0 without score_real)
  mf_kl: jax.Array  # [E, T] KL(q(m_{t-1}) || N(0, I)) of the mean field read at step t (0 without one)
  mf_mu: jax.Array  # [E, T, K, D] its posterior mean ([E, T, 1, 1] zeros without one)
  mf_logvar: jax.Array  # [E, T, K, D] its posterior log-variance
  summary: jax.Array  # [E, T, S] int32: the text mean field's summary written after step t ([E, T, 1] without one)
  summary_mask: jax.Array  # [E, T, S] bool: its tokens up to and including <eos>
  category: jax.Array  # [E, T, B] int32: the category each agent drew (`RolloutSpec.tags`; -1 without)


def _signal(spec: RolloutSpec, encoder: Optional[MeanFieldEncoder]) -> PopulationSignal:
  """The population signal a spec reads."""
  if spec.use_mf:
    return LatentMeanField(encoder)
  if spec.text is not None:
    return TextMeanField(spec.text)
  if spec.use_context:
    return QuotedHistory(spec.context)
  return NoSignal()


def _simulate_impl(model: Decoder, encoder: Optional[MeanFieldEncoder], params, batch, rng, warmup, context_kind,
              temperature, *, spec: RolloutSpec) -> RolloutOutput:
  E, T, B, A = batch["action_ids"].shape
  if A != spec.max_new_tokens:
    raise ValueError(f"action length {A} != spec.max_new_tokens {spec.max_new_tokens}")
  signal = _signal(spec, encoder)
  # the LMs unrolled once here, not inside the scan over steps (at every step)
  lms = {k: unrolled(model, params[k]) for k in (PARAMS.lm, PARAMS.mf_lm) if k in params}
  model, lm = lms[PARAMS.lm]
  cfg = model.cfg
  real_actions = ((batch["action_ids"].reshape(E, T * B, A), batch["action_mask"].reshape(E, T * B, A))
                  if spec.use_context else None)  # what the quoted history quotes of the real actions
  inputs = Inputs(model=model, params={**params, **{k: p for k, (_, p) in lms.items()}}, kind=context_kind,
                  real_actions=real_actions, temperature=temperature, top_k=spec.top_k, top_p=spec.top_p,
                  topic_len=spec.topic_len)
  flat = lambda x: x.reshape(E * B, *x.shape[2:])
  forced = batch["forced"] if "forced" in batch else jnp.zeros((E, T, B), bool)
  categories = batch["category"] if "category" in batch else jnp.zeros((E, T, B), jnp.int32)

  # an anchored head's class counts [E, T, C] (the warm-up's real classes: `anchor_counts`), or its given
  # per-agent anchor [E, T, B, C] (`anchor_given`)
  anchors = None
  if spec.tags is not None and encoder.cfg.anchor_steps:
    anchors = given_anchor(batch) if encoder.cfg.anchor_given else anchor_counts(
        categories, batch["agent_mask"], encoder.cfg.anchor_steps, encoder.cfg.classes)
    if spec.blind and not encoder.cfg.anchor_given:  # no class counted: the anchor's learned prior alone
      anchors = jnp.zeros_like(anchors)
  # a head that reads the agents' states as numbers: [E, T, B, F]
  numbers = agent_numbers_of(encoder.cfg, batch) if spec.tags is not None else None
  steps_of = (batch["prompt_ids"], batch["prompt_mask"], batch["action_ids"], batch["action_mask"],
              batch["agent_mask"], batch["parent"], forced.astype(bool), categories.astype(jnp.int32))

  def one_step(rng, signal_state, past, t, head_m) -> tuple[jax.Array, Any, RolloutOutput, Any]:
    """(next key, the signal's next state, step t's outputs [E, ...], the head's m after the warm-up);
    past: the (tokens, mask) buffers. Step t's inputs are read from the batch in place (a [T, E, ...]
    copy of it would grow with T)."""
    prompt_ids, prompt_mask, act_ids, act_mask, agent_mask, parent, forced_EB, category = (
        jax.lax.dynamic_index_in_dim(x, t, 1, keepdims=False) for x in steps_of)
    rng, k_m, k_s = jax.random.split(rng, 3)
    read = signal.read(signal_state, inputs, k_m, past)
    if spec.blind:  # m from the prior, a fresh draw every step
      read = Reading(prefix=jax.random.normal(k_m, (E, encoder.cfg.slots, encoder.cfg.width), jnp.float32))
    in_ids, in_mask = flat(prompt_ids), flat(prompt_mask)
    context_len = 0
    if read.context is not None:
      c_ids, c_mask = read.context
      in_ids, in_mask = with_context(per_agent(c_ids, B), per_agent(c_mask, B), in_ids, in_mask)
      context_len = c_ids.shape[-1]
    # [mean field | context | topic]: alike for the step's B agents
    shared = shared_tokens(spec.topic_len, context_len, spec.share_prefix)
    prefix = per_agent(read.prefix, B) if read.prefix is not None else None
    once = dict(shared=shared, group=B)
    sample = dict(rng=k_s, max_new_tokens=A, temperature=temperature, top_k=spec.top_k, top_p=spec.top_p,
                  eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id, prefix_embeds=prefix, utf8=spec.utf8, **once)
    drawn = read_class = jnp.full((E * B,), -1, jnp.int32)
    if spec.tags is not None:  # the category from the head, then the action given its tag
      state_NxD = head_state(model, lm, in_ids, in_mask, encoder.cfg.state_tail,
                             None if numbers is None else flat(jax.lax.dynamic_index_in_dim(numbers, t, 1, False)))
      anchor = None
      if anchors is not None:
        anchor_t = jax.lax.dynamic_index_in_dim(anchors, t, 1, keepdims=False)
        anchor = flat(anchor_t) if encoder.cfg.anchor_given else per_agent(anchor_t, B)
      head_prefix = prefix
      if spec.head_warmup_m:  # m of step min(t, warmup): the warm-up's real actions, never the head's own draws
        head_m = jnp.where(t <= warmup, read.prefix.astype(head_m.dtype), head_m)
        head_prefix = per_agent(head_m.astype(read.prefix.dtype), B)
      logits = encoder.apply({"params": params[PARAMS.mf]}, head_prefix, state_NxD, anchor,
                             method=MeanFieldEncoder.class_logits)
      if spec.channel is None:
        drawn = sampling.sample_token(logits, jax.random.fold_in(k_s, 1), temperature=temperature)[0]
        read_class = drawn
      else:  # the tag drawn through the writer's channel; the mean field reads what the labeler would
        drawn, read_class = writer_channel.draw(logits, jnp.asarray(spec.channel, jnp.float32),
                                                jax.random.fold_in(k_s, 1), jax.random.fold_in(k_s, 2), temperature)
      if spec.writer_temperature is not None:
        sample["temperature"] = jnp.float32(spec.writer_temperature)
      out = sampling.generate(model, lm, *with_tags(in_ids, in_mask, spec.tags, drawn), **sample)
      real_lp = jnp.zeros((E * B, A), jnp.float32)
      if spec.score_real:
        real_c = jnp.maximum(flat(category), 0)
        real_lp = action_logprobs(model, lm, *with_tags(in_ids, in_mask, spec.tags, real_c), flat(act_ids),
                                  flat(act_mask), prefix_NxKxD=prefix, **once)
        head_lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), real_c[:, None], -1)[:, 0]
        real_lp = real_lp.at[:, 0].add(head_lp * flat(act_mask)[:, 0])
    elif spec.score_real:  # one pass over the input scores the real actions and fills the sampler's cache
      real_lp, out = sampling.score_and_generate(model, lm, in_ids, in_mask, flat(act_ids), flat(act_mask), **sample)
    else:
      real_lp, out = jnp.zeros((E * B, A), jnp.float32), sampling.generate(model, lm, in_ids, in_mask, **sample)
    s_ids, s_mask = out.tokens.reshape(E, B, A), out.mask.reshape(E, B, A)
    take_real_EB = (t < warmup) | forced_EB  # the batch's action enters the signal, not the sampled one
    ch_ids = jnp.where(take_real_EB[..., None], act_ids, s_ids)
    ch_mask = jnp.where(take_real_EB[..., None], act_mask, s_mask.astype(act_mask.dtype))
    taken = Step(t=t, prompt_ids=prompt_ids, prompt_mask=prompt_mask, action_ids=ch_ids, action_mask=ch_mask,
                 agent_mask=agent_mask, parent=parent, real=take_real_EB,
                 category=jnp.where(take_real_EB, category, read_class.reshape(E, B)))
    state, written = signal.update(signal_state, inputs, taken, k_m)
    q = read.posterior  # RolloutOutput's zeros without a latent mean field, or without a text one
    zeros = lambda *shape, dtype=jnp.float32: jnp.zeros((E, *shape), dtype)
    kl, mu, logvar = (zeros(), zeros(1, 1), zeros(1, 1)) if q is None else (q.kl_to_standard_normal(), q.mu, q.logvar)
    summary, summary_mask = (zeros(1, dtype=jnp.int32), zeros(1, dtype=bool)) if written is None else written
    out = RolloutOutput(tokens=s_ids, mask=s_mask, real_logprobs=real_lp.reshape(E, B, A), mf_kl=kl, mf_mu=mu,
                        mf_logvar=logvar, summary=summary, summary_mask=summary_mask,
                        category=drawn.reshape(E, B))
    return rng, state, out, head_m

  def step(carry: RolloutState, t) -> tuple[RolloutState, None]:
    rng, state, out, head_m = one_step(carry.rng, carry.signal, (carry.out.tokens, carry.out.mask), t, carry.head_m)
    put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), t, 1)
    return RolloutState(rng=rng, signal=state, out=jax.tree.map(put, carry.out, out), head_m=head_m), None

  signal_state = signal.init(E, T, B, A)
  tokens = (jnp.zeros((E, T, B, A), jnp.int32), jnp.zeros((E, T, B, A), bool))
  head_m = (jnp.zeros((E, encoder.cfg.slots, encoder.cfg.width), jnp.float32)
            if spec.tags is not None and spec.head_warmup_m else ())
  # the output buffers [E, T, ...]: one step's outputs (their shapes, traced abstractly) with a T axis
  shapes = jax.eval_shape(lambda: one_step(rng, signal_state, tokens, jnp.int32(0), head_m)[2])
  out = jax.tree.map(lambda x: jnp.zeros((x.shape[0], T, *x.shape[1:]), x.dtype), shapes)
  carry, _ = jax.lax.scan(step, RolloutState(rng=rng, signal=signal_state, out=out, head_m=head_m), jnp.arange(T))
  return carry.out


_simulate = jax.jit(_simulate_impl, static_argnames=("model", "encoder", "spec"))


def _donating_impl(model, encoder, params, action_ids, rest, *scalars, spec: RolloutSpec) -> RolloutOutput:
  """`_simulate_impl` with the real actions as their own (donated) argument: the
  only batch array an output can reuse (same shape and dtype as `tokens`)."""
  return _simulate_impl(model, encoder, params, {**rest, "action_ids": action_ids}, *scalars, spec=spec)


def _param_keys(spec: RolloutSpec) -> tuple:
  """The parameter subtrees a rollout reads."""
  return ((PARAMS.lm, PARAMS.mf) if spec.use_mf or spec.blind else (PARAMS.lm, PARAMS.mf_lm) if spec.text is not None
          else (PARAMS.lm,))


@functools.lru_cache(maxsize=32)
def _sharded_simulate(model: Decoder, encoder: Optional[MeanFieldEncoder], spec: RolloutSpec, mesh, rules,
                      donate: bool = False, pin_activations: bool = True):
  """(`_simulate` jitted for `mesh` with in/out shardings, param shardings):
  params by the rules, batch and outputs split over events, scalars replicated,
  the LM's activations pinned by the rules (`pin_activations`).
  donate: called as fn(params, action_ids, rest_of_batch, *scalars), with the
  action ids' buffer donated to the sampled tokens."""
  keys = _param_keys(spec)
  p_sh = policy_shardings(model, encoder, abstract_policy(model, encoder, keys), mesh, rules)
  ev, rep = batch_sharding(mesh), replicated(mesh)
  impl = functools.partial(_donating_impl if donate else _simulate_impl, model, encoder, spec=spec)
  fn = with_activation_sharding(impl, mesh if pin_activations else None, rules)
  if donate:
    fn = jax.jit(fn, in_shardings=(p_sh, ev, ev, rep, rep, rep, rep), out_shardings=ev, donate_argnums=(1,))
  else:
    fn = jax.jit(fn, in_shardings=(p_sh, ev, rep, rep, rep, rep), out_shardings=ev)
  return fn, p_sh


def method_spec(method: str, *, max_new_tokens: int, context: Optional[ContextSpec] = None, top_k: int = 0,
                top_p: float = 1.0, score_real: bool = True, text: Optional[text_mf.TextMFSpec] = None,
                tags: Optional[AttributeTags] = None,
                utf8: Optional[sampling.ValidUtf8] = None, head_warmup_m: bool = False,
                writer_temperature: Optional[float] = None, topic_len: int = 0,
                share_prefix: bool = True, channel=None) -> tuple[RolloutSpec, int]:
  """(static spec, traced context kind) of a method; `tags` makes `mf` attribute-conditioned (other
  methods ignore them but `blind`, which needs them; `head_warmup_m` (mf): its head reads the warm-up's mean field
  after it; `writer_temperature`: its text's temperature, not None; `channel`: the writer's channel [C, C], its
  tags drawn through it); `utf8`: every method samples valid UTF-8 only."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
  if method == "blind" and tags is None:
    raise ValueError("method 'blind' is the attribute-conditioned policy blind to the population: it needs the "
                     "tags (mf.attributes=True)")
  tagged = method in ("mf", "blind") and tags is not None
  use_context = method in ("recent", "popular")
  if use_context and context is None:
    raise ValueError(f"method {method!r} needs a ContextSpec")
  if method == "mf_text" and text is None:
    raise ValueError("method 'mf_text' needs a TextMFSpec (text=)")
  spec = RolloutSpec(use_context=use_context, use_mf=method == "mf", max_new_tokens=int(max_new_tokens),
                     top_k=int(top_k), top_p=float(top_p), context=context if use_context else None,
                     score_real=bool(score_real), text=text if method == "mf_text" else None,
                     tags=tags if tagged else None, utf8=utf8,
                     head_warmup_m=bool(head_warmup_m) and method == "mf" and tags is not None,
                     writer_temperature=(float(writer_temperature) if writer_temperature is not None
                                         and tagged else None),
                     topic_len=int(topic_len), share_prefix=bool(share_prefix),
                     channel=writer_channel.as_static(channel) if channel is not None and tagged else None,
                     blind=method == "blind")
  return spec, KINDS.get(method, NONE)


def simulate(model: Decoder, params, batch: dict, *, method: str, rng, warmup: int, encoder=None,
             context: Optional[ContextSpec] = None, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, score_real: bool = True, mesh=None, rules=RULES,
             donate_batch: bool = False, pin_activations: bool = True,
             text: Optional[text_mf.TextMFSpec] = None, tags: Optional[AttributeTags] = None,
             utf8: Optional[sampling.ValidUtf8] = None, head_warmup_m: bool = False,
             writer_temperature: Optional[float] = None, topic_len: int = 0,
             share_prefix: bool = True, channel=None) -> RolloutOutput:
  """Roll out `method` over a batch of events (arrays [E, T, B, ...] as in
  `mfjax.ibtune.objective`). params = {"lm": ...} (+ "mf" for `mf`, + "mf_lm",
  the summary writer, for `mf_text`, whose token layout is `text`).
  Steps t < warmup take the real actions into the history; later steps their
  own samples, except for agents marked in the optional batch key `forced`
  ([E, T, B] bool: an intervention's agents, whose batch actions are taken as
  in warm-up). `tags` (`mf` only): the attribute-conditioned policy (module
  docstring), whose real actions are scored under the batch key `category`
  ([E, T, B] their joint categories). `utf8` (`sampling.ValidUtf8` of the
  tokenizer): the actions are sampled as valid UTF-8 only (the text mean field's
  summaries are not constrained). head_warmup_m (with `tags`): from the first step
  after the warm-up on, the head reads that step's m (the real warm-up's mean field)
  instead of each later step's, which holds the head's own earlier draws. writer_temperature (with
  `tags`): the temperature of the text written given the drawn categories, which the head draws at
  `temperature` (None: `temperature` for both). Jitted once per (model, encoder, shapes, spec). score_real=False
  skips scoring the real actions (pure simulation; real_logprobs are zeros). topic_len: the prompts' first
  `topic_len` tokens are the event's topic, alike for all its agents (`mfjax.data.BatchConfig.topic_len`),
  computed once for a step's agents with the mean field and context before them (the same rollout), as the
  quoted context is without a topic block; share_prefix=False computes every agent's prompt whole.
  channel (with `tags`; [C, C], `mfjax.rollout.channel`): the writer's channel, P(the labeler reads class j | tag
  i): each tag is drawn so that the labelled actions follow the head, the mean field reads a class drawn from
  W[tag], and `category` holds the tags; temperature must then be > 0.
  method 'blind' (with `tags` and the encoder's head): the attribute-conditioned policy blind to the population,
  the ablation of `mf` that keeps everything but what the population tells: no mean field is kept, the head and
  the writer read m drawn from the prior N(0, I) at every step, and the head's anchor knows nothing of the event
  (a counted anchor counts no class; a given one is the batch's `anchor`, which the caller makes blind:
  `mfjax.evaluation.bounds.AgentAnchor.logprobs` of no labelled step).

  With a mesh, the events split over data x fsdp and the parameters (and, with
  `pin_activations`, the LM's activations) follow `rules`; outputs are global
  arrays split over events (`mfjax.parallel.state.to_host`).
  Batch arrays may be host arrays (one process) or global arrays
  (`mfjax.parallel.global_batch`, any number of processes). donate_batch (with a
  mesh): the batch's `action_ids` buffer is donated to the sampled tokens; the
  caller must not use that array again (the pipeline builds each batch afresh)."""
  spec, kind = method_spec(method, max_new_tokens=batch["action_ids"].shape[-1], context=context, top_k=top_k,
                           top_p=top_p, score_real=score_real, text=text, tags=tags, utf8=utf8,
                           head_warmup_m=head_warmup_m, writer_temperature=writer_temperature,
                           topic_len=topic_len, share_prefix=share_prefix, channel=channel)
  if (spec.use_mf or spec.blind) and (encoder is None or PARAMS.mf not in params):
    raise ValueError(f"method {method!r} needs the encoder and params['mf']")
  if spec.tags is not None and not encoder.cfg.classes:
    raise ValueError(f"an attribute-conditioned {method!r} (tags) needs the encoder's population head (classes > 0)")
  if spec.channel is not None and len(spec.channel) != encoder.cfg.classes:
    raise ValueError(f"the writer's channel is {len(spec.channel)} x {len(spec.channel)}; the population head "
                     f"draws {encoder.cfg.classes} classes")
  reads_categories = spec.use_mf and encoder.cfg.category_features
  if reads_categories and spec.tags is None:
    raise ValueError("a mean field that reads the actions' categories (category_features) needs the "
                     "attribute-conditioned 'mf' (tags): a sampled action's category is the class it drew")
  anchored = spec.tags is not None and encoder.cfg.anchor_steps
  if ((spec.tags is not None and spec.score_real) or reads_categories or anchored) and "category" not in batch:
    raise ValueError(f"this {method!r} needs batch['category'], the real actions' joint classes: an "
                     "attribute-conditioned 'mf' scores the real actions under them (score_real=False skips that), a "
                     "mean field with category_features reads them in warm-up and for forced agents, and an anchored "
                     "head counts those of its first anchor_steps steps")
  if spec.text is not None and PARAMS.mf_lm not in params:
    raise ValueError("method 'mf_text' needs params['mf_lm'] (the summary writer)")
  params = {k: params[k] for k in _param_keys(spec)}  # e.g. a text stage's frozen "prior" is not rolled out
  encoder = encoder if spec.use_mf or spec.blind else None
  scalars = (rng, jnp.int32(warmup), jnp.int32(kind), jnp.float32(temperature))
  keys = BATCH_KEYS + tuple(k for k in ("forced", "category", "numbers", "anchor") if k in batch)
  if "forced" in batch and tuple(batch["forced"].shape) != tuple(batch["agent_mask"].shape):
    raise ValueError(f"batch['forced'] has shape {tuple(batch['forced'].shape)}; it marks agents: "
                     f"[E, T, B] = {tuple(batch['agent_mask'].shape)}, as batch['agent_mask']")
  if mesh is None:
    arrays = {k: jnp.asarray(batch[k]) for k in keys}
    return _simulate(model, encoder, params, arrays, *scalars, spec=spec)
  check_events(batch["agent_mask"].shape[0], mesh, "simulate")
  fn, p_sh = _sharded_simulate(model, encoder, spec, mesh, tuple(rules), bool(donate_batch), bool(pin_activations))
  ev = batch_sharding(mesh)
  arrays = {k: batch[k] if isinstance(batch[k], jax.Array) and not batch[k].is_fully_addressable
            else jax.device_put(batch[k], ev) for k in keys}
  if donate_batch:
    return fn(place(params, p_sh), arrays.pop("action_ids"), arrays, *scalars)
  return fn(place(params, p_sh), arrays, *scalars)
