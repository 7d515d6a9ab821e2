"""Run folders: one config per workdir, progress lines, JSON outputs, and the
compiled programs kept between runs.

A workdir belongs to the config that created it (saved as config.json); a
rerun with the same config resumes, a different one is refused with the keys
that differ, so nothing already written is overwritten silently.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections

# JAX's persistent compilation cache for the CLI's jobs (`use_compile_cache`)
COMPILE_CACHE_ENV = "MFJAX_COMPILE_CACHE"
COMPILE_CACHE_DEFAULT = os.path.join("~", ".cache", "mfjax", "xla")
COMPILE_CACHE_MAX_BYTES = 4 << 30


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


def use_compile_cache() -> Optional[str]:
  """Keep compiled XLA programs on disk for later runs (JAX's persistent
  compilation cache; on GPUs the autotuning results too): a resumed, repeated
  or similar run loads what an earlier one compiled instead of compiling again
  (the quickstart's smoke run took 76 s, then 33 s with the cache warm, with the
  same results). The cache is keyed by the program, device and JAX version, so
  a stale entry is never used. Where: $MFJAX_COMPILE_CACHE ('off' or '' turns
  it off), else a directory already set for JAX (JAX_COMPILATION_CACHE_DIR, a
  test's), else ~/.cache/mfjax/xla, its least recently used entries evicted past
  4 GiB. Returns the directory in use, or None."""
  setting = os.environ.get(COMPILE_CACHE_ENV)
  if setting is not None and setting.strip().lower() in ("", "0", "off", "none"):
    return None
  if jax.config.jax_compilation_cache_dir and setting is None:
    return jax.config.jax_compilation_cache_dir
  path = os.path.abspath(os.path.expanduser(setting or COMPILE_CACHE_DEFAULT))
  jax.config.update("jax_compilation_cache_dir", path)
  if jax.config.jax_compilation_cache_max_size < 0:
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
  return path
