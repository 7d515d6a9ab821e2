"""Run folders: one config per workdir, progress lines, JSON outputs.

A workdir belongs to the config that created it (saved as config.json); a
rerun with the same config resumes, a different one is refused with the keys
that differ, so nothing already written is overwritten silently.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def check_workdir(workdir: str, cfg: ml_collections.ConfigDict) -> None:
  """Create `workdir` with config.json, or check that it holds the same config."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise SystemExit(f"error: the workdir {workdir} is a file, not a folder; use another --workdir")
  if jax.process_index() != 0:  # process 0 checks and writes; the others only read and write checkpoints
    os.makedirs(workdir, exist_ok=True)
    return
  resolved = json.loads(cfg.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != resolved:
      a, b = _flat(saved), _flat(resolved)
      diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
      raise SystemExit(f"error: {workdir} holds a run with a different config (keys {diff}); "
                       "use another --workdir or remove that folder")
  else:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(resolved, f, indent=2)


def log(msg: str) -> None:
  """A progress line (process 0 only: a pod's workers would repeat it)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def write_json(path: str, obj) -> None:
  """Write JSON atomically (a crash never leaves half a file); process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
  os.replace(tmp, path)
