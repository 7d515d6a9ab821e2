"""One process of tests/test_multiprocess.py: joins the others through
mfjax.parallel.distributed (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID), builds a (2, 2, 2) mesh over every process's CPU devices,
supplies only its own rows of the batch, takes one sharded train step and one
sharded rollout, and (process 0) writes the loss and the gathered tokens to $OUT.
Then `run_fit` trains 2 steps with orbax checkpoints in $WORKDIR (every process
saves its shards) and resumes to 4 on a (4, 2, 1) mesh; the test runs the same
`run_fit` in its own process to compare. Last, a fit is preempted (process 1
sends itself a SIGTERM): every process saves the same step and stops."""

import json
import os
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import mf_setup  # noqa: E402
from mfjax.ibtune import fit, ib_tune_loss, jit_train_step, make_optimizer, sharded_state  # noqa: E402
from mfjax.parallel import distributed, global_batch, make_mesh  # noqa: E402
from mfjax.parallel.mesh import process_rows  # noqa: E402
from mfjax.parallel.state import policy_shardings, to_host  # noqa: E402
from mfjax.rollout import simulate  # noqa: E402
from mfjax.runs import Preempted  # noqa: E402

if __name__ == "__main__":  # before any JAX computation; the test imports this module for `run_fit` alone
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
  distributed.initialize(True)

model, encoder, params = mf_setup.make_model()
loss_fn = lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                        rng=rng, beta=0.01)
tx = make_optimizer(params, trainable="lora+mf", lr=1e-2, steps=10, warmup=1)


def sharded_step(mesh):
  """A fresh sharded train state on `mesh` and the train step jitted for it."""
  shardings = policy_shardings(model, encoder, params, mesh)
  state, shardings = sharded_state(params, tx, mesh=mesh, param_shardings=shardings)
  return state, jit_train_step(loss_fn=loss_fn, tx=tx, mesh=mesh, state_shardings=shardings)


def run_fit(workdir: str, log=print):
  """2 steps on a (2, 2, 2) mesh, then a resume to 4 on a (4, 2, 1) mesh, in `workdir`."""
  data = mf_setup.make_batch(seed=4, e=16)
  for shape, steps in (((2, 2, 2), 2), ((4, 2, 1), 4)):
    mesh = make_mesh(shape)
    state, step_fn = sharded_step(mesh)
    state = fit(name="t", workdir=workdir, state=state, step_fn=step_fn, data=data, batch_events=8, steps=steps,
                seed=0, log_every=1, ckpt_every=2, mesh=mesh, log=log)
  return state


def run_preempted(workdir: str, mesh, step) -> int:
  """A long fit with `step`, in which process 1 sends itself a SIGTERM (a preemption notice)
  after step 3: the step every process saved before stopping."""
  fresh, _ = sharded_step(mesh)

  def log(line):
    if jax.process_index() == 1 and "step 3/" in line:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier catches it; the process lives on
  try:
    fit(name="t", workdir=workdir, state=fresh, step_fn=step, data=mf_setup.make_batch(seed=4, e=16), batch_events=8,
        steps=200, seed=0, log_every=1, ckpt_every=200, mesh=mesh, log=log)
  except Preempted as e:
    return int(re.search(r"step (\d+) saved", str(e)).group(1))
  raise AssertionError("not preempted")


def main():
  mesh = make_mesh((2, 2, 2))
  state, step = sharded_step(mesh)
  local = {k: v[process_rows(8)] for k, v in mf_setup.make_batch(seed=3, e=8).items()}  # this process's events only
  gb = global_batch(local, mesh)
  _, metrics = step(state, gb, jax.random.PRNGKey(7))
  out = to_host(simulate(model, params, gb, method="mf", encoder=encoder, context=mf_setup.CONTEXT,
                         rng=jax.random.PRNGKey(11), warmup=2, mesh=mesh))
  result = {"loss": float(metrics["loss"]), "tokens": np.asarray(out.tokens).tolist(),
            "processes": jax.process_count(), "devices": jax.device_count(),
            "local_rows": int(len(local["agent_mask"]))}
  run_fit(os.environ["WORKDIR"], log=lambda *_: None)
  result["preempted_at"] = run_preempted(os.environ["WORKDIR"] + "_preempted", mesh, step)
  if distributed.is_main():
    with open(os.environ["OUT"], "w") as f:
      json.dump(result, f)


if __name__ == "__main__":
  main()
