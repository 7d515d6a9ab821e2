"""Two processes on one machine, 4 CPU devices each, joined by
`mfjax.parallel.distributed` into one (2, 2, 2) mesh: the multi-host path
(per-process batch rows, a sharded train step, a sharded rollout gathered back,
orbax checkpoints written by both and restored onto another mesh) gives what
this one process computes on its 8 devices; a SIGTERM to one process (a
preemption notice) makes both save the same step and stop."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import mf_setup
from mfjax.ibtune import TrainState, jit_train_step
from mfjax.rollout import simulate

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _fit_rows(workdir) -> tuple[list, list]:
  """A `run_fit` workdir's metrics.jsonl rows and checkpoint steps."""
  return ([json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()],
          sorted(os.listdir(workdir / "checkpoints")))


def test_two_processes_equal_one(tmp_path):
  out, workdir, processes = tmp_path / "two.json", tmp_path / "two_fit", 2
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(out), "WORKDIR": str(workdir),
         # conftest's XLA flags (they make the numbers this process compares), 4 devices each
         "XLA_FLAGS": " ".join([f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
                               + [f"--xla_force_host_platform_device_count={8 // processes}"]),
         "PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}", "JAX_NUM_PROCESSES": str(processes),
         # each process's own compile cache serves the programs it builds again (run_fit's first step)
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_worker.py")],
                            env={**env, "JAX_PROCESS_ID": str(i),
                                 "JAX_COMPILATION_CACHE_DIR": str(tmp_path / f"xla{i}")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(processes)]
  logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = json.loads(out.read_text())
  assert got["processes"] == 2 and got["devices"] == 8 and got["local_rows"] == 4

  import multiprocess_worker as worker  # the workers' model, loss and optimizer, built here (no distributed join)
  batch = {k: jnp.asarray(v) for k, v in mf_setup.make_batch(seed=3, e=8).items()}
  state = TrainState(jnp.int32(0), jax.tree.map(jnp.array, worker.params), worker.tx.init(worker.params))
  _, metrics = jit_train_step(loss_fn=worker.loss_fn, tx=worker.tx)(state, batch, jax.random.PRNGKey(7))
  np.testing.assert_allclose(got["loss"], float(metrics["loss"]), rtol=1e-6)
  ref = simulate(worker.model, worker.params, batch, method="mf", encoder=worker.encoder, context=mf_setup.CONTEXT,
                 rng=jax.random.PRNGKey(11), warmup=2)
  np.testing.assert_array_equal(np.asarray(got["tokens"]), np.asarray(ref.tokens))

  # orbax across processes: every process saves its shards at step 2 on (2, 2, 2); the
  # resume restores them onto (4, 2, 1) and trains on, as this process does on the same meshes
  worker.run_fit(str(tmp_path / "one_fit"), log=lambda *_: None)
  (two, two_ckpts), (one, one_ckpts) = _fit_rows(workdir), _fit_rows(tmp_path / "one_fit")
  assert two_ckpts == one_ckpts == ["2", "4"]
  assert [r["step"] for r in two] == [1, 2, 3, 4]  # written once, by process 0
  np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-6)

  # a preemption notice to one host (SIGTERM to process 1 after step 3): both save the same step past it, then stop
  k = got["preempted_at"]
  rows, ckpts = _fit_rows(tmp_path / "two_fit_preempted")
  assert k > 3 and ckpts == [str(k)]
  assert [r["step"] for r in rows] == list(range(1, k + 1))
