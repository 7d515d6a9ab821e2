"""What every job shares: progress lines, JSON outputs, training logs and
checkpoints read back after a crash (a file that cannot be read is a
RunFolderError naming it), where a process computes (`environment`), and the
compiled programs kept between runs. The run folder's layout and the checks of
whether a command may use one: `mfjax.workdir`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Optional

import jax
import orbax.checkpoint as ocp

from mfjax.errors import UserError

# JAX's persistent compilation cache for the CLI's jobs (`use_compile_cache`)
COMPILE_CACHE_ENV = "MFJAX_COMPILE_CACHE"
COMPILE_CACHE_DEFAULT = os.path.join("~", ".cache", "mfjax", "xla")
COMPILE_CACHE_MAX_BYTES = 4 << 30


class RunFolderError(UserError):
  """A file in a run folder that cannot be read; the message names it (and the line)."""


class Preempted(RuntimeError):
  """A training loop stopped after saving its state on a preemption notice: the same command resumes."""


def read_json(path: str):
  """The JSON in `path` (a run folder's own file), or RunFolderError naming it."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise RunFolderError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); "
                         "this file is the run's own, not to be edited by hand") from None


def _log_lines(path: str) -> tuple[list[str], list[tuple[str, dict]]]:
  """The lines of a run's log (one JSON object per line) and the (line, row) pairs among them: blank
  lines and a last line cut short by a crash are left out; any other line that is not JSON is a
  RunFolderError naming it."""
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  rows = []
  for i, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rows.append((line, json.loads(line)))
    except json.JSONDecodeError as e:
      if i == len(lines) and not line.endswith("\n"):  # the write the crash cut short
        continue
      raise RunFolderError(f"{path}:{i}: not valid JSON ({e.msg}); this log is the run's own, "
                           "not to be edited by hand") from None
  return lines, rows


def read_jsonl(path: str) -> list[dict]:
  """The rows of a run's log (`metrics.jsonl`), read as `resume_jsonl` reads them."""
  return [row for _, row in _log_lines(path)[1]]


def append_jsonl(path: str, row: dict) -> None:
  """Add `row` as the last line of the log `path` (one JSON object per line)."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")


def resume_jsonl(path: str, last_step: int) -> None:
  """Before a training loop resumes from its checkpoint at `last_step` (0: none):
  drop the rows of the log `path` (one JSON object per line, each with its
  "step") written after it, by a run that crashed between a log line and the next
  save, so that no step is logged twice. A last line cut short by the crash goes
  too; any other line that is not JSON is a RunFolderError naming it. A file
  that needs no change is not written (another run may be reading it)."""
  if not os.path.exists(path):
    return
  lines, rows = _log_lines(path)
  keep = [line for line, row in rows if row.get("step", 0) <= last_step]
  if keep != lines:
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(keep)


def restore_latest(mngr: ocp.CheckpointManager, state):
  """`state` restored from the manager's latest checkpoint (onto the shardings of
  `state`'s arrays), or `state` itself where there is none; a checkpoint that
  cannot be restored is a RunFolderError naming its folder."""
  step = mngr.latest_step()
  if step is None:
    return state
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(state))
  except Exception as e:  # orbax raises many kinds; each means this folder cannot give the state back
    where = os.path.join(str(mngr.directory), str(step))
    raise RunFolderError(f"{where}: cannot restore this checkpoint ({type(e).__name__}: {e}); remove that folder "
                         "to resume from the checkpoint before it, if any") from e


def restore_params(ckpt_dir: str, step: int, params, shardings):
  """The `params` of the TrainState checkpointed at `step` under `ckpt_dir`, alone (its optimizer
  state is not read), placed on `shardings`; `params` gives the tree and shapes (arrays or
  ShapeDtypeStructs). A checkpoint that cannot give them is a RunFolderError naming its folder."""
  where = os.path.join(ckpt_dir, str(step))
  restore_args = {"params": jax.tree.map(lambda _, s: ocp.ArrayRestoreArgs(sharding=s), params, shardings)}
  abstract = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)}
  differ = _shapes_differ(os.path.join(where, "default"), abstract["params"])
  if differ:  # said before any read starts (a restore that fails part-way leaves orbax's reads unawaited)
    raise RunFolderError(f"{where}: cannot restore the parameters of this checkpoint (other shapes: "
                         f"{'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''})")
  try:
    return ocp.PyTreeCheckpointer().restore(os.path.join(where, "default"), args=ocp.args.PyTreeRestore(
        abstract, restore_args=restore_args, partial_restore=True))["params"]
  except Exception as e:  # orbax raises many kinds; each means this folder cannot give the parameters back
    raise RunFolderError(f"{where}: cannot restore the parameters of this checkpoint ({type(e).__name__}: {e})") from e


def _shapes_differ(path: str, params) -> list[str]:
  """'key: (checkpoint shape) here, (shape) wanted' for each parameter of `params` whose shape differs from
  the checkpoint's at `path` (by its metadata; nothing is read); [] where the metadata cannot say."""
  from etils import epath  # orbax's path type
  try:
    stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path)).tree["params"]
    shapes = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(stored)}
  except Exception:  # noqa: BLE001 (no metadata to read: the restore says what is wrong)
    return []
  out = []
  for k, x in jax.tree_util.tree_leaves_with_path(params):
    have = shapes.get(jax.tree_util.keystr(k))
    if have is not None and have != tuple(x.shape):
      out.append(f"{jax.tree_util.keystr(k)}: {have} here, {tuple(x.shape)} wanted")
  return out


def log(msg: str) -> None:
  """A progress line (process 0 only: a pod's workers would repeat it)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def write_json(path: str, obj) -> None:
  """Write JSON atomically (a crash never leaves half a file); process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
  os.replace(tmp, path)


def _cpu() -> tuple[str, set]:
  """The CPU's model name and feature flags (Linux: /proc/cpuinfo; elsewhere what `platform` says, no flags)."""
  name, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      first = f.read().split("\n\n")[0]  # the first processor's fields
  except OSError:
    return name, flags
  fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
  return fields.get("model name", name), set(fields.get("flags", "").split())


def _commit() -> Optional[str]:
  """mfjax's git commit (`-dirty` with uncommitted changes), when it runs from a checkout; else None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.exists(os.path.join(root, ".git")):
    return None
  try:
    out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=40"],
                         capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment() -> dict:
  """Where this process computes: code, versions, devices and the CPU. A trained stage's numbers
  depend on them beyond their float32 rounding: XLA compiles for the CPU it runs on, and the vector
  width (`cpu_vector`, capped by --xla_cpu_max_isa in `xla_flags`) orders the sums, which 1000
  IB-Tune steps carry into the KL (docs/reproducibility.md)."""
  device = jax.devices()[0]
  cpu, flags = _cpu()
  versions = {}
  for package in ("jax", "jaxlib", "flax", "optax"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  vector = next((isa for flag, isa in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "")
  return {"mfjax_commit": _commit(), **versions, "python": platform.python_version(), "platform": device.platform,
          "device_kind": device.device_kind, "devices": jax.device_count(), "processes": jax.process_count(),
          "cpu": cpu, "cpu_vector": vector, "xla_flags": os.environ.get("XLA_FLAGS", "")}


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
