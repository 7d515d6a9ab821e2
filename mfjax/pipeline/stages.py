"""The training stages of a run (`RunPlan.stages`), each resumable in its own folder.

`base` gives a from-scratch policy the prompt formats of every method (contexts of
kind none / recent / popular, drawn per event); `sft` fine-tunes it on state-only
prompts (no m); `mf` (and each `mf_beta<b>` of an IB sweep) trains it with the
mean-field encoder by IB-Tune; `mf_text` trains it with the text mean field's
writer (the paper's own mean field, IB-Tune with a score-function gradient). A
stage's loss is one entry of `LOSSES`; stages of one loss and config section (an
IB sweep's) share one compiled step, their beta an argument of it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mfjax.ibtune import (beta_schedule, fit, head_loss, ib_tune_loss, jit_train_step, make_optimizer, policy_loss,
                          sharded_state, state_shardings, teacher_forced_posteriors, text_ib_tune_loss,
                          trainable_labels, trained_params, trained_steps)
from mfjax.meanfield import MeanFieldEncoder, TextMFSpec, init_encoder
from mfjax.model import Decoder, ModelConfig, hf
from mfjax.model.lora import add_lora
from mfjax.parallel import global_batch, init_sharded, make_mesh
from mfjax.parallel.mesh import check_events, process_rows, replicated, with_activation_sharding
from mfjax.parallel.state import place, policy_shardings
from mfjax.params_keys import PARAMS
from mfjax.pipeline.data import Data
from mfjax.pipeline_config import RunPlan, Stage
from mfjax.rollout import ContextSpec
from mfjax.rollout.context import KINDS
from mfjax.runs import log
from mfjax.workdir import stage_dir


def _model_config(plan: RunPlan, tok, ctx: ContextSpec, text: TextMFSpec, tags) -> ModelConfig:
  b = plan.data.batch
  longest = plan.model.mf_fields["slots"] + ctx.length + b.prompt_len + b.action_len
  if tags is not None:  # the attribute-conditioned policy's input: m, prompt, tag, action
    longest = max(longest, plan.model.mf_fields["slots"] + b.prompt_len + tags.length + b.action_len)
  if "mf_text" in plan.methods:  # the policy's input with a summary, and the writer's prompt + summary
    longest = max(longest, text.context_len + b.prompt_len + b.action_len,
                  text.writer_len + text.summary_len)
  return plan.model.scratch_config(len(tok), max_position_embeddings=max(longest, 64), bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def mesh_from(plan: RunPlan):
  """The (data, fsdp, tensor) mesh of the run over all devices."""
  mesh = make_mesh(plan.mesh)
  log(f"[mesh] {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es)")
  return mesh


def check_mesh(plan: RunPlan, mesh, *, rollouts: bool) -> None:
  """Every batch the run splits over the mesh divides it, checked before anything is written (each
  stage and the rollouts check theirs again as they start)."""
  for s in plan.stages:
    check_events(s.batch_events, mesh, f"{s.section}.batch_events")
  if rollouts:
    check_events(min(plan.sampling.batch_events, plan.data.eval_events), mesh,
                 "rollout.batch_events (or data.eval_events, if fewer)")


# ----------------------------------------------------------------------------- losses


@dataclasses.dataclass(frozen=True)
class LossInputs:
  """What a stage's loss closes over."""

  plan: RunPlan  # its training settings (IB-Tune's schedule, the text mean field's beta) and model (lm_grad)
  model: Decoder
  encoder: MeanFieldEncoder
  data: Data


def _base_loss(x: LossInputs, agents: int):
  kinds = tuple(KINDS[k] for k in ("none", "recent", "popular"))
  return lambda params, batch, rng, step: policy_loss(model=x.model, params=params, batch=batch, rng=rng,
                                                      context=x.data.context, context_kinds=kinds, agents=agents,
                                                      topic_len=x.plan.data.batch.topic_len)


def _policy_loss(x: LossInputs, agents: int):
  return lambda params, batch, rng, step: policy_loss(model=x.model, params=params, batch=batch, rng=rng,
                                                      agents=agents, topic_len=x.plan.data.batch.topic_len)


def _ib_loss(x: LossInputs, agents: int):
  t = x.plan.training
  return lambda params, batch, rng, step, beta, population_weight: ib_tune_loss(
      model=x.model, encoder=x.encoder, params=params, batch=batch, rng=rng, remat=t.ib_remat, agents=agents,
      beta=beta_schedule(beta, t.ib_schedule, t.ib_warmup)(step), lm_grad=x.plan.model.lm_grad,
      population_weight=population_weight, tags=x.data.tags, drawn=t.drawn_categories, drawn_after=t.drawn_after,
      topic_len=x.plan.data.batch.topic_len)


def _text_ib_loss(x: LossInputs, agents: int):
  return lambda params, batch, rng, step: text_ib_tune_loss(model=x.model, spec=x.data.text, params=params,
                                                            batch=batch, rng=rng, beta=x.plan.training.text_beta,
                                                            agents=agents, topic_len=x.plan.data.batch.topic_len)


def _head_loss(x: LossInputs, agents: int):
  return lambda params, batch, rng, step: head_loss(model=x.model, encoder=x.encoder, params=params, batch=batch,
                                                    rng=rng)


# Stage.loss -> (inputs, agents scored per step) -> loss_fn(params, batch, rng, step, **hparams) -> (loss, aux);
# an ib loss takes its beta and population weight as hparams, so that one compiled step serves a whole sweep
LOSSES = {"base": _base_loss, "policy": _policy_loss, "ib": _ib_loss, "head": _head_loss, "text_ib": _text_ib_loss}


# ----------------------------------------------------------------------------- training


def _val_eval(loss_fn, data: dict, events: int, step: int, mesh, pin_activations: bool = True):
  """(params, hparams) -> token-weighted mean of the loss terms over the validation events (fixed rng),
  the LM's activations pinned on `mesh` as in training (`pin_activations`); hparams as in `train_step`."""
  n = len(data["agent_mask"]) // events
  if n == 0:
    return None
  rows = process_rows(events)
  chunks = [global_batch({k: v[i * events:(i + 1) * events][rows] for k, v in data.items()}, mesh) for i in range(n)]

  def validation_terms(params, batch, hparams):
    return loss_fn(params=params, batch=batch, rng=jax.random.PRNGKey(0), step=jnp.int32(step), **hparams)[1]

  aux_fn = jax.jit(with_activation_sharding(validation_terms, mesh if pin_activations else None))

  def run(params, hparams):
    terms = [jax.device_get(aux_fn(params, c, hparams)) for c in chunks]
    w = np.array([t["tokens"] for t in terms])
    return {k: float(np.sum([t[k] * wi for t, wi in zip(terms, w)]) / w.sum()) for k in terms[0] if k != "tokens"}

  return run


@dataclasses.dataclass
class _StageFns:
  """A stage's optimizer and jitted train and validation steps. Stages given the same one
  (an IB sweep's: same loss, section and parameter shapes, hparams differing) compile once."""
  tx: optax.GradientTransformation
  shardings: object  # of the parameters
  step: Callable  # (state, batch, rng, hparams) -> (state, metrics)
  val: Optional[Callable]  # (params, hparams) -> {term: float}
  about: str  # what trains, for the log


def _stage_fns(stage: Stage, inputs: LossInputs, *, params, mesh) -> _StageFns:
  """For training `stage` from parameters shaped like `params`: training scores stage.agents
  agents per step, validation all of them. The state lives on `mesh` (parameters by the
  sharding rules, batches split over events)."""
  plan, make_loss = inputs.plan, LOSSES[stage.loss]
  check_events(stage.batch_events, mesh, f"{stage.section}.batch_events")
  tx = make_optimizer(params, trainable=stage.trainable, lr=stage.lr, steps=stage.steps, warmup=stage.warmup,
                      weight_decay=plan.training.weight_decay)
  encoder = inputs.encoder if PARAMS.mf in params else None
  shardings = policy_shardings(inputs.model, encoder, params, mesh)
  labels = trainable_labels(params, stage.trainable)
  pin = plan.pin_activations
  step_fn = jit_train_step(loss_fn=make_loss(inputs, stage.agents), tx=tx, mesh=mesh, labels=labels,
                           pin_activations=pin, hparams=True,
                           state_shardings=state_shardings(params, tx, mesh=mesh, param_shardings=shardings))
  n_train = sum(int(x.size) for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)) if lab == "train")
  return _StageFns(tx, shardings, step_fn,
                   _val_eval(make_loss(inputs, 0), inputs.data.val, stage.batch_events, stage.steps, mesh, pin),
                   f"training {n_train:,} parameters ({stage.trainable}) for {stage.steps} steps, "
                   f"{stage.batch_events} events per step")


def _train(stage: Stage, fns: _StageFns, *, params, plan: RunPlan, data: Data, workdir: str, mesh):
  """Train (or resume) `stage` from `params` with `fns` (`_stage_fns`); an ib stage's beta and population
  weight go to its loss as traced hparams."""
  hparams = {} if stage.beta is None else {"beta": jnp.float32(stage.beta),
                                           "population_weight": jnp.float32(stage.population_weight)}
  state, _ = sharded_state(params, fns.tx, mesh=mesh, param_shardings=fns.shardings)
  state = fit(name=stage.name, workdir=stage_dir(workdir, stage.name), state=state,
              step_fn=lambda *a: fns.step(*a, hparams), data=data.train, batch_events=stage.batch_events,
              steps=stage.steps, seed=plan.seed, log_every=plan.training.log_every,
              ckpt_every=plan.training.ckpt_every, eval_every=plan.training.eval_every, eval_fn=None if fns.val is None else lambda p: fns.val(p, hparams),
              log=log, mesh=mesh, about=fns.about)
  return state.params


def _restored(stage: Stage, *, params, model: Decoder, encoder: MeanFieldEncoder, workdir: str, mesh) -> dict:
  """A finished stage's parameters alone, shaped like `params` and placed by the sharding rules."""
  shardings = policy_shardings(model, encoder if PARAMS.mf in params else None, params, mesh)
  return trained_params(name=stage.name, workdir=stage_dir(workdir, stage.name), steps=stage.steps, params=params,
                        shardings=shardings, log=log)


def _mean_field_of(inputs: LossInputs, *, events: int, mesh) -> Callable:
  """(params, arrays [E, T, B, ...], stage name) -> the arrays with the mean field the trained `params` read
  along each event's real history (`teacher_forced_posteriors`), computed `events` events at a time over the
  mesh (the last chunk wraps around: one static shape) and gathered on the host, with a progress line every
  30 s: what a head-only stage trains on."""
  rows = process_rows(events)
  fn = jax.jit(with_activation_sharding(
      lambda p, b: teacher_forced_posteriors(model=inputs.model, encoder=inputs.encoder, params=p, batch=b,
                                             topic_len=inputs.plan.data.batch.topic_len),
      mesh if inputs.plan.pin_activations else None), out_shardings=replicated(mesh))

  def run(params, arrays: dict, name: str) -> dict:
    E = len(arrays["agent_mask"])
    parts, n, t0, shown = [], -(-E // events), time.time(), time.time()
    for c in range(n):
      idx = np.arange(c * events, (c + 1) * events) % E
      parts.append(jax.device_get(fn(params, global_batch({k: v[idx][rows] for k, v in arrays.items()}, mesh))))
      if time.time() - shown > 30 and c + 1 < n:
        shown = time.time()
        rate = (c + 1) / (shown - t0)
        log(f"[{name}] mean field: {min((c + 1) * events, E)}/{E} events  eta {(n - c - 1) / rate:.0f}s")
    return {**arrays, **{k: np.concatenate([p[k] for p in parts])[:E] for k in parts[0]}}

  return run


def _train_head(stage: Stage, inputs: LossInputs, *, params, plan: RunPlan, data: Data, workdir: str, mesh):
  """The head-only stage (`mfjax.ibtune.head_loss`): the trained mean field is computed once over the
  training events (`stage.events` of them, a seeded draw, or all) and the validation events, then the
  population head alone trains on it (resumable like any stage; a finished one is only restored)."""
  if trained_steps(stage_dir(workdir, stage.name)) < stage.steps:
    t0 = time.time()
    with_mf = _mean_field_of(inputs, events=stage.batch_events, mesh=mesh)
    train = data.train
    E = len(train["agent_mask"])
    if 0 < stage.events < E:  # a seeded draw, in the data's order
      keep = np.sort(np.random.default_rng([plan.seed, E]).choice(E, stage.events, replace=False))
      train = {k: v[keep] for k, v in train.items()}
    data = dataclasses.replace(data, train=with_mf(params, train, stage.name),
                               val=with_mf(params, data.val, stage.name))
    log(f"[{stage.name}] the mf stage's mean field along {len(data.train['agent_mask'])} training and "
        f"{len(data.val['agent_mask'])} validation events ({time.time() - t0:.1f} s)")
  fns = _stage_fns(stage, dataclasses.replace(inputs, data=data), params=params, mesh=mesh)
  return _train(stage, fns, params=params, plan=plan, data=data, workdir=workdir, mesh=mesh)


@dataclasses.dataclass
class Trained:
  model: Decoder  # with LoRA adapters (fresh ones on the base params)
  encoder: MeanFieldEncoder
  params: dict  # stage name -> its params {PARAMS.lm: ...} (+ PARAMS.mf, ...); "base" for the baselines


def train(plan: RunPlan, workdir: str, data: Data, *, mesh, trained_only: bool = False) -> Trained:
  """Every stage of `plan` in order, resuming finished ones instantly. With `trained_only`
  (`load_trained`) each stage's parameters are restored alone, nothing is trained, compiled or
  written, and an unfinished stage is an error."""
  rng = jax.random.PRNGKey(plan.seed)
  where = {"plan": plan, "data": data, "workdir": workdir, "mesh": mesh}
  checkpoint = plan.model.checkpoint
  if checkpoint:
    # read on the host and cut per device: no device holds the whole model
    # another model's tokenizer is refused before the weights are read
    hf.check_tokenizer(data.tokenizer, hf.load_config(checkpoint), checkpoint, checkpoint)
    model, lm = hf.load_pretrained(checkpoint, dtype=plan.model.dtype, host=True, **plan.model.layer_fields)
    lm = place({PARAMS.lm: lm}, policy_shardings(model, None, {PARAMS.lm: lm}, mesh))[PARAMS.lm]
    log(f"[base] loaded {checkpoint}")
  else:
    model = Decoder(_model_config(plan, data.tokenizer, data.context, data.text, data.tags))
    lm, _ = init_sharded(lambda: model.init(jax.random.fold_in(rng, 1), jnp.zeros((1, 8), jnp.int32))["params"],
                         mesh)
    base, params = plan.stage("base"), {PARAMS.lm: lm}
    if trained_only:
      params = _restored(base, params=params, model=model, encoder=None, workdir=workdir, mesh=mesh)
    else:
      params = _train(base, _stage_fns(base, LossInputs(plan, model, None, data), params=params, mesh=mesh),
                      params=params, **where)
    lm = params[PARAMS.lm]
  model, lm = add_lora(model, lm, plan.lora, jax.random.fold_in(rng, 2))
  encoder = MeanFieldEncoder(plan.model.encoder(model.cfg.hidden_size))
  inputs = LossInputs(plan, model, encoder, data)
  out = {"base": {PARAMS.lm: lm}}
  initial, compiled = {}, {}  # per loss: the parameters every stage of it starts from, and its compiled steps

  def start(loss: str) -> dict:
    if loss not in initial:
      if loss == "ib":
        initial[loss] = {PARAMS.lm: lm, PARAMS.mf: init_encoder(encoder, jax.random.fold_in(rng, 3),
                                                                model.cfg.hidden_size)}
      elif loss == "text_ib":
        # the writer starts as the policy; its prior p0 is the base LM: its zeroed adapters with lora, a frozen
        # copy with full
        initial[loss] = {PARAMS.lm: lm, PARAMS.mf_lm: lm,
                         **({PARAMS.prior: lm} if plan.stage("mf_text").trainable == "full" else {})}
      else:
        initial[loss] = {PARAMS.lm: lm}
    return initial[loss]

  for stage in plan.stages:
    if stage.name == "base":
      continue
    params = out["mf"] if stage.loss == "head" else start(stage.loss)
    if trained_only:
      out[stage.name] = _restored(stage, params=params, model=model, encoder=encoder, workdir=workdir, mesh=mesh)
      continue
    if stage.loss == "head":  # from the trained mf stage, on the mean field it computes
      out[stage.name] = _train_head(stage, inputs, params=params, **where)
      continue
    key = (stage.loss, stage.section)  # an IB sweep's stages: one compile for every beta
    if key not in compiled:
      compiled[key] = _stage_fns(stage, inputs, params=params, mesh=mesh)
    out[stage.name] = _train(stage, compiled[key], params=params, **where)
  return Trained(model, encoder, out)


def load_trained(plan: RunPlan, workdir: str, data: Data, *, mesh) -> Trained:
  """The trained stages of the run in `workdir` (this run's, or --trained-from's), their parameters
  restored alone (`train` with trained_only)."""
  return train(plan, workdir, data, mesh=mesh, trained_only=True)
