"""Sharding on a (data, fsdp, tensor) mesh of 8 forced CPU devices (conftest
sets --xla_force_host_platform_device_count=8): the train step and rollouts
equal the single-device ones, parameters are laid out as the rules say, and a
checkpoint saved on one mesh restores on another."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import mf_setup
from mfjax.ibtune import (TrainState, fit, ib_tune_loss, jit_train_step, make_optimizer, sharded_state,
                          text_ib_tune_loss)
from mfjax.model import Decoder, init_params
from mfjax.parallel import MeshConfig, ShardingError, axes, global_batch, init_sharded, make_mesh
from mfjax.parallel.mesh import RULES, logical_to_spec, shardings_from_specs
from mfjax.parallel.mesh import activation_sharding, batch_sharding, constrain, with_activation_sharding
from mfjax.parallel.state import place, policy_shardings, to_host
from mfjax.rollout import simulate

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (conftest forces 8 CPU devices)")

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def _loss_fn(model, encoder):
  return lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                       rng=rng, beta=0.01)


@pytest.fixture(scope="module")
def setup():
  model, encoder, params = mf_setup.make_model()
  batch = mf_setup.make_batch(seed=3, e=8)
  tx = make_optimizer(params, trainable="lora+mf", lr=1e-2, steps=10, warmup=1)
  return model, encoder, params, batch, _loss_fn(model, encoder), tx


def _grads(loss_fn, params, batch, mesh=None, **jit_kw):
  """The loss's gradient, jitted; with a mesh, its activations pinned as in the train step."""
  grad = lambda p, b: jax.grad(lambda q: loss_fn(params=q, batch=b, rng=jax.random.PRNGKey(7), step=0)[0])(p)
  return jax.jit(with_activation_sharding(grad, mesh), **jit_kw)(params, batch)


def _expected_spec(path: str) -> P:
  """The layout the rules promise for the tiny model's parameters, written out."""
  table = {"lm/embedder/embedding": P("tensor", "fsdp"),
           "lm/layers/attn/q/kernel": P(None, "fsdp", "tensor"),
           "lm/layers/attn/k/kernel": P(None, "fsdp", "tensor"),
           "lm/layers/attn/o/kernel": P(None, "tensor", None, "fsdp"),
           "lm/layers/mlp/up/kernel": P(None, "fsdp", "tensor"),
           "lm/layers/mlp/down/kernel": P(None, "tensor", "fsdp"),
           "lm/layers/attn/q/lora/a": P(None, "fsdp"),
           "lm/layers/attn/q/lora/b": P(None, None, "tensor"),
           "lm/lm_head": P("fsdp", "tensor")}
  return table.get(path)


def test_mesh_config_fills_and_refuses():
  assert MeshConfig(-1, 2, 2).resolve(8) == (2, 2, 2)
  assert MeshConfig(2, -1, 1).resolve(8) == (2, 4, 1)
  assert dict(make_mesh((2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert MeshConfig(2, 2, 1).resolve(8) == (2, 2, 1)  # the first 4 devices
  assert make_mesh((1, 1, 1)).devices.size == 1
  with pytest.raises(ShardingError, match="needs 16 devices"):
    MeshConfig(2, 4, 2).resolve(8)
  with pytest.raises(ShardingError, match="at most one axis"):
    MeshConfig(-1, -1, 1).resolve(8)
  with pytest.raises(ShardingError, match="do not divide"):
    MeshConfig(-1, 3, 1).resolve(8)


def test_rules_fail_loudly_and_leave_indivisible_dims_whole():
  mesh = make_mesh((2, 2, 2))
  with pytest.raises(ShardingError, match=r"param \['w'\].*'mystery'.*matches no sharding rule"):
    shardings_from_specs({"w": P("embed", "mystery")}, {"w": jnp.zeros((4, 4))}, mesh)
  with pytest.raises(ShardingError, match=r"param \['w'\].*no logical axis names"):
    shardings_from_specs({"w": None}, {"w": jnp.zeros((4, 4))}, mesh)
  spec, notes = logical_to_spec((axes.EMBED, axes.HEADS), (6, 3), mesh, RULES)  # 3 heads over tensor=2
  assert spec == P("fsdp") and "not divisible" in notes[0]
  spec, notes = logical_to_spec((axes.MLP, axes.VOCAB), (4, 4), mesh, RULES)  # both map to tensor
  assert spec == P("tensor") and "already used" in notes[0]
  with pytest.raises(ShardingError, match="unknown or repeated mesh axes"):
    logical_to_spec((axes.EMBED,), (4,), mesh, ((axes.EMBED, ("fsdp", "fsdp")),))
  with pytest.raises(ShardingError, match="unknown or repeated mesh axes"):
    logical_to_spec((axes.EMBED,), (4,), mesh, ((axes.EMBED, "model"),))


def test_activation_rules_split_rows_over_data_and_fsdp():
  """An activation's rows split over the product of data and fsdp (size-1 axes
  left out), its MLP width over tensor; rows the product does not divide stay whole."""
  names = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)
  assert logical_to_spec(names, (8, 3, 4), make_mesh((2, 2, 2)))[0] == P(("data", "fsdp"), None, "tensor")
  assert logical_to_spec(names, (8, 3, 4), make_mesh((8, 1, 1)))[0] == P("data")
  assert logical_to_spec(names, (8, 3, 4), make_mesh((1, 4, 2)))[0] == P("fsdp", None, "tensor")
  spec, notes = logical_to_spec(names, (6, 3, 4), make_mesh((2, 2, 2)), where="activation")
  assert spec == P(None, None, "tensor") and notes == [
      "activation: dim 0 (act_batch, size 6) unsplit, not divisible by dataxfsdp=4"]


def test_constrain_pins_only_inside_activation_sharding():
  mesh = make_mesh((2, 2, 2))
  x = jnp.arange(8 * 3 * 4, dtype=jnp.float32).reshape(8, 3, 4)
  names = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)
  assert constrain(x, names) is x  # nothing to pin to: the array itself
  with activation_sharding(None):
    assert constrain(x, names) is x
  pinned = jax.jit(with_activation_sharding(lambda a: constrain(a * 2, names), mesh))(x)
  assert pinned.sharding.spec == P(("data", "fsdp"), None, "tensor")
  np.testing.assert_array_equal(np.asarray(pinned), 2 * np.asarray(x))
  free = jax.jit(with_activation_sharding(lambda a: constrain(a * 2, names), None))(x)
  assert free.sharding.is_fully_replicated


def test_model_activations_follow_the_rules_on_a_mesh(setup):
  """Under `activation_sharding`, the LM's logits come out rows over data x fsdp and
  vocabulary over tensor, its hidden states rows over data x fsdp (whole width),
  with the values of the unsharded forward."""
  model, _, params, batch, _, _ = setup
  mesh = make_mesh((2, 2, 2))
  lm = params["lm"]
  rows = lambda x: jnp.asarray(x).reshape(-1, x.shape[-1])[:16]
  tokens, mask = rows(batch["prompt_ids"]), rows(batch["prompt_mask"])
  forward = lambda p, t, m: model.apply({"params": p}, t, m, return_hidden=True)
  ref_logits, ref_hidden = jax.jit(forward)(lm, tokens, mask)
  p_sh = policy_shardings(model, None, {"lm": lm}, mesh)["lm"]
  logits, hidden = jax.jit(with_activation_sharding(forward, mesh), in_shardings=(p_sh, batch_sharding(mesh),
                                                                                  batch_sharding(mesh)))(
      place(lm, p_sh), tokens, mask)
  assert logits.sharding.spec == P(("data", "fsdp"), None, "tensor")
  assert hidden.sharding.spec == P(("data", "fsdp"))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(hidden), np.asarray(ref_hidden), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,loop", [(m, False) for m in MESHES] + [((2, 2, 2), True)])
def test_train_step_on_mesh_equals_single_device(setup, shape, loop):
  """On each mesh, the sharded step equals the single-device one; `loop`: the mesh
  runs the stacked layers as a loop (model.layer_loop=unroll, as GPU runs do), the
  reference scans them."""
  model, encoder, params, batch, loss_fn, tx = setup
  ref_state = TrainState(jnp.int32(0), jax.tree.map(jnp.array, params), tx.init(params))
  host_batch = {k: jnp.asarray(v) for k, v in batch.items()}
  ref, ref_m = jit_train_step(loss_fn=loss_fn, tx=tx)(ref_state, host_batch, jax.random.PRNGKey(7))
  g_ref = _grads(loss_fn, params, host_batch)
  if loop:
    assert model.cfg.scan_layers
    model = Decoder(model.cfg.replace(unroll_stacked=True))
    loss_fn = _loss_fn(model, encoder)

  mesh = make_mesh(shape)
  p_sh = policy_shardings(model, encoder, params, mesh)
  state, shardings = sharded_state(params, tx, mesh=mesh, param_shardings=p_sh)
  step_fn = jit_train_step(loss_fn=loss_fn, tx=tx, mesh=mesh, state_shardings=shardings)
  sharded_batch = global_batch(batch, mesh)
  out, m = step_fn(state, sharded_batch, jax.random.PRNGKey(7))
  assert step_fn._cache_size() == 1

  np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m["grad_norm"]), float(ref_m["grad_norm"]), rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref.params)[0], jax.tree.leaves(out.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  # The gradient itself (Adam's first step only sees its sign), up to float32
  # summation order. Sharding splits each sum over the batch into per-device
  # partial sums; rounding then moves an element by a few ulps of the terms
  # summed, whose size is the tensor's scale, not the element's own. So each
  # tensor gets 1e-6 of its largest magnitude as absolute slack besides
  # rtol 1e-5 (a sharding bug, a sum missed or counted twice, moves elements by
  # their own size). A per-element atol of 1e-7 alone sits at the noise floor
  # (0.87 to 0.97 of the tolerance on the three meshes), so any change of float32
  # order in the model would fail it.
  # Compiled unpinned (parallel.pin_activations=false) on the scan's meshes, so that
  # both layouts are checked; pinned for the loop, whose unpinned gradient XLA's
  # partitioner compiles with two "involuntary full rematerialization" warnings.
  g = _grads(loss_fn, place(params, p_sh), sharded_batch, mesh if loop else None,
             in_shardings=(p_sh, batch_sharding(mesh)), out_shardings=p_sh)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_ref)[0], jax.tree.leaves(g)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7 + 1e-6 * np.abs(a).max(), err_msg=jax.tree_util.keystr(path))

  # the parameters (and Adam's moments) really are laid out as the rules say
  flat = {"/".join(str(getattr(k, "key", k)) for k in p): x for p, x in jax.tree_util.tree_flatten_with_path(
      out.params)[0]}
  checked = 0
  for path, x in flat.items():
    want = _expected_spec(path)
    if want is None:
      continue
    want = [a if a is not None and mesh.shape[a] > 1 else None for a in want]  # size-1 axes are not named
    while want and want[-1] is None:
      want.pop()
    want = P(*want)
    assert x.sharding.spec == want, (path, x.sharding.spec, want)
    checked += 1
  assert checked == 9  # every entry of the table was found
  assert flat["mf/head/kernel"].sharding.is_fully_replicated
  mu = [x for p, x in jax.tree_util.tree_flatten_with_path(out.opt_state)[0]
        if x.shape == flat["lm/layers/attn/q/lora/a"].shape and "lora" in jax.tree_util.keystr(p)]
  assert mu and all(x.sharding.spec == flat["lm/layers/attn/q/lora/a"].sharding.spec for x in mu)


def test_text_mean_field_train_step_on_a_mesh_equals_single_device(setup):
  """IB-Tune with the text mean field (summaries sampled inside the step) on a
  (2, 2, 2) mesh: the same loss terms and the same update as on one device."""
  model, _, params, batch, _, _ = setup
  params = {"lm": params["lm"], "mf_lm": params["lm"]}
  loss_fn = lambda params, batch, rng, step: text_ib_tune_loss(model=model, spec=mf_setup.TEXT, params=params,
                                                               batch=batch, rng=rng, beta=0.01)
  tx = make_optimizer(params, trainable="lora", lr=1e-2, steps=10, warmup=1)
  state = TrainState(jnp.int32(0), jax.tree.map(jnp.array, params), tx.init(params))
  ref, ref_m = jit_train_step(loss_fn=loss_fn, tx=tx)(state, {k: jnp.asarray(v) for k, v in batch.items()},
                                                      jax.random.PRNGKey(7))
  mesh = make_mesh((2, 2, 2))
  state, shardings = sharded_state(params, tx, mesh=mesh, param_shardings=policy_shardings(model, None, params, mesh))
  out, m = jit_train_step(loss_fn=loss_fn, tx=tx, mesh=mesh, state_shardings=shardings)(
      state, global_batch(batch, mesh), jax.random.PRNGKey(7))
  for k in ("loss", "relevance", "compression", "summary_tokens"):
    np.testing.assert_allclose(float(m[k]), float(ref_m[k]), rtol=1e-5, err_msg=k)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref.params)[0], jax.tree.leaves(out.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  assert out.params["mf_lm"]["lm_head"].sharding.spec == P("fsdp", "tensor")  # the writer follows the LM's rules


def test_init_sharded_matches_init_params():
  model, _, _ = mf_setup.make_model()
  base = Decoder(model.cfg.replace(lora=None))
  mesh = make_mesh((2, 2, 2))
  rng = jax.random.PRNGKey(5)
  params, shardings = init_sharded(lambda: base.init(rng, jnp.zeros((1, 8), jnp.int32))["params"], mesh)
  ref = init_params(base, rng)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  emb = params["embedder"]["embedding"]
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert {s.data.shape for s in emb.addressable_shards} == {(emb.shape[0] // 2, emb.shape[1] // 2)}


@pytest.mark.parametrize("method,intervened", [("mf", False), ("popular", True), ("mf_text", False)])
def test_sharded_rollout_equals_unsharded(setup, method, intervened):
  model, encoder, params, batch, _, _ = setup
  params = {**params, "mf_lm": params["lm"]}  # mf_text's summary writer (other methods do not read it)
  if intervened:  # step 2's agents forced to injected actions (mfjax.data.intervention): `forced` splits over events
    forced = np.zeros(batch["agent_mask"].shape, bool)
    forced[:, 2] = batch["agent_mask"][:, 2]
    batch = {**batch, "forced": forced, "action_ids": np.where(forced[..., None] & (batch["action_mask"] > 0), 9,
                                                               batch["action_ids"])}
  kw = dict(method=method, encoder=encoder, context=mf_setup.CONTEXT, rng=jax.random.PRNGKey(11), warmup=2,
            text=mf_setup.TEXT)
  ref = simulate(model, params, batch, **kw)
  mesh = make_mesh((2, 2, 2))
  out = simulate(model, params, batch, mesh=mesh, **kw)
  assert out.tokens.sharding.spec == P(("data", "fsdp"))
  ref, out = jax.device_get(ref), to_host(out)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.summary, ref.summary)
  np.testing.assert_array_equal(out.mask, ref.mask)
  np.testing.assert_allclose(out.real_logprobs, ref.real_logprobs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.mf_kl, ref.mf_kl, rtol=1e-5, atol=1e-5)


def test_sharded_rollout_can_donate_the_real_actions(setup):
  """donate_batch: the same tokens; the action ids' buffer is consumed (reused for the
  sampled tokens), the rest of the batch is left alone, and no donation goes unused."""
  import warnings

  from mfjax.parallel import global_batch
  model, encoder, params, batch, _, _ = setup
  kw = dict(method="mf", encoder=encoder, rng=jax.random.PRNGKey(11), warmup=2)
  mesh = make_mesh((2, 2, 2))
  ref = to_host(simulate(model, params, batch, mesh=mesh, **kw))
  fresh = global_batch({k: np.asarray(v) for k, v in batch.items()}, mesh)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # "Some donated buffers were not usable" would fail here
    out = to_host(simulate(model, params, fresh, mesh=mesh, donate_batch=True, **kw))
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.real_logprobs, ref.real_logprobs, rtol=1e-6, atol=1e-6)
  assert fresh["action_ids"].is_deleted()
  assert not any(fresh[k].is_deleted() for k in fresh if k != "action_ids")


def test_checkpoint_restores_onto_another_mesh(setup, tmp_path):
  model, encoder, params, batch, loss_fn, tx = setup
  data = mf_setup.make_batch(seed=4, e=16)

  def stage(shape, steps):
    mesh = make_mesh(shape)
    state, shardings = sharded_state(params, tx, mesh=mesh,
                                     param_shardings=policy_shardings(model, encoder, params, mesh))
    step_fn = jit_train_step(loss_fn=loss_fn, tx=tx, mesh=mesh, state_shardings=shardings)
    return fit(name="t", workdir=str(tmp_path), state=state, step_fn=step_fn, data=data, batch_events=8, steps=steps,
               seed=0, log_every=1, ckpt_every=2, mesh=mesh, log=lambda *_: None)

  saved = stage((8, 1, 1), 2)
  restored = stage((2, 2, 2), 2)  # finished: restored, not trained
  assert int(restored.step) == 2
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  q = restored.params["lm"]["layers"]["attn"]["q"]["kernel"]
  assert q.sharding.mesh.shape["tensor"] == 2 and q.sharding.spec == P(None, "fsdp", "tensor")
  resumed = stage((2, 4, 1), 4)  # and training goes on from step 2 on a third mesh
  assert int(resumed.step) == 4


def _tool(name):
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_aot_memory_report_shrinks_with_sharding(capsys):
  import json
  import os
  tool = _tool("aot_memory.py")
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  rows = {}
  for mesh in ("8,1,1", "2,2,2"):
    small_encoder = ["--set", "mf.slots=1", "--set", "mf.feature_size=8", "--set", "mf.hidden_size=8",
                     "--set", "mf.head_hidden=8"]  # the LM dominates
    tool.main(["--config", quick, "--mesh", mesh, "--what", "train", "--events", "8", *small_encoder])
    rows[mesh] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for r in rows.values():
    assert r["what"] == "train_step" and r["peak_bytes"] >= r["argument_bytes"] > r["state_bytes"] > r["param_bytes"] > 0
  assert rows["2,2,2"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  # replicated on (8,1,1); embed over fsdp=2 and heads/mlp/vocab over tensor=2 on (2,2,2)
  assert rows["2,2,2"]["param_bytes"] <= 0.3 * rows["8,1,1"]["param_bytes"]


def test_pinned_activations_cut_the_collectives_of_an_fsdp_step(capsys):
  """Without pinned activations XLA's partitioner ran the (2, 4, 1) train step and
  rollout with their rows replicated over fsdp, all-reducing whole activations
  (36x and 15x the collective bytes of the quickstart's default sizes: `python
  tools/aot_memory.py --config experiments/quickstart.py --mesh 2,4,1 --events 8
  --rollout-events 8`, and `--set parallel.pin_activations=false`). Unpinned,
  pinned, unpinned in one process: the sampler jitted inside the rollout must not
  serve one's trace to the other."""
  import json
  import os
  tool = _tool("aot_memory.py")
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  runs = []
  for pin, what in (("false", "train,rollout"), ("true", "train,rollout"), ("false", "rollout")):
    tool.main(["--config", quick + ":smoke", "--mesh", "2,4,1", "--events", "8", "--rollout-events", "8",
               "--set", f"parallel.pin_activations={pin}", "--what", what])
    runs.append({r["what"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())})
  free, pinned, again = runs
  assert again["simulate[mf]"]["collectives"] == free["simulate[mf]"]["collectives"]
  for what in ("train_step", "simulate[mf]"):
    assert pinned[what]["pin_activations"] is True and free[what]["pin_activations"] is False
    assert free[what]["collective_bytes"] > 0
    assert pinned[what]["collective_bytes"] < free[what]["collective_bytes"] / 4, (
        what, pinned[what]["collectives"], free[what]["collectives"])
    assert pinned[what]["traffic_bytes"] < free[what]["traffic_bytes"] / 4, (
        what, pinned[what]["traffic"], free[what]["traffic"])
    for r in (pinned[what], free[what]):  # loops run their ops more than once
      assert r["traffic_bytes"] > r["collective_bytes"] and set(r["traffic"]) == set(r["collectives"])
  # the train step's loops are scans (known trip counts); the rollout's decode loop counts at its bound
  assert pinned["train_step"]["loops_at_bound"] == 0
  assert pinned["simulate[mf]"]["loops_at_bound"] == 1 and pinned["simulate[mf]"]["loop_bound"] == 8


def test_collective_bytes_reads_each_op_once_and_async_pairs_at_their_end():
  from mfjax.aot import collective_bytes
  hlo = """
  %all-reduce.1 = f32[8,4]{1,0} all-reduce(f32[8,4]{1,0} %x), replica_groups={}, to_apply=%add
  %ags = (bf16[2,3]{1,0}, bf16[4,3]{1,0}) all-gather-start(bf16[2,3]{1,0} %a), dimensions={0}
  ROOT %agd = bf16[4,3]{1,0} all-gather-done((bf16[2,3]{1,0}, bf16[4,3]{1,0}) %ags)
  %rs = (pred[5]{0}, s32[2]{0}) reduce-scatter(pred[10]{0} %p, s32[4]{0} %q), dimensions={0}
  %fusion = f32[8,4]{1,0} fusion(f32[8,4]{1,0} %all-reduce.1), kind=kLoop, calls=%fused
  """
  assert collective_bytes(hlo) == {"all-reduce": 8 * 4 * 4, "all-gather": 4 * 3 * 2, "reduce-scatter": 5 + 2 * 4}


def test_collective_traffic_weights_each_op_by_the_loops_around_it():
  """A 16-byte psum inside a scan of 5 inside a scan of 3, and one in a while loop
  whose trip count is traced (counted at the bound given): 15 + 4 runs of it."""
  from mfjax.aot import collective_bytes, collective_traffic
  mesh = jax.make_mesh((8,), ("x",))
  mix = jax.shard_map(lambda v: v * jax.lax.psum(v.sum(0), "x"), mesh=mesh, in_specs=P("x"), out_specs=P("x"))

  def f(x, n):
    inner = lambda c, _: (jax.lax.scan(lambda c, _: (mix(c), None), c, None, length=5)[0], None)
    x, _ = jax.lax.scan(inner, x, None, length=3)
    return jax.lax.while_loop(lambda s: s[0] < n, lambda s: (s[0] + 1, mix(s[1])), (0, x))[1]

  x = jax.ShapeDtypeStruct((16, 4), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, P("x")))
  hlo = jax.jit(f).lower(x, jax.ShapeDtypeStruct((), jnp.int32)).compile().as_text()
  assert collective_bytes(hlo) == {"all-reduce": 2 * 4 * 4}
  assert collective_traffic(hlo, 4) == ({"all-reduce": (3 * 5 + 4) * 4 * 4}, 1)
  assert collective_traffic(hlo, 1) == ({"all-reduce": (3 * 5 + 1) * 4 * 4}, 1)
  with pytest.raises(ValueError, match="without an ENTRY"):
    collective_traffic("%add (a: f32[]) -> f32[] {\n}\n", 1)


def test_aot_memory_sweeps_every_mesh_of_n_devices(capsys):
  import json
  import os
  tool = _tool("aot_memory.py")
  assert tool.sweep_meshes(4) == [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 4, 1), (1, 2, 2), (1, 1, 4)]
  assert sorted(tool.sweep_meshes(12)) == sorted({(a, b, 12 // (a * b)) for a in range(1, 13) for b in range(1, 13)
                                                   if 12 % (a * b) == 0})
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  tool.main(["--config", quick + ":smoke", "--sweep", "4", "--what", "rollout", "--rollout-events", "2"])
  out, err = capsys.readouterr()
  rows = [json.loads(line) for line in out.strip().splitlines()]
  # 2 events split over data x fsdp of 1 or 2 only
  assert [tuple(r["mesh"].values()) for r in rows] == [(2, 1, 2), (1, 2, 2), (1, 1, 4)]
  assert all(r["what"] == "simulate[mf]" and r["events"] == 2 for r in rows)
  assert all(r["traffic_bytes"] > r["collective_bytes"] > 0 for r in rows)
  assert [line.split(" skipped")[0] for line in err.strip().splitlines()] == [
      "[aot_memory] mesh (4, 1, 1)", "[aot_memory] mesh (2, 2, 1)", "[aot_memory] mesh (1, 4, 1)"]
  for argv, match in ((["--sweep", "2", "--mesh", "1,1,2"], "--sweep takes"), (["--mesh", "1,2"], "give data,fsdp"),
                      (["--mesh", "1,1,2", "--what", "rolout"], "unknown 'rolout'"),
                      (["--mesh", "4,1,1", "--rollout-events", "2", "--what", "rollout"], "do not split")):
    with pytest.raises(SystemExit, match=match):
      tool.main(["--config", quick + ":smoke", *argv])


def test_aot_memory_refuses_a_bad_config_by_key():
  import os
  tool = _tool("aot_memory.py")
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  with pytest.raises(SystemExit, match="error: model.remat: unknown remat_policy 'dotz'"):
    tool.main(["--config", quick, "--set", "model.remat=dotz"])
  with pytest.raises(SystemExit, match="error: unknown config key 'model.rmat'"):
    tool.main(["--config", quick, "--set", "model.rmat=full"])
  with pytest.raises(SystemExit, match=r"error: .*nope: no config.json \(is this a Hugging Face model folder"):
    tool.main(["--config", quick, "--set", f"model.checkpoint={os.path.join(quick, 'nope')}"])


def test_aot_memory_execute_runs_the_compiled_steps_on_the_mesh(capsys):
  """--execute feeds each compiled executable real arrays laid out as its inputs
  (a layout mismatch would raise); the CPU has no allocator statistics, which
  the row says instead of inventing a number."""
  import json
  import os
  tool = _tool("aot_memory.py")
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  tool.main(["--config", quick + ":smoke", "--mesh", "2,2,2", "--execute", "--repeats", "2"])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [r["what"] for r in rows] == ["train_step", "simulate[mf]"]
  for r in rows:
    assert r["measured_peak_bytes"] is None and "no memory statistics" in r["measured_note"]
    assert r["repeats"] == 2 and r["seconds"] > 0  # timed after the measured run (the train step donates its state)
  with pytest.raises(SystemExit, match="--repeats needs --execute"):
    tool.main(["--config", quick + ":smoke", "--mesh", "2,2,2", "--repeats", "2"])


def test_pod_launcher_runs_the_command_on_every_worker(capsys):
  tool = _tool("tpu_pod.py")
  tool.main(["--name", "pod", "--zone", "us-central2-b", "--dry-run", "run", "--", "python", "-m", "mfjax", "run",
             "--config", "experiments/qwen2_lora.py", "--set", "model.checkpoint=/mnt/q"])
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1
  assert out[0].startswith("gcloud compute tpus tpu-vm ssh pod --worker=all ") and "--zone=us-central2-b" in out[0]
  assert "MFJAX_DISTRIBUTED=1 .venv/bin/python -m mfjax run --config experiments/qwen2_lora.py" in out[0]
  tool.main(["--name", "pod", "--zone", "z", "--project", "p", "--dry-run", "setup"])
  setup = capsys.readouterr().out
  assert "git -C" in setup and "scp" in setup and "--worker=all" in setup and "jax[tpu]" in setup
  with pytest.raises(SystemExit, match="needs a command"):
    tool.main(["--name", "pod", "--zone", "z", "--dry-run", "run"])


def test_checkpoint_loads_on_the_host_and_is_cut_per_device(hf_checkpoints):
  from test_hf_parity import TOL, _batch, _max_diff, _torch_logits

  from mfjax.model import hf
  path, ref = hf_checkpoints["qwen2"]
  model, host = hf.load_pretrained(path, host=True)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
  mesh = make_mesh((2, 2, 2))
  params = place({"lm": host}, policy_shardings(model, None, {"lm": host}, mesh))["lm"]
  q = params["layers"]["attn"]["q"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor")
  assert {s.data.shape for s in q.addressable_shards} == {(q.shape[0], q.shape[1] // 2, q.shape[2] // 2, q.shape[3])}
  tokens, mask = _batch()
  logits = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))(params, jnp.asarray(tokens), jnp.asarray(mask))
  assert _max_diff(logits, _torch_logits(ref, tokens, mask), mask) <= TOL


def test_rollout_memory_beyond_the_output_does_not_grow_with_the_steps(capsys):
  """The scan writes its outputs in place and reads the batch in place: XLA's temporaries of the mf
  rollout stay the same from 4 to 64 steps, and the quoted history's grow by its three numbers a slot
  (valid, real: a byte each; the repost count: 4), however long the actions."""
  import json
  import os
  tool = _tool("aot_memory.py")
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  rows = {}
  for method in ("mf", "recent"):
    tool.main(["--config", quick + ":smoke", "--mesh", "1,1,1", "--what", "rollout", "--rollout-events", "2",
               "--method", method, "--rollout-steps", "4,64"])
    rows[method] = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  E, B = 2, 16
  for method, (short, long) in rows.items():
    assert (short["what"], short["steps"], long["steps"]) == (f"simulate[{method}]", 4, 64)
    assert long["output_bytes"] > 10 * short["output_bytes"]  # the output itself grows with T
    slots = E * B * (64 - 4)
    grown = long["temp_bytes"] - short["temp_bytes"]
    assert grown <= (6 * slots if method == "recent" else 0) + 4096, (method, grown)
  with pytest.raises(SystemExit, match="--rollout-steps 'x'"):
    tool.main(["--config", quick + ":smoke", "--what", "rollout", "--rollout-steps", "x"])
