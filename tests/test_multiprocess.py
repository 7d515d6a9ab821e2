"""Two processes on one machine, 4 CPU devices each, joined by
`mfjax.parallel.distributed` into one (2, 2, 2) mesh: the multi-host path
(per-process batch rows, a sharded train step, a sharded rollout gathered back)
gives what one process computes."""

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


def test_two_processes_equal_one(tmp_path):
  out = tmp_path / "out.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}", "JAX_NUM_PROCESSES": "2", "OUT": str(out),
         "PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_worker.py")],
                            env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = json.loads(out.read_text())
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
