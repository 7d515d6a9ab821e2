"""IB-Tune: the objective's terms and gradients, the Optax mask, the resumable loop."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mf_setup import make_batch, make_model
from mfjax.ibtune import (TrainState, beta_schedule, fit, ib_tune_loss, jit_train_step, make_optimizer,
                          mean_field_path, policy_loss, state_shardings, train_step, trainable_labels, trained_params)
from mfjax.ibtune.objective import subsample_agents
from mfjax.model import unrolled
from mfjax.model.lora import is_lora_path
from mfjax.parallel import global_batch, make_mesh
from mfjax.parallel.mesh import replicated
from mfjax.runs import Preempted, RunFolderError


@pytest.fixture(scope="module")
def setup():
  model, encoder, params = make_model()
  batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
  return model, encoder, params, batch


@functools.lru_cache
def _grad_fn(setup_id, term):
  model, encoder, params, batch = _SETUPS[setup_id]

  def f(p, beta):
    aux = ib_tune_loss(model=model, encoder=encoder, params=p, batch=batch, rng=jax.random.PRNGKey(0), beta=beta)[1]
    return aux["loss"] - aux["relevance"] if term == "loss-relevance" else aux[term]
  return jax.jit(jax.grad(f))


_SETUPS = {}


def _grads(setup, beta, term="loss"):
  _SETUPS[id(setup)] = setup
  return _grad_fn(id(setup), term)(setup[2], jnp.float32(beta))


def test_gradient_reaches_every_encoder_part(setup):
  g = _grads(setup, 0.01)
  for name, sub in g["mf"].items():
    assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(sub))) > 0, f"no gradient reaches mf/{name}"
  lora = [x for p, x in jax.tree_util.tree_leaves_with_path(g["lm"]) if is_lora_path(p)]
  assert float(sum(jnp.abs(x).sum() for x in lora)) > 0


def test_beta_zero_means_kl_has_no_effect(setup):
  # what the loss adds to relevance has no gradient at all at beta=0, exactly: in one program, the
  # cotangents 1 and -1 into relevance cancel before they flow back, and compression's is beta = 0
  # (two programs, loss's gradient against relevance's, agree only as far as XLA orders their sums alike)
  for x in jax.tree.leaves(_grads(setup, 0.0, term="loss-relevance")):
    np.testing.assert_array_equal(x, np.zeros_like(x))
  g1 = _grads(setup, 1.0, term="loss-relevance")  # with beta > 0 the compression term does move the encoder
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g1["mf"])) > 1e-4


def test_terms_and_compression_bits(setup):
  model, encoder, params, batch = setup
  loss, aux = jax.jit(lambda p: ib_tune_loss(model=model, encoder=encoder, params=p, batch=batch,
                                             rng=jax.random.PRNGKey(0), beta=0.25))(params)
  np.testing.assert_allclose(loss, aux["relevance"] + 0.25 * aux["compression"], rtol=1e-6)
  np.testing.assert_allclose(aux["compression_bits"], aux["compression"] / np.log(2), rtol=1e-6)
  assert float(aux["tokens"]) == float((batch["action_mask"] * batch["agent_mask"][..., None]).sum())
  # relevance is the mean NLL of real action tokens: with a uniform policy it would be log V
  assert 0 < float(aux["relevance"]) < 2 * np.log(64)


def test_sample_false_reads_the_posterior_mean(setup):
  model, encoder, params, batch = setup
  path = lambda rng, sample: mean_field_path(model=model, encoder=encoder, params=params, batch=batch, rng=rng,
                                             sample=sample)
  m0, mu, _ = path(jax.random.PRNGKey(0), False)
  m1, _, _ = path(jax.random.PRNGKey(1), False)
  np.testing.assert_array_equal(m0, mu)
  np.testing.assert_array_equal(m0, m1)
  drawn, _, _ = path(jax.random.PRNGKey(0), True)
  assert float(jnp.abs(drawn - mu).max()) > 1e-3  # init_logvar -3: the draw is visibly noisy


def test_mean_field_read_at_step_t_ignores_steps_from_t_on(setup):
  model, encoder, params, batch = setup
  f = jax.jit(lambda b: mean_field_path(model=model, encoder=encoder, params=params, batch=b,
                                        rng=jax.random.PRNGKey(0))[1])
  ref = f(batch)
  t = 2
  changed = dict(batch)
  changed["action_ids"] = batch["action_ids"].at[:, t:].set(jnp.where(batch["action_mask"][:, t:] > 0, 9,
                                                                           batch["action_ids"][:, t:]))
  out = f(changed)
  np.testing.assert_array_equal(out[:, :t + 1], ref[:, :t + 1])  # read at steps 0..t: history < t
  assert not np.allclose(out[:, t + 1:], ref[:, t + 1:])


def test_subsample_agents_takes_distinct_agents():
  batch = {k: jnp.asarray(v) for k, v in make_batch(empty_last=False).items()}
  batch["prompt_ids"] = jnp.broadcast_to(jnp.arange(3)[None, None, :, None], batch["prompt_ids"].shape)
  sub = subsample_agents(batch, jax.random.PRNGKey(3), 2)
  assert sub["prompt_ids"].shape[2] == 2 and sub["parent"].shape == batch["parent"].shape
  picked = np.asarray(sub["prompt_ids"][..., 0])
  assert (picked[..., 0] != picked[..., 1]).all()


def test_optax_mask_freezes_exactly_the_untrained_leaves(setup):
  model, encoder, params, batch = setup
  loss = lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                       rng=rng, beta=0.01)
  tx = make_optimizer(params, trainable="lora+mf", lr=1e-2, steps=10)
  state = TrainState(jnp.int32(0), params, tx.init(params))
  step_fn = jax.jit(functools.partial(train_step, loss_fn=loss, tx=tx))
  new = state
  for _ in range(3):  # the warmup schedule's learning rate is 0 at step 0
    new, _ = step_fn(new, batch, jax.random.PRNGKey(0))
  labels = trainable_labels(params, "lora+mf")
  for lab, a, b in zip(jax.tree.leaves(labels), jax.tree.leaves(params), jax.tree.leaves(new.params)):
    if lab == "frozen":
      np.testing.assert_array_equal(a, b)
  moved = [float(jnp.abs(a - b).max()) for lab, a, b in
           zip(jax.tree.leaves(labels), jax.tree.leaves(params), jax.tree.leaves(new.params)) if lab == "train"]
  assert min(moved) > 0  # every trainable leaf moved (lora b starts at zero and still gets a gradient)
  assert step_fn._cache_size() == 1  # one compilation for the whole run
  with pytest.raises(ValueError, match="selects no parameter"):
    trainable_labels({"lm": params["lm"]}, "mf")


def test_hparams_are_arguments_of_one_compiled_step_on_a_mesh():
  """jit_train_step(hparams=True): a hyperparameter passed as an argument steps as the same
  value bound as a constant does, and two values share one compilation (an IB sweep's betas)."""
  mesh = make_mesh((8, 1, 1))
  params = {"w": jnp.arange(3.0)}
  def loss(params, batch, rng, step, beta):
    value = jnp.mean((params["w"] - beta * batch["x"]) ** 2)
    return value, {"loss": value, "beta": beta}

  tx = optax.sgd(0.1)
  shardings = state_shardings(params, tx, mesh=mesh, param_shardings={"w": replicated(mesh)})
  state = lambda: TrainState(jnp.int32(0), jax.tree.map(jnp.copy, params), tx.init(params))  # the step donates it
  batch = global_batch({"x": np.linspace(0, 1, 24, dtype=np.float32).reshape(8, 3)}, mesh)
  traced = jit_train_step(loss_fn=loss, tx=tx, mesh=mesh, state_shardings=shardings, hparams=True)
  for beta in (0.5, 2.0):
    ref, ref_m = jit_train_step(loss_fn=functools.partial(loss, beta=beta), tx=tx, mesh=mesh,
                                state_shardings=shardings)(state(), batch, jax.random.PRNGKey(0))
    out, m = traced(state(), batch, jax.random.PRNGKey(0), {"beta": jnp.float32(beta)})
    assert float(m["beta"]) == beta and float(m["loss"]) == pytest.approx(float(ref_m["loss"]), rel=1e-6)
    np.testing.assert_allclose(out.params["w"], ref.params["w"], rtol=1e-6)
  assert traced._cache_size() == 1


def test_labels_limit_grad_norm_to_trained_leaves_and_skip_frozen_gradients(setup):
  """With `labels`, the step moves the parameters exactly as without, its
  grad_norm is the trained leaves' gradient norm, and XLA drops the frozen
  leaves' gradient matmuls (fewer FLOPs in the compiled step)."""
  model, encoder, params, batch = setup
  # unrolled layers: XLA's cost analysis counts a loop's body once
  model, lm = unrolled(model, params["lm"])
  params = {**params, "lm": lm}
  loss = lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                       rng=rng, beta=0.01)
  tx = make_optimizer(params, trainable="lora+mf", lr=1e-2, steps=10, warmup=1)
  labels = trainable_labels(params, "lora+mf")
  state = TrainState(jnp.int32(1), params, tx.init(params))
  rng = jax.random.PRNGKey(0)
  # compiled once each: the executables that run are the ones whose FLOPs are compared
  plain = jax.jit(functools.partial(train_step, loss_fn=loss, tx=tx)).lower(state, batch, rng).compile()
  pruned = jax.jit(functools.partial(train_step, loss_fn=loss, tx=tx, labels=labels)).lower(state, batch, rng).compile()
  (a, ma), (b, mb) = plain(state, batch, rng), pruned(state, batch, rng)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7),
               a.params, b.params)
  grads = jax.jit(jax.grad(lambda p: loss(params=p, batch=batch, rng=jax.random.fold_in(rng, 1), step=1)[0]))(params)
  trained = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)) if lab == "train"]
  np.testing.assert_allclose(float(mb["grad_norm"]), float(optax.tree.norm(trained)), rtol=1e-5)
  np.testing.assert_allclose(float(ma["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-5)
  assert float(mb["grad_norm"]) < float(ma["grad_norm"])
  assert pruned.cost_analysis()["flops"] < 0.95 * plain.cost_analysis()["flops"]


def test_beta_schedule():
  assert float(beta_schedule(0.5)(jnp.int32(0))) == 0.5
  lin = beta_schedule(0.5, "linear", 10)
  assert float(lin(jnp.int32(0))) == 0.0 and float(lin(jnp.int32(5))) == 0.25 and float(lin(jnp.int32(50))) == 0.5
  with pytest.raises(ValueError, match="unknown beta schedule"):
    beta_schedule(1.0, "cosine")


def _fit_setup():
  model, _, params = make_model(seed=3)
  params = {"lm": params["lm"]}
  data = make_batch(seed=4, e=6)
  loss = lambda params, batch, rng, step: policy_loss(model=model, params=params, batch=batch, rng=rng, agents=2)
  tx = make_optimizer(params, trainable="full", lr=1e-2, steps=6, warmup=1)
  step_fn = jax.jit(functools.partial(train_step, loss_fn=loss, tx=tx), donate_argnums=0)
  fresh = lambda: TrainState(jnp.int32(0), jax.tree.map(jnp.array, params), tx.init(params))
  return fresh, step_fn, data


def test_resume_continues_at_the_right_step_with_identical_params(tmp_path):
  fresh, step_fn, data = _fit_setup()
  kw = dict(name="t", step_fn=step_fn, data=data, batch_events=2, seed=0, log_every=1, ckpt_every=3,
            log=lambda *_: None)
  straight = fit(workdir=str(tmp_path / "a"), state=fresh(), steps=6, **kw)
  fit(workdir=str(tmp_path / "b"), state=fresh(), steps=3, **kw)  # "crash" after step 3
  logs = []
  resumed = fit(workdir=str(tmp_path / "b"), state=fresh(), steps=6, **{**kw, "log": logs.append})
  assert "resuming at step 3" in logs[0]
  assert int(resumed.step) == int(straight.step) == 6
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  rows = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert rows == [1, 2, 3, 4, 5, 6]
  # each session that trained steps says where: the first 0 -> 3, the resumed one 3 -> 6
  sessions = [json.loads(line) for line in open(tmp_path / "b" / "environment.jsonl")]
  assert [(r["from_step"], r["to_step"]) for r in sessions] == [(0, 3), (3, 6)]
  assert all(r["jax"] == jax.__version__ and r["platform"] == jax.devices()[0].platform for r in sessions)
  # a finished stage's parameters alone (no optimizer state), as simulate and --trained-from read them
  shardings = jax.tree.map(lambda x: x.sharding, straight.params)
  read = lambda wd, steps: trained_params(name="t", workdir=str(tmp_path / wd), steps=steps, params=fresh().params,
                                          shardings=shardings, log=logs.append)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(read("a", 6))):
    np.testing.assert_array_equal(a, b)
  assert logs[-1].startswith("[t] already trained (6 steps in ")
  with pytest.raises(FileNotFoundError, match=r"stage 't' is not trained \(no .*c/checkpoints\)"):
    read("c", 6)
  with pytest.raises(FileNotFoundError, match=r"stage 't' is not trained \(6/7 steps in "):
    read("b", 7)
  assert not os.path.exists(tmp_path / "c")  # nothing written


def test_a_crash_before_the_first_checkpoint_logs_no_step_twice(tmp_path):
  fresh, step_fn, data = _fit_setup()
  calls = []

  def crashing(state, batch, rng):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("simulated crash")
    return step_fn(state, batch, rng)

  kw = dict(name="t", workdir=str(tmp_path), data=data, batch_events=2, steps=6, seed=0, log_every=1, ckpt_every=3,
            log=lambda *_: None)
  with pytest.raises(KeyboardInterrupt):
    fit(state=fresh(), step_fn=crashing, **kw)  # steps 1 and 2 logged, no checkpoint yet
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "lo')  # and the third line cut short
  fit(state=fresh(), step_fn=step_fn, **kw)
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_preemption_notice_saves_that_step_and_the_rerun_resumes_there(tmp_path, monkeypatch):
  fresh, step_fn, data = _fit_setup()
  kw = dict(name="t", step_fn=step_fn, data=data, batch_events=2, steps=6, seed=0, log_every=1, ckpt_every=3,
            log=lambda *_: None)
  straight = fit(workdir=str(tmp_path / "a"), state=fresh(), **kw)
  # JAX's preemption sync point (a SIGTERM to a host of a multi-host run) falls on step 4, off the 3-step interval
  monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", lambda self, step: step == 4)
  with pytest.raises(Preempted, match="preempted: step 4 saved in .*the same command resumes"):
    fit(workdir=str(tmp_path / "b"), state=fresh(), **kw)
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["3", "4"]
  monkeypatch.undo()
  logs = []
  resumed = fit(workdir=str(tmp_path / "b"), state=fresh(), **{**kw, "log": logs.append})
  assert "resuming at step 4" in logs[0]
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  assert [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_that_cannot_be_restored_is_an_error_naming_it(tmp_path):
  fresh, step_fn, data = _fit_setup()
  kw = dict(name="t", workdir=str(tmp_path), step_fn=step_fn, data=data, batch_events=2, steps=3, seed=0,
            ckpt_every=3, log=lambda *_: None)
  fit(state=fresh(), **kw)
  step_dir = tmp_path / "checkpoints" / "3"
  for name in os.listdir(step_dir):  # what a disk or a hand can leave: the step's folder, emptied
    shutil.rmtree(step_dir / name) if os.path.isdir(step_dir / name) else os.remove(step_dir / name)
  with pytest.raises(RunFolderError, match=f"{step_dir}: cannot restore this checkpoint .*remove that folder"):
    fit(state=fresh(), **kw)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
  fresh, step_fn, data = _fit_setup()
  calls = []

  def poisoned(state, batch, rng):
    state, m = step_fn(state, batch, rng)
    calls.append(1)
    return state, {**m, "loss": m["loss"] * (np.nan if len(calls) == 3 else 1.0)}

  with pytest.raises(FloatingPointError, match="at step 3"):
    fit(name="t", workdir=str(tmp_path), state=fresh(), step_fn=poisoned, data=data, batch_events=2, steps=6, seed=0,
        log=lambda *_: None)
  assert not os.path.exists(tmp_path / "checkpoints" / "3")
