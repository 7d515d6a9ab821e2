"""The run folder (workdir): what is where, and whether a command may use it.

  workdir/config.json              the resolved config (`check_workdir`: a rerun must match it)
  workdir/trained_from.json        where its trained stages come from, with --trained-from
  workdir/tokenizer/               trained on the training events (or the checkpoint's)
  workdir/<stage>/                 a training stage (`stage_dir`): checkpoints/, metrics.jsonl (its log,
                                   validation rows included: `last_validation`), environment.jsonl (where
                                   each session of it trained)
  workdir/rollouts/<tag>_seed<s>.npz   one rollout (`save_rollout`, `load_rollout`): ROLLOUT_ARRAYS
  workdir/results.json, plots/     the evaluation (`mfjax.evaluation.report.write`)

A workdir belongs to the config that created it (saved as config.json); a rerun
with the same config resumes, a different one is refused (WorkdirError) with the
keys that differ, so nothing already written is overwritten silently (a caller
names the keys that may differ: how the run is laid out on devices, which extra
stages it trains). A workdir may instead roll out and score the trained stages of
another run (`--trained-from`, e.g. a final report on holdout of a run selected on
val), which it only reads.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Optional

import jax
import ml_collections
import numpy as np

from mfjax.errors import UserError
from mfjax.runs import RunFolderError, log, read_json, read_jsonl, write_json

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"  # a stage's orbax checkpoints
METRICS_FILE = "metrics.jsonl"  # a stage's log: one row per logged step, validation terms (val_*) included
ROLLOUTS_DIR = "rollouts"
ROLLOUT_ARRAYS = ("tokens", "mask", "real_logprobs", "mf_kl")  # every rollout's, what `evaluate` reads
TEXT_ROLLOUT_ARRAYS = ("summary", "summary_mask")  # the text mean field's summaries, kept to read
ATTRIBUTE_ROLLOUT_ARRAYS = ("category",)  # an attribute-conditioned policy's drawn categories (scored for agreement)
OPTIONAL_ROLLOUT_ARRAYS = TEXT_ROLLOUT_ARRAYS + ATTRIBUTE_ROLLOUT_ARRAYS

# A workdir whose rollouts use another run's trained stages names that run here
TRAINED_FROM_FILE = "trained_from.json"
# A stage's folder: one row per session that trained steps of it, saying where (`environment`)
ENVIRONMENT_FILE = "environment.jsonl"


class WorkdirError(UserError):
  """A workdir (or --trained-from run) this command may not use as asked; the message names it and
  says what to do instead (another --workdir, --trained-from)."""


def stage_dir(workdir: str, stage: str) -> str:
  """A training stage's folder."""
  return os.path.join(workdir, stage)


def last_validation(workdir: str, stage: str) -> dict:
  """The last validation row (with val_relevance) of a stage's log, or {} before one."""
  path = os.path.join(stage_dir(workdir, stage), METRICS_FILE)
  rows = [r for r in read_jsonl(path) if "val_relevance" in r] if os.path.exists(path) else []
  return rows[-1] if rows else {}


def stage_environments(workdir: str, stages) -> dict:
  """{stage: its ENVIRONMENT_FILE rows} for each of `stages` (folders of `workdir`) that has one."""
  paths = {name: os.path.join(stage_dir(workdir, name), ENVIRONMENT_FILE) for name in stages}
  return {name: read_jsonl(path) for name, path in paths.items() if os.path.exists(path)}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


# Config keys added after run folders were made, each with the value that does what those runs did: a
# config.json without one reads as having that value (`saved_config`), so that such a run resumes, is
# evaluated again and lends its stages (--trained-from) as before.
ADDED_KEYS = {"ib.population_weight": 0.0, "mf.attributes": False, "mf.head_hidden": 128, "rollout.valid_utf8": False,
              "mf.category_features": False, "eval.corrected": False, "rollout.steps": 0,
              "rollout.agents_per_step": 0, "data.eval_min_actions": 0, "eval.drift": "",
              "mf.anchor_steps": 0, "ib.drawn_categories": 0.0, "ib.drawn_after": 3,
              "mf.state_tail": 0, "rollout.head_warmup_m": False,
              "rollout.writer_temperature": -1.0, "mf.state_numbers": False, "mf_head.steps": 0, "mf_head.lr": 3e-3,
              "mf_head.warmup": 10, "mf_head.batch_events": 32, "mf_head.events": 0, "mf.anchor": "shrunk",
              "data.topic_len": 0, "mf.anchor_words": 0, "rollout.writer_channel": 0}


def saved_config(path: str, like: Optional[dict] = None) -> dict:
  """A run folder's config.json (as JSON), with each key of ADDED_KEYS it lacks at its old value:
  those `like` (the config it is compared with) has, or, without `like`, those whose section it has
  (a pipeline run's; another command's config, the LM demo's, gains none)."""
  saved = read_json(path)
  have, wanted = _flat(saved), None if like is None else _flat(like)
  for key, value in ADDED_KEYS.items():
    *parents, leaf = key.split(".")
    if key in have or (wanted is not None and key not in wanted) or (wanted is None and parents[0] not in saved):
      continue
    node = saved
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return saved


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
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"the workdir {workdir} is a file, not a folder; use another --workdir")
  if jax.process_index() != 0:  # process 0 checks and writes; the others only read and write checkpoints
    os.makedirs(workdir, exist_ok=True)
    return
  resolved = json.loads(cfg.to_json())
  if os.path.exists(path):
    saved = saved_config(path, like=resolved)
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
  path = os.path.join(trained_from, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--trained-from {trained_from} holds no run (no config.json there)")
  if os.path.realpath(trained_from) == os.path.realpath(workdir):
    raise WorkdirError(f"--trained-from names the workdir itself ({workdir}); leave it out to resume that run")
  resolved = json.loads(cfg.to_json())
  saved = saved_config(path, like=resolved)
  diff = [k for k in differing_keys(saved, resolved) if not k.startswith(may_differ)]
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


def rollout_path(workdir: str, tag: str, seed: int) -> str:
  """Where one rollout (a method or stage `tag`, one seed) is saved."""
  return os.path.join(workdir, ROLLOUTS_DIR, f"{tag}_seed{seed}.npz")


def save_rollout(workdir: str, tag: str, seed: int, arrays: dict) -> None:
  """One rollout's arrays (ROLLOUT_ARRAYS; TEXT_ROLLOUT_ARRAYS for the text mean field,
  ATTRIBUTE_ROLLOUT_ARRAYS for an attribute-conditioned policy), written atomically: a kill
  leaves the file whole or absent, and a rerun makes only what is absent."""
  path = rollout_path(workdir, tag, seed)
  unknown = set(arrays) - set(ROLLOUT_ARRAYS + OPTIONAL_ROLLOUT_ARRAYS)
  missing = set(ROLLOUT_ARRAYS) - set(arrays)
  if unknown or missing:
    raise ValueError(f"a rollout holds {ROLLOUT_ARRAYS} (+ {OPTIONAL_ROLLOUT_ARRAYS}); got {sorted(arrays)}")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path[:-4] + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def load_rollout(workdir: str, tag: str, seed: int) -> dict:
  """The arrays of one saved rollout (`rollout_path`): ROLLOUT_ARRAYS and the drawn categories where
  it has them; RunFolderError naming a file that cannot be read."""
  path = rollout_path(workdir, tag, seed)
  try:
    with np.load(path) as f:
      return {k: f[k] for k in ROLLOUT_ARRAYS + tuple(k for k in ATTRIBUTE_ROLLOUT_ARRAYS if k in f.files)}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise RunFolderError(f"{path}: not a readable rollout ({type(e).__name__}: {e}); remove it, and `python -m "
                         "mfjax simulate` with this config and workdir writes it again") from None


def check_rollouts(workdir: str, runs: list[tuple], seeds: int) -> None:
  """FileNotFoundError naming the first rollout `evaluate` would need and not find."""
  for tag, _, _ in runs:
    for seed in range(seeds):
      path = rollout_path(workdir, tag, seed)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `python -m mfjax simulate` with this config first")
