"""Run folders: one config per workdir, progress lines, JSON outputs, training
logs and checkpoints read back after a crash (a file that cannot be read is a
RunFolderError naming it), and the compiled programs kept between runs.

A workdir belongs to the config that created it (saved as config.json); a
rerun with the same config resumes, a different one is refused (WorkdirError) with the keys
that differ, so nothing already written is overwritten silently (a caller names
the keys that may differ: how the run is laid out on devices, which extra stages
it trains). A workdir may
instead roll out and score the trained stages of another run (`--trained-from`,
e.g. a final report on holdout of a run selected on val), which it only reads.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from mfjax.errors import UserError

# JAX's persistent compilation cache for the CLI's jobs (`use_compile_cache`)
COMPILE_CACHE_ENV = "MFJAX_COMPILE_CACHE"
COMPILE_CACHE_DEFAULT = os.path.join("~", ".cache", "mfjax", "xla")
COMPILE_CACHE_MAX_BYTES = 4 << 30
# A workdir whose rollouts use another run's trained stages names that run here
TRAINED_FROM_FILE = "trained_from.json"
# A stage's folder: one row per session that trained steps of it, saying where (`environment`)
ENVIRONMENT_FILE = "environment.jsonl"


class RunFolderError(UserError):
  """A file in a run folder that cannot be read; the message names it (and the line)."""


class WorkdirError(UserError):
  """A workdir (or --trained-from run) this command may not use as asked; the message names it and
  says what to do instead (another --workdir, --trained-from)."""


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


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def differing_keys(a: dict, b: dict) -> list[str]:
  """The dotted keys whose values differ between two resolved configs (as JSON)."""
  fa, fb = _flat(a), _flat(b)
  return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _with_values(base: dict, src: dict, keys) -> dict:
  """`base` with the dotted `keys` set to their values in `src` (configs as JSON)."""
  out = json.loads(json.dumps(base))
  for key in keys:
    *parents, leaf = key.split(".")
    to, of = out, src
    for p in parents:
      to, of = to.setdefault(p, {}), of[p]
    to[leaf] = of[leaf]
  return out


def check_workdir(workdir: str, cfg: ml_collections.ConfigDict, may_differ: tuple[str, ...] = (),
                  rollout_only: tuple[str, ...] = (), adopt: tuple[str, ...] = (), training: bool = True) -> None:
  """Create `workdir` with config.json, or check that it holds the same config but for keys that
  start with one of `may_differ` (how the run is laid out on devices, not what it computes: a
  resume on another mesh; config.json keeps the first values) or of `adopt` (which extra stages
  the run has, each in its own folder: an IB sweep grown; config.json takes the new values), the
  latter only by a command that trains (`training`, so that a new stage is trained, not missed).
  Both are logged. A refusal where every differing key starts with one of `rollout_only` (what
  changes only the rollouts and their scoring) says how to reuse the run's trained stages
  (--trained-from)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"the workdir {workdir} is a file, not a folder; use another --workdir")
  if jax.process_index() != 0:  # process 0 checks and writes; the others only read and write checkpoints
    os.makedirs(workdir, exist_ok=True)
    return
  resolved = json.loads(cfg.to_json())
  if os.path.exists(path):
    saved = read_json(path)
    diff = differing_keys(saved, resolved)
    if [k for k in diff if not k.startswith(may_differ + (adopt if training else ()))]:
      then = "use another --workdir or remove that folder"
      if rollout_only and all(k.startswith(rollout_only) for k in diff):
        then = (f"they change only the rollouts and their scoring: to roll out its trained stages so, add "
                f"--trained-from {workdir} and give another --workdir")
      elif adopt and all(k.startswith(may_differ + adopt) for k in diff):
        then = "they change which stages the run trains: use `train` or `run`, which train the new ones"
      raise WorkdirError(f"{workdir} holds a run with a different config (keys {diff}); {then}")
    was, now = _flat(saved), _flat(resolved)
    values = lambda keys, of: ", ".join(f"{k}={of.get(k)!r}" for k in keys)
    kept = [k for k in diff if k.startswith(may_differ)]
    taken = [k for k in diff if k not in kept]
    if kept:
      log(f"[resume] {workdir} continues with {values(kept, now)} (config.json keeps the first run's "
          f"{values(kept, was)})")
    if taken:
      log(f"[resume] {workdir} goes on with {values(taken, now)}, its finished stages kept "
          f"(config.json updated from {values(taken, was)})")
      write_json(path, _with_values(saved, resolved, taken))
  else:
    os.makedirs(workdir, exist_ok=True)
    write_json(path, resolved)  # atomic: a crash never leaves a config.json that cannot be read


def check_trained_from(trained_from: str, workdir: str, cfg: ml_collections.ConfigDict,
                       may_differ: tuple[str, ...]) -> None:
  """Refuse to read the trained stages of the run in `trained_from` unless its
  config equals `cfg` on every key that does not start with one of `may_differ`
  (what changes only the rollouts and their scoring). Call before `check_workdir`."""
  path = os.path.join(trained_from, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--trained-from {trained_from} holds no run (no config.json there)")
  if os.path.realpath(trained_from) == os.path.realpath(workdir):
    raise WorkdirError(f"--trained-from names the workdir itself ({workdir}); leave it out to resume that run")
  saved = read_json(path)
  diff = [k for k in differing_keys(saved, json.loads(cfg.to_json())) if not k.startswith(may_differ)]
  if diff:
    keys = ", ".join(k + "*" if k.endswith(".") else k for k in may_differ)
    raise WorkdirError(f"{trained_from} was trained with other values of {diff}; only {keys} may differ "
                       "from the run whose stages are read")


def check_bound_to(workdir: str, trained_from: Optional[str], fresh: bool) -> bool:
  """Check that a rerun names the run its workdir reads its trained stages from
  (trained_from.json), or none if it trained its own: a workdir's rollouts never
  mix stages of two runs. True: a fresh workdir (no config.json before this
  command) that is to record `trained_from` (`record_trained_from`, once the
  workdir is made). Writes nothing."""
  if jax.process_index() != 0:
    return False
  path = os.path.join(workdir, TRAINED_FROM_FILE)
  saved = None
  if os.path.exists(path):
    saved = read_json(path).get("trained_from")
  given = os.path.abspath(trained_from) if trained_from else None
  if saved == given:
    return False
  if saved is not None:
    raise WorkdirError(f"{workdir} reads its trained stages from {saved}: pass --trained-from {saved}")
  if not fresh:
    raise WorkdirError(f"{workdir} holds a run with its own trained stages; use another --workdir "
                       "to read those of --trained-from")
  return True


def record_trained_from(workdir: str, trained_from: str) -> None:
  """Record in a new workdir where its trained stages come from (see `check_bound_to`)."""
  write_json(os.path.join(workdir, TRAINED_FROM_FILE), {"trained_from": os.path.abspath(trained_from)})


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


def stage_environments(workdir: str, stages) -> dict:
  """{stage: its ENVIRONMENT_FILE rows} for each of `stages` (folders of `workdir`) that has one."""
  paths = {name: os.path.join(workdir, name, ENVIRONMENT_FILE) for name in stages}
  return {name: read_jsonl(path) for name, path in paths.items() if os.path.exists(path)}


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
