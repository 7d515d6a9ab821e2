"""Two processes on one machine, 4 CPU devices each, joined by
`mfjax.parallel.distributed` into one (2, 2, 2) mesh: the multi-host path
(per-process batch rows, a sharded train step, a sharded rollout gathered back,
orbax checkpoints written by both and restored onto another mesh) gives what
one process computes; a SIGTERM to one process (a preemption notice) makes both
save the same step and stop."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import mf_setup
from mfjax.ibtune import TrainState, ib_tune_loss, jit_train_step, make_optimizer
from mfjax.rollout import simulate

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(tmp_path, name: str, processes: int) -> dict:
  """Run the worker as `processes` processes sharing 8 CPU devices; its outputs and metrics.jsonl rows."""
  out, workdir = tmp_path / f"{name}.json", tmp_path / f"{name}_fit"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(out), "WORKDIR": str(workdir),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}",
         "PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}", JAX_NUM_PROCESSES=str(processes))
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_worker.py")],
                            env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(processes)]
  logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = json.loads(out.read_text())
  got["metrics"] = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  got["checkpoints"] = sorted(os.listdir(workdir / "checkpoints"))
  return got


def test_two_processes_equal_one(tmp_path):
  got = _run(tmp_path, "two", 2)
  assert got["processes"] == 2 and got["devices"] == 8 and got["local_rows"] == 4

  model, encoder, params = mf_setup.make_model()
  batch = mf_setup.make_batch(seed=3, e=8)
  loss_fn = lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                          rng=rng, beta=0.01)
  tx = make_optimizer(params, trainable="lora+mf", lr=1e-2, steps=10, warmup=1)
  state = TrainState(jnp.int32(0), jax.tree.map(jnp.array, params), tx.init(params))
  _, metrics = jit_train_step(loss_fn=loss_fn, tx=tx)(state, {k: jnp.asarray(v) for k, v in batch.items()},
                                                       jax.random.PRNGKey(7))
  np.testing.assert_allclose(got["loss"], float(metrics["loss"]), rtol=1e-6)
  ref = simulate(model, params, batch, method="mf", encoder=encoder, context=mf_setup.CONTEXT,
                 rng=jax.random.PRNGKey(11), warmup=2)
  np.testing.assert_array_equal(np.asarray(got["tokens"]), np.asarray(ref.tokens))

  # orbax across processes: every process saves its shards at step 2 on (2, 2, 2); the
  # resume restores them onto (4, 2, 1) and trains on, as one process does on the same meshes
  one = _run(tmp_path, "one", 1)
  assert got["checkpoints"] == one["checkpoints"] == ["2", "4"]
  assert [r["step"] for r in got["metrics"]] == [1, 2, 3, 4]  # written once, by process 0
  np.testing.assert_allclose([r["loss"] for r in got["metrics"]], [r["loss"] for r in one["metrics"]], rtol=1e-6)

  # a preemption notice to one host (SIGTERM to process 1 after step 3): both save the same step past it, then stop
  k = got["preempted_at"]
  assert k > 3 and os.listdir(tmp_path / "two_fit_preempted" / "checkpoints") == [str(k)]
  steps = [json.loads(line)["step"] for line in (tmp_path / "two_fit_preempted" / "metrics.jsonl").open()]
  assert steps == list(range(1, k + 1))
