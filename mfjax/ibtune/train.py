"""Training: which parameters train (an Optax mask), the pure jitted step, and
the resumable loop around it.

Parameters are one tree {"lm": decoder params (LoRA adapters in `.../lora`),
"mf": mean-field encoder params (when the method has one), or "mf_lm" (the
text mean field's writer, an LM like "lm") and "prior" (its fixed prior, never
trained)}. `trainable` chooses the leaves the optimizer moves; the rest get
zero updates and no optimizer state (`optax.multi_transform` with `set_to_zero`):

  lora+mf  LoRA adapters and the encoder (the default for IB-Tune)
  lora     LoRA adapters only (the default for sft; with a text mean field, the policy's and the writer's)
  full     everything (from-scratch pre-training, full fine-tuning)
  mf       the encoder only (a frozen policy)
  head     the encoder's population head only (`HEAD_PARAMS`; a head fitted on a trained mean field)

The batch of step s is a pure function of (seed, s), so a checkpoint's step is
also its data position: a rerun restores params, optimizer state and step from
the latest orbax checkpoint and continues where it stopped.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from mfjax.meanfield.encoder import HEAD_PARAMS
from mfjax.model.lora import is_lora_path
from mfjax.parallel.mesh import (batch_sharding, global_batch, opt_state_shardings, process_rows, replicated,
                                 with_activation_sharding)
from mfjax.parallel.state import place
from mfjax.params_keys import PARAMS
from mfjax.runs import Preempted, append_jsonl, environment, restore_latest, restore_params, resume_jsonl
from mfjax.workdir import CHECKPOINTS, ENVIRONMENT_FILE, METRICS_FILE

TRAINABLE = ("lora+mf", "lora", "full", "mf", "head")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimizer steps taken (= data position)
  params: Any  # {"lm": ..., "mf": ...}
  opt_state: Any


def trainable_labels(params, trainable: str):
  """"train" / "frozen" per leaf of `params` (see module docstring)."""
  if trainable not in TRAINABLE:
    raise ValueError(f"unknown trainable {trainable!r}; choose from {TRAINABLE}")

  def label(path, _):
    top = getattr(path[0], "key", None)
    lora = is_lora_path(path)
    head = top == PARAMS.mf and len(path) > 1 and getattr(path[1], "key", None) in HEAD_PARAMS
    train = {"full": True, "lora": lora, "mf": top == PARAMS.mf, "lora+mf": lora or top == PARAMS.mf,
             "head": head}[trainable]
    train = train and top != PARAMS.prior
    return "train" if train else "frozen"

  labels = jax.tree_util.tree_map_with_path(label, params)
  if "train" not in jax.tree.leaves(labels):
    raise ValueError(f"trainable={trainable!r} selects no parameter (no LoRA adapters or no encoder?)")
  return labels


def make_optimizer(params, *, trainable: str, lr: float, steps: int, warmup: int = 0, weight_decay: float = 0.0,
                   clip: float = 1.0) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm clipping on the trainable leaves only."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1))
  train = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(schedule, weight_decay=weight_decay))
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, trainable_labels(params, trainable))


def beta_schedule(beta: float, kind: str = "constant", warmup: int = 0) -> Callable:
  """beta(step): 'constant', or 'linear' from 0 to beta over `warmup` steps."""
  if kind == "constant":
    return lambda step: jnp.float32(beta)
  if kind == "linear":
    return lambda step: jnp.float32(beta) * jnp.minimum(1.0, step.astype(jnp.float32) / max(warmup, 1))
  raise ValueError(f"unknown beta schedule {kind!r}; use 'constant' or 'linear'")


def train_step(state: TrainState, batch, rng, hparams=None, *, loss_fn: Callable, tx: optax.GradientTransformation,
               labels=None):
  """One optimizer step; pure. `loss_fn(params=, batch=, rng=, step=, **hparams) -> (loss, aux)`
  is bound with functools.partial, as are `tx` and `labels` (`trainable_labels`
  of the params, as given to `make_optimizer`). `hparams` (a dict of scalars, or
  None) are traced arguments of the loss, not constants: runs that differ only in
  them (an IB sweep's betas) share one compiled step. With labels, the `grad_norm`
  metric covers the trained leaves only, and then nothing reads the frozen
  leaves' gradients (the optimizer zeroes their updates by shape), so XLA never
  computes them: for LoRA, the base weights' gradient matmuls."""
  rng = jax.random.fold_in(rng, state.step)
  loss_of = lambda p: loss_fn(params=p, batch=batch, rng=rng, step=state.step, **(hparams or {}))
  (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if labels is not None:
    grads = jax.tree.map(lambda g, label: g if label == "train" else None, grads, labels)
  return TrainState(state.step + 1, params, opt_state), {**aux, "grad_norm": optax.tree.norm(grads)}


def state_shardings(params, tx: optax.GradientTransformation, *, mesh, param_shardings) -> TrainState:
  """The TrainState of shardings for `params` (arrays or ShapeDtypeStructs):
  optimizer leaves shaped like a parameter follow it, the rest (counts) and the
  step are replicated."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  return TrainState(replicated(mesh), param_shardings, opt_state_shardings(tx, abstract, param_shardings, mesh))


def sharded_state(params, tx: optax.GradientTransformation, *, mesh, param_shardings):
  """(TrainState at step 0 with params and optimizer state laid out on `mesh`,
  the TrainState of their shardings; see `state_shardings`)."""
  shardings = state_shardings(params, tx, mesh=mesh, param_shardings=param_shardings)
  # fresh buffers: the step donates its state, and `params` may be shared with other stages
  params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=param_shardings)(place(params, param_shardings))
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return TrainState(jax.device_put(jnp.int32(0), shardings.step), params, opt_state), shardings


def jit_train_step(*, loss_fn: Callable, tx: optax.GradientTransformation, mesh=None, state_shardings=None,
                   labels=None, pin_activations: bool = True, hparams: bool = False):
  """`train_step` jitted once, donating the state (`labels` as there): step(state, batch, rng), or
  with `hparams` step(state, batch, rng, hparams). With a mesh: in/out shardings state ->
  `state_shardings`, batch -> events over data x fsdp, rng, hparams and metrics replicated, and
  (`pin_activations`) the model's activations pinned by the rules (`activation_sharding`)."""
  fn = functools.partial(train_step, loss_fn=loss_fn, tx=tx, labels=labels)
  if mesh is None:
    return jax.jit(fn, donate_argnums=0)
  fn = with_activation_sharding(fn, mesh if pin_activations else None)
  rep = replicated(mesh)
  return jax.jit(fn, in_shardings=(state_shardings, batch_sharding(mesh), rep) + ((rep,) if hparams else ()),
                 out_shardings=(state_shardings, rep), donate_argnums=0)


def batch_at(data: dict, *, seed: int, step: int, events: int, mesh=None) -> dict:
  """The batch of step `step`: `events` events drawn by a pure function of (seed, step).
  With a mesh: a global batch sharded over events, each process supplying its rows."""
  n = len(next(iter(data.values())))
  idx = np.random.default_rng([seed, step]).choice(n, size=events, replace=n < events)
  if mesh is None:
    return {k: jnp.asarray(v[idx]) for k, v in data.items()}
  return global_batch({k: v[idx[process_rows(events)]] for k, v in data.items()}, mesh)


def _trained(name: str, step: int, ckpt_dir: str) -> str:
  return f"[{name}] already trained ({step} steps in {ckpt_dir})"


def trained_steps(workdir: str) -> int:
  """The optimizer steps of the latest checkpoint of the stage in `workdir` (0: none)."""
  ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
  return (ocp.CheckpointManager(ckpt_dir).latest_step() or 0) if os.path.isdir(ckpt_dir) else 0


def trained_params(*, name: str, workdir: str, steps: int, params, shardings, log: Callable = print):
  """The parameters of a stage that `fit` finished in `workdir` (`steps` steps), restored alone
  (no optimizer state, nothing compiled, nothing written: the stage may be another run's, read with
  --trained-from) onto `shardings`; `params` gives their tree and shapes. FileNotFoundError naming
  the stage where it is not trained that far."""
  ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
  step = trained_steps(workdir)
  if step < steps:
    why = f"{step}/{steps} steps in {ckpt_dir}" if os.path.isdir(ckpt_dir) else f"no {ckpt_dir}"
    raise FileNotFoundError(f"stage {name!r} is not trained ({why}); run `python -m mfjax train` with this config "
                            "and workdir first")
  log(_trained(name, step, ckpt_dir))
  return restore_params(ckpt_dir, step, params, shardings)


def fit(*, name: str, workdir: str, state: TrainState, step_fn: Callable, data: dict, batch_events: int, steps: int,
        seed: int, log_every: int = 10, ckpt_every: int = 100, eval_every: int = 0,
        eval_fn: Optional[Callable] = None, log: Callable = print, mesh=None, about: str = "") -> TrainState:
  """Run (or resume) a training stage in `workdir` to `steps` optimizer steps.

  step_fn(state, batch, rng) -> (state, metrics) is the jitted `train_step`;
  eval_fn(params) -> {name: float} runs on validation data every `eval_every`
  steps and at the end. Writes workdir/metrics.jsonl and workdir/checkpoints, and
  appends where it trains (`mfjax.runs.environment`) to workdir/environment.jsonl.
  Stops with FloatingPointError naming the step if the loss is not finite, and
  with `Preempted` once every host has saved the step a preemption notice
  (JAX's preemption sync point, multi-host runs) names.
  A finished stage's parameters alone: `trained_params`. With a mesh,
  batches are global arrays sharded over events and a checkpoint restores onto
  the shardings of `state` (whatever mesh it was saved from); only process 0
  writes metrics.jsonl (every process takes part in the orbax save). `about` is
  logged when steps are left to train (what is trained, on what)."""
  ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
  os.makedirs(workdir, exist_ok=True)
  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  metrics_path = os.path.join(workdir, METRICS_FILE)
  state = restore_latest(mngr, state)
  start = int(state.step)
  if jax.process_index() == 0:  # rows a crash left past the checkpoint (all, if none yet)
    resume_jsonl(metrics_path, start)
  if start and start < steps:
    log(f"[{name}] resuming at step {start} from {ckpt_dir}")
  if start >= steps:
    log(_trained(name, start, ckpt_dir))
    return state
  if about:
    log(f"[{name}] {about}")
  if jax.process_index() == 0:  # where these steps are computed (a resumed stage may go on elsewhere)
    append_jsonl(os.path.join(workdir, ENVIRONMENT_FILE), {"from_step": start, "to_step": steps, **environment()})
  rng = jax.random.PRNGKey(seed)
  t0 = time.time()
  for step in range(start, steps):
    state, m = step_fn(state, batch_at(data, seed=seed, step=step, events=batch_events, mesh=mesh), rng)
    done = step + 1
    loss = float(m["loss"])
    if not np.isfinite(loss):
      raise FloatingPointError(f"[{name}] loss became {loss} at step {done}; lower the learning rate "
                               f"(last good checkpoint: {mngr.latest_step()})")
    row = None
    if done % log_every == 0 or done == steps:
      row = {"step": done, **{k: float(v) for k, v in jax.device_get(m).items()}}
      rate = (done - start) / max(time.time() - t0, 1e-9)
      terms = "  ".join(f"{k} {row[k]:.4f}" for k in ("loss", "relevance", "compression") if k in row)
      log(f"[{name}] step {done}/{steps}  {terms}  {rate:.2f} steps/s  eta {(steps - done) / max(rate, 1e-9):.0f}s")
    if eval_fn is not None and ((eval_every and done % eval_every == 0) or done == steps):
      val = {f"val_{k}": float(v) for k, v in eval_fn(state.params).items()}
      row = {"step": done, **(row or {}), **val}
      log(f"[{name}] step {done} validation: " + "  ".join(f"{k} {v:.4f}" for k, v in val.items()))
    if row is not None and jax.process_index() == 0:
      append_jsonl(metrics_path, row)
    # a preemption notice (SIGTERM to any host of a multi-host run): every host saves the same step, then stops
    preempted = mngr.reached_preemption(done)
    if done % ckpt_every == 0 or done == steps or preempted:
      mngr.save(done, args=ocp.args.StandardSave(state))
    if preempted:
      mngr.wait_until_finished()
      raise Preempted(f"[{name}] preempted: step {done} saved in {ckpt_dir}; the same command resumes from it")
  mngr.wait_until_finished()
  return state
