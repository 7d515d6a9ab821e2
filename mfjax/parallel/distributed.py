"""Multi-host start-up, in one place.

On a TPU pod slice (or several GPU hosts) every host runs the same command;
`initialize` joins them into one JAX runtime before anything else touches JAX,
so that `jax.devices()` lists the devices of all hosts and one mesh spans them.
It runs only when asked: `parallel.distributed=True` in the config, or
MFJAX_DISTRIBUTED=1 in the environment (the pod launcher sets it). Coordinator,
process count and id come from JAX's own detection (TPU VMs, SLURM, Open MPI)
or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.

Afterwards only process 0 prints progress and writes logs, config.json,
results and plots (`mfjax.runs`); all processes take part in orbax saves.
"""

from __future__ import annotations

import os

import jax

ENV = "MFJAX_DISTRIBUTED"
_done = False


def wanted(enabled: bool = False) -> bool:
  return bool(enabled) or os.environ.get(ENV, "").lower() in ("1", "true", "yes")


def initialize(enabled: bool = False) -> bool:
  """Join the other processes (once) if `enabled` or $MFJAX_DISTRIBUTED is set.
  Call it before anything asks JAX for a device or its backend (`python -m mfjax`
  and every tool call it first). Returns whether this is a multi-process run."""
  global _done
  if wanted(enabled) and not _done:
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
      kwargs = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
                "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                "process_id": int(os.environ["JAX_PROCESS_ID"])}
    jax.distributed.initialize(**kwargs)
    _done = True
    print(f"[distributed] process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)
  return jax.process_count() > 1


def is_main() -> bool:
  """Process 0: the one that writes logs, results and checkpoint metadata."""
  return jax.process_index() == 0
