"""The MF-LLM experiment: events -> tokenizer -> step tensors -> training
stages -> rollouts -> evaluation, every stage resumable from the workdir.

  workdir/config.json           the resolved config (a rerun must match it, but for parallel.* and ib.sweep)
  workdir/tokenizer/            trained on the training events (or the checkpoint's)
  workdir/base/                 pre-training from scratch (skipped with model.checkpoint)
  workdir/sft/, workdir/mf/     fine-tuning stages; mf_beta<b>/ for an IB sweep; mf_text/ (text mean field)
     checkpoints/ metrics.jsonl environment.jsonl (where each session of it trained: mfjax.runs.environment)
  workdir/rollouts/<method>_seed<s>.npz   sampled actions, real-action log-probs
  workdir/rollouts/<method>_intervened_seed<s>.npz   the same with intervention.text injected
  workdir/results.json, workdir/plots/*.png   (mfjax.evaluation.report)

Stages: `base` gives the policy the prompt formats of every method (contexts of
kind none / recent / popular, drawn per event); `sft` fine-tunes it on
state-only prompts (no m); `mf` trains it with the mean-field encoder by
IB-Tune; `mf_text` trains it with the text mean field's writer (the paper's
own mean field, IB-Tune with a score-function gradient). The baselines `state`,
`recent`, `popular` roll out the base policy, `sft`, `mf` and `mf_text` their own.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from mfjax.configs import ConfigError
from mfjax.data import (BatchConfig, StepBatch, UidActivity, action_text, agent_states, load_events, load_tokenizer,
                        make_step_batch, policy_prompt, step_texts, synthetic, train_tokenizer)
from mfjax.data.intervention import forced_mask, inject
from mfjax.ibtune import (beta_schedule, fit, ib_tune_loss, jit_train_step, make_optimizer, policy_loss, sharded_state,
                          state_shardings, text_ib_tune_loss, trainable_labels)
from mfjax.meanfield import MeanFieldEncoder, TextMFSpec, init_encoder
from mfjax.model import Decoder, ModelConfig, hf
from mfjax.model.lora import add_lora
from mfjax.rollout import ContextSpec, simulate
from mfjax.rollout.context import CONTEXT_HEADER, CONTEXT_SEP, KINDS
from mfjax.evaluation import plots
from mfjax.evaluation.report import check_rollouts, evaluate, make_labeler, rollout_path
from mfjax.parallel import MeshConfig, distributed, global_batch, init_sharded, make_mesh
from mfjax.parallel.mesh import check_events, process_rows, with_activation_sharding
from mfjax.parallel.state import place, policy_shardings, to_host
from mfjax.params_keys import PARAMS
from mfjax.pipeline_config import (EVAL_ONLY_KEYS, LAYOUT_KEYS, STAGE_SET_KEYS, check_config, check_data_choices,
                                   ib_stages, intervention_of, intervention_runs, layer_fields, lora_config, methods,
                                   mf_config, rollout_runs, scratch_model_config, sweep_stages, trained_stages)
from mfjax.runs import (COMPILE_CACHE_ENV, check_bound_to, check_trained_from, check_workdir, environment, log,
                        read_jsonl, record_trained_from, stage_environments)


@dataclasses.dataclass
class Data:
  """Everything the stages need, built once per process."""

  tokenizer: object
  context: ContextSpec
  train: dict  # arrays [E, T, B, ...]
  val: dict
  eval: StepBatch  # the events rollouts are scored on (texts kept for labelling)
  truth: Optional[object]  # synthetic.GroundTruth of the eval events, else None
  eval_split: str
  text: TextMFSpec  # the text mean field's token layout
  intervened: Optional[dict] = None  # with intervention.text: the eval arrays with it injected, and `forced`
  truth_intervened: Optional[object] = None  # synthetic: the world's GroundTruth of the intervened eval events
  # the reference simulators' inputs (`mfjax.evaluation.bounds`): the training events' action texts [N][T*B],
  # agent mask [N, T, B] and labels, and the eval events' labels
  references: Optional[dict] = None


def _world(cfg) -> synthetic.WorldConfig:
  d = cfg.data
  return synthetic.WorldConfig(steps=d.steps, agents_per_step=d.agents_per_step, **cfg.world.to_dict())


def data_files(d) -> dict:
  """{split: path} of the CED files a run reads (train, val, the eval split); FileNotFoundError naming
  the first one missing."""
  files = {s: os.path.join(d.path, f"{s}.jsonl.gz") for s in ("train", "val", d.eval_split)}
  for f in files.values():
    if not os.path.exists(f):
      raise FileNotFoundError(f"data.path: {f} not found (get the data with: python tools/download_data.py)")
  return files


def check_mesh(cfg, mesh, *, rollouts: bool) -> None:
  """Every batch the run splits over the mesh divides it, checked before anything is written (each
  stage and the rollouts check theirs again as they start)."""
  for section in dict.fromkeys(trained_stages(cfg).values()):
    check_events(cfg[section].batch_events, mesh, f"{section}.batch_events")
  if rollouts:
    check_events(min(cfg.rollout.batch_events, cfg.data.eval_events), mesh,
                 "rollout.batch_events (or data.eval_events, if fewer)")


def check_inputs(cfg) -> None:
  """What a run reads from outside its workdir, checked before anything is written there: the CED
  files, and a model checkpoint with a tokenizer that fits it. A wrong path then leaves no
  workdir whose config.json would refuse the corrected command."""
  if cfg.data.source == "ced":
    data_files(cfg.data)
  if cfg.model.checkpoint:
    path = cfg.model.checkpoint
    model_cfg = hf.load_config(path)  # first: "not a model folder" says more than "no tokenizer there"
    hf.check_tokenizer(load_tokenizer(path), model_cfg, path, path)


def split_events(cfg):
  """(train, val, eval events, eval truth, eval split name)."""
  d = cfg.data
  check_data_choices(d)
  world = _world(cfg)
  if d.source == "synthetic":
    train, _ = synthetic.generate(d.train_events, seed=d.seed, config=world)
    val, _ = synthetic.generate(d.val_events, seed=d.seed + 1, config=world)
    test, truth = synthetic.generate(d.eval_events, seed=d.seed + 2, config=world)
    return train, val, test, truth, "synthetic-test"
  files = data_files(d)
  # holdout is read only for the final report, never for training or selection
  take = lambda split, n: [e for e in itertools.islice(load_events(files[split], "ced"), n)]
  train = take("train", d.train_events)
  val = take("val", d.val_events)
  test = val[:d.eval_events] if d.eval_split == "val" else take("holdout", d.eval_events)
  return train, val, test, None, d.eval_split


def _tokenizer_texts(events, activity) -> list[str]:
  texts = []
  for e in events:
    texts += [policy_prompt(e.topic, s) for s in agent_states(e, activity)]
    texts += [action_text(a) for a in e.actions] + [CONTEXT_HEADER, CONTEXT_SEP]
  return texts


def prepare(cfg, workdir: str) -> Data:
  """Events, tokenizer (trained once into workdir/tokenizer) and step tensors."""
  t0 = time.time()
  train, val, test, truth, split = split_events(cfg)
  activity = UidActivity.fit(train) if cfg.data.source == "ced" else None
  tok_dir = os.path.join(workdir, "tokenizer")
  if cfg.model.checkpoint:
    tok = load_tokenizer(cfg.model.checkpoint)
  elif os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    tok = load_tokenizer(tok_dir)
  elif jax.process_count() == 1:
    tok = train_tokenizer(_tokenizer_texts(train, activity), cfg.tokenizer.vocab_size, tok_dir)
  else:  # process 0 trains and writes it (the workdir is shared), the others read it
    if distributed.is_main():
      train_tokenizer(_tokenizer_texts(train, activity), cfg.tokenizer.vocab_size, tok_dir)
    multihost_utils.sync_global_devices("mfjax tokenizer written")
    tok = load_tokenizer(tok_dir)
  bc = BatchConfig(cfg.data.steps, cfg.data.agents_per_step, cfg.data.prompt_len, cfg.data.action_len)
  batches = {name: make_step_batch(ev, tok, bc, activity=activity) for name, ev in
             (("train", train), ("val", val), ("eval", test))}
  for name, b in batches.items():
    r = b.report
    log(f"[data] {name}: {r['events']} events, {r['actions_used']} actions in {bc.steps}x{bc.agents_per_step} "
        f"steps ({r['agent_slots_empty']} empty slots); truncated: {r['prompts_truncated']} prompts, "
        f"{r['actions_truncated']} actions")
  ctx = ContextSpec.from_tokenizer(tok, k=cfg.context.k, action_len=cfg.data.action_len)
  log(f"[data] tokenizer: {len(tok)} tokens; context: {ctx.length} tokens ({time.time() - t0:.1f} s)")
  text = text_spec(cfg, tok)
  train_texts, train_mask = step_texts(train, bc.steps, bc.agents_per_step)
  references = {"train_texts": train_texts, "train_mask": train_mask, "train_labels": [e.label for e in train],
                "eval_labels": [e.label for e in test]}
  data = Data(tok, ctx, batches["train"].arrays(), batches["val"].arrays(), batches["eval"], truth, split, text,
              references=references)
  iv = intervention_of(cfg)
  if iv is not None:
    # the same eval events with the injected actions; only their action tokens differ (prompts are the states)
    data.intervened = {**make_step_batch(inject(test, iv, bc.agents_per_step), tok, bc, activity=activity).arrays(),
                       "forced": forced_mask(batches["eval"].agent_mask, iv)}
    if truth is not None:
      data.truth_intervened = synthetic.generate(cfg.data.eval_events, seed=cfg.data.seed + 2, config=_world(cfg),
                                                 intervention=iv, labels=intervention_labels(cfg))[1]
  return data


def text_spec(cfg, tokenizer) -> TextMFSpec:
  """The text mean field's token layout for `cfg`'s shapes."""
  return TextMFSpec.from_tokenizer(tokenizer, summary_len=cfg.mf_text.summary_len, action_len=cfg.data.action_len,
                                   agents=cfg.data.agents_per_step)


def intervention_labels(cfg) -> dict:
  """dimension -> category of the injected action, as `eval.labeler` reads it."""
  return {d: v[0] for d, v in make_labeler(cfg.eval.labeler).label([cfg.intervention.text]).items()}


# ----------------------------------------------------------------------------- models


def _model_config(cfg, tok, ctx: ContextSpec, text: TextMFSpec) -> ModelConfig:
  longest = cfg.mf.slots + ctx.length + cfg.data.prompt_len + cfg.data.action_len
  if "mf_text" in methods(cfg):  # the policy's input with a summary, and the writer's prompt + summary
    longest = max(longest, text.context_len + cfg.data.prompt_len + cfg.data.action_len,
                  text.writer_len + text.summary_len)
  return scratch_model_config(cfg, len(tok), max_position_embeddings=max(longest, 64), bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


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
  section: str  # of the config: steps, batch_events, ...
  tx: optax.GradientTransformation
  shardings: object  # of the parameters
  step: Callable  # (state, batch, rng, hparams) -> (state, metrics)
  val: Optional[Callable]  # (params, hparams) -> {term: float}
  about: str  # what trains, for the log


def _stage_fns(section: str, *, make_loss, params, trainable: str, cfg, data: Data, mesh, model: Decoder,
               encoder: Optional[MeanFieldEncoder] = None) -> _StageFns:
  """For training by cfg[section] from parameters shaped like `params`. make_loss(agents) ->
  loss_fn(params=, batch=, rng=, step=, **hparams): training scores stage.agents agents per step,
  validation all of them. The state lives on `mesh` (parameters by the sharding rules, batches
  split over events)."""
  stage = cfg[section]
  check_events(stage.batch_events, mesh, f"{section}.batch_events")
  tx = make_optimizer(params, trainable=trainable, lr=stage.lr, steps=stage.steps, warmup=stage.warmup,
                      weight_decay=cfg.train.weight_decay)
  shardings = policy_shardings(model, encoder, params, mesh)
  labels = trainable_labels(params, trainable)
  pin = cfg.parallel.pin_activations
  step_fn = jit_train_step(loss_fn=make_loss(stage.agents), tx=tx, mesh=mesh, labels=labels, pin_activations=pin,
                           state_shardings=state_shardings(params, tx, mesh=mesh, param_shardings=shardings),
                           hparams=True)
  n_train = sum(int(x.size) for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)) if lab == "train")
  return _StageFns(section, tx, shardings, step_fn,
                   _val_eval(make_loss(0), data.val, stage.batch_events, stage.steps, mesh, pin),
                   f"training {n_train:,} parameters ({trainable}) for {stage.steps} steps, "
                   f"{stage.batch_events} events per step")


def _train(name: str, fns: _StageFns, *, params, cfg, data: Data, workdir: str, mesh, hparams: Optional[dict] = None,
           trained_only: bool = False):
  """Train (or resume) stage `name` from `params` with `fns` (`_stage_fns`) and `hparams` (a dict
  of scalars given to the loss, traced)."""
  stage = cfg[fns.section]
  hparams = {k: jnp.float32(v) for k, v in (hparams or {}).items()}
  state, _ = sharded_state(params, fns.tx, mesh=mesh, param_shardings=fns.shardings)
  state = fit(name=name, workdir=_stage_dir(workdir, name), state=state, step_fn=lambda *a: fns.step(*a, hparams),
              data=data.train, batch_events=stage.batch_events, steps=stage.steps, seed=cfg.seed,
              log_every=cfg.train.log_every, ckpt_every=cfg.train.ckpt_every, eval_every=cfg.train.eval_every,
              eval_fn=None if fns.val is None else lambda p: fns.val(p, hparams), log=log, trained_only=trained_only,
              mesh=mesh, about=fns.about)
  return state.params


@dataclasses.dataclass
class Trained:
  model: Decoder  # with LoRA adapters (fresh ones on the base params)
  encoder: MeanFieldEncoder
  params: dict  # method or stage name -> params {"lm": ...} (+ "mf")


def mesh_from(cfg):
  """The (data, fsdp, tensor) mesh of `cfg.parallel` over all devices."""
  mesh = make_mesh(MeshConfig.from_config(cfg.parallel))
  log(f"[mesh] {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es)")
  return mesh


def train(cfg, workdir: str, data: Data, *, mesh=None, trained_only: bool = False) -> Trained:
  """Every stage the configured methods need (resuming finished ones instantly;
  with `trained_only`, an unfinished stage is an error instead)."""
  mesh = mesh_from(cfg) if mesh is None else mesh
  rng = jax.random.PRNGKey(cfg.seed)
  stages = trained_stages(cfg)  # the set of stages; how each trains is below
  common, where = {"cfg": cfg, "data": data, "mesh": mesh}, {"workdir": workdir, "trained_only": trained_only}

  def train_one(name, section, make_loss, params, trainable, model):
    fns = _stage_fns(section, make_loss=make_loss, params=params, trainable=trainable, model=model, **common)
    return _train(name, fns, params=params, **common, **where)

  if cfg.model.checkpoint:
    # read on the host and cut per device: no device holds the whole model
    # another model's tokenizer is refused before the weights are read
    hf.check_tokenizer(data.tokenizer, hf.load_config(cfg.model.checkpoint), cfg.model.checkpoint,
                       cfg.model.checkpoint)
    model, lm = hf.load_pretrained(cfg.model.checkpoint, dtype=cfg.model.dtype, host=True, **layer_fields(cfg))
    lm = place({PARAMS.lm: lm}, policy_shardings(model, None, {PARAMS.lm: lm}, mesh))[PARAMS.lm]
    log(f"[base] loaded {cfg.model.checkpoint}")
  else:
    model = Decoder(_model_config(cfg, data.tokenizer, data.context, data.text))
    lm, _ = init_sharded(lambda: model.init(jax.random.fold_in(rng, 1), jnp.zeros((1, 8), jnp.int32))["params"],
                         mesh)
    kinds = tuple(KINDS[k] for k in ("none", "recent", "popular"))
    loss = lambda agents: lambda params, batch, rng, step: policy_loss(
        model=model, params=params, batch=batch, rng=rng, context=data.context, context_kinds=kinds, agents=agents)
    lm = train_one("base", "base", loss, {PARAMS.lm: lm}, "full", model)[PARAMS.lm]
  model, lm = add_lora(model, lm, lora_config(cfg), jax.random.fold_in(rng, 2))
  encoder = MeanFieldEncoder(mf_config(cfg, model.cfg.hidden_size))
  out = {"base": {PARAMS.lm: lm}}
  if "sft" in stages:
    loss = lambda agents: lambda params, batch, rng, step: policy_loss(
        model=model, params=params, batch=batch, rng=rng, agents=agents)
    out["sft"] = train_one("sft", "sft", loss, {PARAMS.lm: lm}, cfg.sft.trainable, model)
  betas = ib_stages(cfg)
  if betas:  # one compile for every beta: each stage starts from the same parameters, beta is an argument
    params = {PARAMS.lm: lm, PARAMS.mf: init_encoder(encoder, jax.random.fold_in(rng, 3), model.cfg.hidden_size)}
    loss = lambda agents: lambda params, batch, rng, step, beta: ib_tune_loss(
        model=model, encoder=encoder, params=params, batch=batch, rng=rng, remat=cfg.ib.remat, agents=agents,
        beta=beta_schedule(beta, cfg.ib.schedule, cfg.ib.warmup)(step), lm_grad=cfg.mf.lm_grad)
    fns = _stage_fns("mf_train", make_loss=loss, params=params, trainable=cfg.mf_train.trainable, model=model,
                     encoder=encoder, **common)
  for name, beta in betas.items():
    out[name] = _train(name, fns, params=params, hparams={"beta": beta}, **common, **where)
  if "mf_text" in stages:
    loss = lambda agents: lambda params, batch, rng, step: text_ib_tune_loss(
        model=model, spec=data.text, params=params, batch=batch, rng=rng, beta=cfg.mf_text.beta, agents=agents)
    # the writer starts as the policy; its prior p0 is the base LM: its zeroed adapters with lora, a frozen copy
    # with full
    params = {PARAMS.lm: lm, PARAMS.mf_lm: lm, **({PARAMS.prior: lm} if cfg.mf_text_train.trainable == "full" else {})}
    out["mf_text"] = train_one("mf_text", "mf_text_train", loss, params, cfg.mf_text_train.trainable, model)
  return Trained(model, encoder, out)


# ----------------------------------------------------------------------------- rollouts


def simulate_all(cfg, workdir: str, data: Data, trained: Trained, *, mesh=None) -> None:
  """Roll out every method and seed over the eval events (existing files are
  kept), `rollout.batch_events` events per call split over the mesh; then, with
  an intervention, its methods again over the intervened events, with the same
  keys (so that a rollout differs from its method's only through the injected actions)."""
  mesh = mesh_from(cfg) if mesh is None else mesh
  os.makedirs(os.path.join(workdir, "rollouts"), exist_ok=True)
  plain = data.eval.arrays()
  E = len(plain["agent_mask"])
  chunk = min(cfg.rollout.batch_events, E)
  check_events(chunk, mesh, "rollout.batch_events (or the eval events, if fewer)")
  rows = process_rows(chunk)
  n_chunks = -(-E // chunk)
  todo = [(run, plain) for run in rollout_runs(cfg)] + [(run, data.intervened) for run in intervention_runs(cfg)]
  for (tag, method, key), arrays in todo:
    for seed in range(cfg.rollout.seeds):
      path = rollout_path(workdir, tag, seed)
      if os.path.exists(path):
        continue
      t0 = time.time()
      parts = []
      for c in range(n_chunks):
        idx = np.arange(c * chunk, (c + 1) * chunk) % E  # the last chunk wraps around: one static shape
        batch = global_batch({k: v[idx][rows] for k, v in arrays.items()}, mesh)
        out = simulate(trained.model, trained.params[key], batch, method=method, encoder=trained.encoder,
                       context=data.context, rng=jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1000 * (seed + 1)), c),
                       warmup=cfg.rollout.warmup, temperature=cfg.rollout.temperature, top_k=cfg.rollout.top_k,
                       top_p=cfg.rollout.top_p, mesh=mesh, donate_batch=True,  # a fresh batch each call
                       pin_activations=cfg.parallel.pin_activations, text=data.text)
        parts.append(to_host(out))
      if not distributed.is_main():
        continue
      cat = lambda f: np.concatenate([getattr(p, f) for p in parts])[:E]
      tmp = path[:-4] + ".tmp.npz"
      extra = {"summary": cat("summary"), "summary_mask": cat("summary_mask")} if method == "mf_text" else {}
      np.savez_compressed(tmp, tokens=cat("tokens"), mask=cat("mask"), real_logprobs=cat("real_logprobs"),
                          mf_kl=cat("mf_kl"), **extra)
      os.replace(tmp, path)
      if method == "mf_text":  # what the writer says, for a look: event 0's last summary
        last = extra["summary"][0, -1][extra["summary_mask"][0, -1]]
        log(f"[simulate] {tag} seed {seed}: event 0's last summary: "
            f"{data.tokenizer.decode(last, skip_special_tokens=True)!r}")
      log(f"[simulate] {tag} seed {seed}: {E} events x {cfg.data.steps} steps x {cfg.data.agents_per_step} agents "
          f"in {time.time() - t0:.1f} s")


# ----------------------------------------------------------------------------- commands


def _sweep_validation(cfg, workdir: str) -> dict:
  """tag -> {"beta", "val_relevance", "val_compression_bits"} from each sweep stage's last validation."""
  out = {}
  for tag, b in sweep_stages(cfg).items():
    rows = []
    path = os.path.join(workdir, tag, "metrics.jsonl")
    if os.path.exists(path):
      rows = [r for r in read_jsonl(path) if "val_relevance" in r]
    last = rows[-1] if rows else {}
    out[tag] = {"beta": b, "val_relevance": last.get("val_relevance"),
                "val_compression_bits": last.get("val_compression_bits")}
  return out


def _intervention_report(cfg, data: Data) -> Optional[dict]:
  """What `evaluate` needs to score the intervention (None without one)."""
  iv = intervention_of(cfg)
  if iv is None:
    return None
  truth = None
  if data.truth is not None:
    truth = (data.truth.probs, data.truth_intervened.probs)
  return {"intervention": iv, "labels": intervention_labels(cfg), "world": truth, "forced": data.intervened["forced"],
          "runs": [(tag, tag[:-len("_intervened")]) for tag, _, _ in intervention_runs(cfg)]}


def run(cfg: ml_collections.ConfigDict, workdir: str, commands=("train", "simulate", "evaluate"),
        trained_from: Optional[str] = None) -> Optional[dict]:
  """`python -m mfjax train|simulate|evaluate|run`: the named parts, in order, in one workdir.
  trained_from: another run's workdir whose trained stages (and tokenizer) the rollouts use,
  read only; its config must equal `cfg` but for EVAL_ONLY_KEYS. `train` is then skipped."""
  distributed.initialize(cfg.parallel.distributed)  # first: checking the config asks JAX for its backend
  check_config(cfg)
  if trained_from and commands == ("train",):
    raise ConfigError("train with --trained-from: the stages are that run's; use run, simulate or evaluate")
  commands = tuple(c for c in commands if not (trained_from and c == "train"))
  if cfg.model.checkpoint_required and not cfg.model.checkpoint:
    raise ConfigError("model.checkpoint is required by this experiment: --set model.checkpoint=/path/to/hf-folder "
                      "(a local Hugging Face folder with config.json, safetensors and the tokenizer)")
  cache = jax.config.jax_compilation_cache_dir
  log(f"[cache] compiled programs kept for later runs in {cache} ({COMPILE_CACHE_ENV}=off: not kept)" if cache
      else f"[cache] compiled programs not kept ({COMPILE_CACHE_ENV}=DIR keeps them)")
  fresh = not os.path.exists(os.path.join(workdir, "config.json"))
  creates = "train" in commands or (trained_from and "simulate" in commands)  # may start in a fresh workdir
  if fresh and not creates:
    raise FileNotFoundError(f"{workdir} holds no run to {commands[0]}: run `python -m mfjax run` (or train) "
                            "with this config and --workdir first")
  # every refusal before the first write: a refused command leaves a fresh workdir unmade
  if trained_from:
    check_trained_from(trained_from, workdir, cfg, EVAL_ONLY_KEYS)
  record = check_bound_to(workdir, trained_from, fresh)
  if trained_from and not cfg.model.checkpoint and not os.path.exists(
      os.path.join(trained_from, "tokenizer", "tokenizer.json")):
    raise FileNotFoundError(f"{trained_from} has no trained tokenizer (tokenizer/tokenizer.json): "
                            "train that run first")
  mesh = None
  if "train" in commands or "simulate" in commands:
    mesh = mesh_from(cfg)
    check_mesh(cfg, mesh, rollouts="simulate" in commands)
  check_inputs(cfg)
  check_workdir(workdir, cfg, may_differ=LAYOUT_KEYS, rollout_only=EVAL_ONLY_KEYS, adopt=STAGE_SET_KEYS,
                training="train" in commands)
  if record:
    record_trained_from(workdir, trained_from)
  stages = trained_from or workdir  # where the trained stages and the tokenizer are
  if trained_from:
    log(f"[train] the trained stages of {trained_from} (read only)")
  if "evaluate" in commands and "simulate" not in commands:  # nothing here makes the rollouts: they must be there
    check_rollouts(workdir, rollout_runs(cfg) + intervention_runs(cfg), cfg.rollout.seeds)
  t0 = time.time()
  data = prepare(cfg, stages)
  if mesh is not None:
    trained = train(cfg, stages, data, mesh=mesh, trained_only="train" not in commands)
    if distributed.is_main():
      plots.training_curves(workdir, list(trained_stages(cfg)), stages_dir=stages)
  if "simulate" in commands:
    simulate_all(cfg, workdir, data, trained, mesh=mesh)
  results = None
  if "evaluate" in commands and distributed.is_main():  # host-side work on the saved rollouts: process 0 only
    results = evaluate(workdir=workdir, tokenizer=data.tokenizer, eval_batch=data.eval, runs=rollout_runs(cfg),
                       seeds=cfg.rollout.seeds, warmup=cfg.rollout.warmup, labeler_name=cfg.eval.labeler,
                       truth=data.truth, sweep=_sweep_validation(cfg, stages) or None, started=t0, log=log,
                       intervention=_intervention_report(cfg, data), references=data.references,
                       environment={"evaluate": environment(),
                                    "stages": stage_environments(stages, trained_stages(cfg))})
  log(f"[done] {', '.join(commands)} in {time.time() - t0:.0f} s; outputs in {workdir}")
  return results
