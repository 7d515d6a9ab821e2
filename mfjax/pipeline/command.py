"""`python -m mfjax train|simulate|evaluate|run`: the named parts of a run, in order, in one workdir.

  workdir/config.json           the resolved config (a rerun must match it, but for parallel.* and ib.sweep)
  workdir/tokenizer/            trained on the training events (or the checkpoint's)
  workdir/base/                 pre-training from scratch (skipped with model.checkpoint)
  workdir/sft/, workdir/mf/     fine-tuning stages; mf_beta<b>/ for an IB sweep; mf_text/ (text mean field)
     checkpoints/ metrics.jsonl environment.jsonl (where each session of it trained: mfjax.runs.environment)
  workdir/rollouts/<method>_seed<s>.npz   sampled actions, real-action log-probs
  workdir/rollouts/<method>_intervened_seed<s>.npz   the same with intervention.text injected
  workdir/results.json, workdir/plots/*.png   (mfjax.evaluation.report)
"""

from __future__ import annotations

import os
import time
from typing import Optional

import jax
import ml_collections

from mfjax import pipeline_config
from mfjax.configs import ConfigError
from mfjax.evaluation import plots, report
from mfjax.parallel import distributed
from mfjax.pipeline.data import Data, check_inputs, intervention_labels, prepare
from mfjax.pipeline.rollouts import CHANNEL_FILE, TAGGED, simulate_all
from mfjax.pipeline.stages import check_mesh, load_trained, mesh_from, train
from mfjax.pipeline_config import EVAL_ONLY_KEYS, LAYOUT_KEYS, STAGE_SET_KEYS, Rollout, RunPlan, check_config
from mfjax.runs import COMPILE_CACHE_ENV, RunFolderError, environment, log, read_json
from mfjax.workdir import (CONFIG_FILE, TRAINED_FROM_FILE, check_bound_to, check_rollouts, check_trained_from,
                           check_workdir, last_validation, record_trained_from, saved_config, stage_environments)


def open_run(run: str, flag: str = "--run", **overrides) -> tuple[ml_collections.ConfigDict, RunPlan, str]:
  """(config, plan, stages folder) of the run folder `run` for a tool that reads it: its config.json with
  `overrides` ({"eval.labeler": "rules"}) set and checked, and where its trained stages and tokenizer
  are (its own folder, or the run it was made --trained-from). Errors name `flag` and the file."""
  path = os.path.join(run, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{flag}: {path} not found: not a run folder of `python -m mfjax`")
  try:
    cfg = ml_collections.ConfigDict(saved_config(path))
    for key, value in overrides.items():
      section, name = key.split(".")
      cfg[section][name] = value
    check_config(cfg)
  except (RunFolderError, ConfigError) as e:
    raise ConfigError(f"{flag}: {e}") from None
  bound = os.path.join(run, TRAINED_FROM_FILE)
  stages = read_json(bound)["trained_from"] if os.path.exists(bound) else run
  return cfg, pipeline_config.plan(cfg), stages


def _triples(rollouts: tuple[Rollout, ...]) -> list[tuple[str, str, str]]:
  """(tag, method, params stage) of each rollout, as `mfjax.evaluation.report` reads them."""
  return [(r.tag, r.method, r.params) for r in rollouts]


def _sweep_validation(plan: RunPlan, workdir: str) -> dict:
  """tag -> {"beta", "population_weight", "val_relevance", "val_compression_bits", "val_population"} from
  each sweep stage's last validation (val_population: None without a population head)."""
  out = {}
  for s in plan.sweep:
    last = last_validation(workdir, s.name)
    out[s.name] = {"beta": s.beta, "population_weight": s.population_weight,
                   **{k: last.get(k) for k in ("val_relevance", "val_compression_bits", "val_population")}}
  return out


def _intervention_report(plan: RunPlan, data: Data) -> Optional[dict]:
  """What `evaluate` needs to score the intervention (None without one)."""
  iv = plan.intervention
  if iv is None:
    return None
  truth = None
  if data.truth is not None:
    truth = (data.truth.probs, data.truth_intervened.probs)
  return {"intervention": iv, "labels": intervention_labels(plan.data, iv), "world": truth, "forced": data.intervened["forced"],
          "runs": [(r.tag, r.tag[:-len("_intervened")]) for r in plan.intervened]}


def eval_request(plan: RunPlan, workdir: str, stages: str, data: Data) -> report.EvalRequest:
  """What `evaluate` scores: the rollouts in `workdir`, the trained stages' validation in `stages`."""
  return report.EvalRequest(
      workdir=workdir, tokenizer=data.tokenizer, eval_batch=data.eval, runs=tuple(_triples(plan.plain)),
      seeds=plan.sampling.seeds, warmup=plan.sampling.warmup, labeler_name=plan.data.labeler,
      label_data=plan.data.label_data, corrected=plan.data.corrected, truth=data.truth,
      sweep=_sweep_validation(plan, stages) or None, intervention=_intervention_report(plan, data),
      references=data.references, drift=plan.data.drift,
      writer_channel=_writer_channel(plan, workdir, data))


def _writer_channel(plan: RunPlan, workdir: str, data: Data) -> Optional[dict]:
  """The writer's channel the run's `mf` rollouts drew their tags through (writer_channel.json, made before
  them), or None. Whichever labeler scores (`tools/rescore.py` may name another), the tags were drawn so."""
  path = os.path.join(workdir, CHANNEL_FILE)
  used = plan.sampling.writer_channel and data.tags is not None and any(r.method in TAGGED for r in plan.plain)
  return read_json(path) if used and os.path.exists(path) else None


def _start(cfg, plan: RunPlan, workdir: str, commands: tuple, trained_from: Optional[str]):
  """Every refusal before the first write (a refused command leaves a fresh workdir unmade), then
  the workdir bound to `trained_from`'s stages where asked. Returns (the commands to run, the mesh
  or None where nothing trains or simulates)."""
  if trained_from and commands == ("train",):
    raise ConfigError("train with --trained-from: the stages are that run's; use run, simulate or evaluate")
  commands = tuple(c for c in commands if not (trained_from and c == "train"))
  if plan.model.checkpoint_required and not plan.model.checkpoint:
    raise ConfigError("model.checkpoint is required by this experiment: --set model.checkpoint=/path/to/hf-folder "
                      "(a local Hugging Face folder with config.json, safetensors and the tokenizer)")
  cache = jax.config.jax_compilation_cache_dir
  log(f"[cache] compiled programs kept for later runs in {cache} ({COMPILE_CACHE_ENV}=off: not kept)" if cache
      else f"[cache] compiled programs not kept ({COMPILE_CACHE_ENV}=DIR keeps them)")
  fresh = not os.path.exists(os.path.join(workdir, "config.json"))
  creates = "train" in commands or (trained_from and "simulate" in commands)  # may start in a fresh workdir
  if fresh and not creates:
    raise FileNotFoundError(f"{workdir} holds no run to {commands[0]}: run `python -m mfjax run` (or train) "
                            "with this config and --workdir first")
  if trained_from:
    check_trained_from(trained_from, workdir, cfg, EVAL_ONLY_KEYS)
  record = check_bound_to(workdir, trained_from, fresh)
  if trained_from and not plan.model.checkpoint and not os.path.exists(
      os.path.join(trained_from, "tokenizer", "tokenizer.json")):
    raise FileNotFoundError(f"{trained_from} has no trained tokenizer (tokenizer/tokenizer.json): "
                            "train that run first")
  mesh = None
  if "train" in commands or "simulate" in commands:
    mesh = mesh_from(plan)
    check_mesh(plan, mesh, rollouts="simulate" in commands)
  check_inputs(plan)
  check_workdir(workdir, cfg, may_differ=LAYOUT_KEYS, rollout_only=EVAL_ONLY_KEYS, adopt=STAGE_SET_KEYS,
                training="train" in commands)
  if record:
    record_trained_from(workdir, trained_from)
  if trained_from:
    log(f"[train] the trained stages of {trained_from} (read only)")
  if "evaluate" in commands and "simulate" not in commands:  # nothing here makes the rollouts: they must be there
    check_rollouts(workdir, _triples(plan.rollouts), plan.sampling.seeds)
  return commands, mesh


def earlier_jobs(workdir: str) -> list[dict]:
  """The jobs that wrote the workdir's results.json before (`results.json["jobs"]`: each one's commands, wall
  seconds and end), so that evaluating a finished run again keeps the time it took; a results.json written
  before jobs were kept gives its one `seconds` (commands unknown: None). A torn file is an error naming it."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return []
  old = read_json(path)
  if "jobs" in old:
    return list(old["jobs"])
  return [{"commands": None, "seconds": old["seconds"], "finished": None}] if "seconds" in old else []


def run(cfg: ml_collections.ConfigDict, workdir: str, commands=("train", "simulate", "evaluate"),
        trained_from: Optional[str] = None) -> Optional[dict]:
  """`python -m mfjax train|simulate|evaluate|run`: the named parts, in order, in one workdir.
  trained_from: another run's workdir whose trained stages (and tokenizer) the rollouts use,
  read only; its config must equal `cfg` but for EVAL_ONLY_KEYS. `train` is then skipped."""
  # first: checking the config asks JAX for its backend (read with .get: the check names a missing key)
  distributed.initialize(bool(cfg.get("parallel", {}).get("distributed", False)))
  check_config(cfg)
  plan = pipeline_config.plan(cfg)
  commands, mesh = _start(cfg, plan, workdir, commands, trained_from)
  stages = trained_from or workdir  # where the trained stages and the tokenizer are
  jobs = earlier_jobs(workdir) if "evaluate" in commands else []  # read first: a torn file stops the job now
  t0 = time.time()
  data = prepare(plan, stages)
  if mesh is not None:  # train, or (simulate alone, --trained-from) restore the trained stages' parameters
    trained = (train(plan, stages, data, mesh=mesh) if "train" in commands
               else load_trained(plan, stages, data, mesh=mesh))
    if distributed.is_main():
      plots.training_curves(workdir, [s.name for s in plan.stages], stages_dir=stages)
  if "simulate" in commands:
    simulate_all(plan, workdir, data, trained, mesh=mesh)
  results = None
  if "evaluate" in commands and distributed.is_main():  # host-side work on the saved rollouts: process 0 only
    scored = report.evaluate(eval_request(plan, workdir, stages, data))
    results = scored.results
    results["environment"] = {"evaluate": environment(),
                              "stages": stage_environments(stages, [s.name for s in plan.stages])}
    results["seconds"] = time.time() - t0  # this job's wall time; with the earlier jobs' in "jobs"
    results["jobs"] = jobs + [{"commands": list(commands), "seconds": results["seconds"],
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    report.write(workdir, scored)
    log(report.table(results))
  log(f"[done] {', '.join(commands)} in {time.time() - t0:.0f} s; outputs in {workdir}")
  return results
