"""Run mfjax on every worker of a Cloud TPU VM pod slice (gcloud).

  python tools/tpu_pod.py --name my-v4-32 --zone us-central2-b setup
  python tools/tpu_pod.py --name my-v4-32 --zone us-central2-b run -- \\
      python -m mfjax run --config experiments/qwen2_lora.py \\
      --set model.checkpoint=/mnt/shared/Qwen2-1.5B --set data.path=/mnt/shared/ced --workdir /mnt/shared/runs/q2
  python tools/tpu_pod.py --name my-v4-32 --zone us-central2-b --dry-run run -- python -m mfjax run ...

`setup` copies this checkout (tracked files) to ~/mfjax on all workers and
installs the requirements with JAX's TPU wheel. `run` starts the command on
all workers at once with MFJAX_DISTRIBUTED=1, so each process joins the pod
(`mfjax.parallel.distributed`: coordinator and process ids come from the TPU
metadata) and one mesh spans every chip. Only process 0 prints and writes
logs and results; all take part in checkpoints.

The workdir, the checkpoint and the data must be at the same path on every
worker: a shared mount (Filestore NFS, or a gcsfuse bucket), since every
process reads the data and writes its checkpoint shards there.
`--dry-run` prints the gcloud commands instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE = "~/mfjax"


def _gcloud(args, *extra) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", *extra, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def ssh_all(args, command: str) -> list[str]:
  """One ssh to every worker (`--worker=all`) running `command`."""
  return _gcloud(args, "ssh", args.name, "--worker=all", f"--command={command}")


def commands(args) -> list[list[str]]:
  if args.action == "setup":
    archive = "/tmp/mfjax-src.tar.gz"
    return [["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, "HEAD"],
            _gcloud(args, "scp", archive, f"{args.name}:/tmp/mfjax-src.tar.gz", "--worker=all"),
            ssh_all(args, f"mkdir -p {REMOTE} && tar -xzf /tmp/mfjax-src.tar.gz -C {REMOTE} && cd {REMOTE} && "
                          "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && "
                          ".venv/bin/pip install -q -U 'jax[tpu]'")]
  if args.action == "run":
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
      cmd = cmd[1:]
    if not cmd:
      raise SystemExit("error: run needs a command after --, e.g. run -- python -m mfjax run --config ...")
    if cmd[0] in ("python", "python3"):
      cmd[0] = ".venv/bin/python"
    return [ssh_all(args, f"cd {REMOTE} && MFJAX_DISTRIBUTED=1 {shlex.join(cmd)}")]
  raise SystemExit(f"error: unknown action {args.action!r}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="TPU VM name (gcloud compute tpus tpu-vm list)")
  p.add_argument("--zone", required=True, help="its zone, e.g. us-central2-b")
  p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
  p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
  p.add_argument("action", choices=["setup", "run"])
  p.add_argument("command", nargs=argparse.REMAINDER, help="run: the command for every worker, after --")
  args = p.parse_args(argv)
  for cmd in commands(args):
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  sys.exit(main())
