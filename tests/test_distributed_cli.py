"""`python -m mfjax run` as a multi-host job, started the way a pod launcher starts it
(MFJAX_DISTRIBUTED=1 and a coordinator on the loopback address): the command joins
its hosts before anything asks JAX for a backend. One process alone, then two
processes of 4 CPU devices each on one (2, 2, 2) mesh, through the CLI itself:
both complete, process 0 alone writes the results, and the two processes train
and score what the one process does on its 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from test_pipeline import QUICK, TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the smoke run at test sizes, on a (2, 2, 2) mesh: every batch splits over data x fsdp = 4
MESH = ["parallel.data=2", "parallel.fsdp=2", "parallel.tensor=2", "base.batch_events=4", "sft.batch_events=4",
        "mf_train.batch_events=4", "rollout.batch_events=4", "rollout.methods=state,mf"]
STAGES = ("base", "mf")  # the stages state and mf read


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_cli(tmp_path, workdir, processes: int) -> list[str]:
  """The CLI in `processes` processes joined through a coordinator on 127.0.0.1; their outputs."""
  args = [sys.executable, "-m", "mfjax", "run", "--config", QUICK, "--workdir", str(workdir)]
  for s in TINY + MESH:
    args += ["--set", s]
  flags = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]  # conftest's compile flags
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "MFJAX_DISTRIBUTED": "1",
         "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={8 // processes}"]),
         "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": str(processes)}
  procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**env, "JAX_PROCESS_ID": str(i),
                                 "MFJAX_COMPILE_CACHE": str(tmp_path / f"xla_{processes}_{i}")})
           for i in range(processes)]
  logs = [p.communicate(timeout=900)[0].decode(errors="replace") for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return logs


def _losses(workdir, stage) -> list[float]:
  return [json.loads(line)["loss"] for line in open(workdir / stage / "metrics.jsonl")]


def test_the_cli_joins_one_then_two_hosts_and_two_compute_what_one_does(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  (log,) = _run_cli(tmp_path, one, processes=1)
  assert "[distributed] process 0/1: 8 local of 8 devices" in log
  assert "[mesh] {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 cpu device(s), 1 process(es)" in log
  assert "KL mean" in log  # the table: the run went through to the end

  logs = _run_cli(tmp_path, two, processes=2)
  assert "[distributed] process 0/2: 4 local of 8 devices" in logs[0]
  assert "[distributed] process 1/2: 4 local of 8 devices" in logs[1]
  assert "KL mean" in logs[0] and "KL mean" not in logs[1]  # process 0 alone prints the table
  for stage in STAGES:  # written once, by process 0; every process trained the same steps
    np.testing.assert_allclose(_losses(two, stage), _losses(one, stage), rtol=1e-6, err_msg=stage)
  got, want = (json.load(open(wd / "results.json")) for wd in (two, one))
  assert set(got["methods"]) == set(want["methods"]) == {"state", "mf"}
  for method, r in want["methods"].items():
    np.testing.assert_allclose(got["methods"][method]["kl_mean"], r["kl_mean"], rtol=1e-6, err_msg=method)
  assert got["environment"]["evaluate"]["processes"] == 2
