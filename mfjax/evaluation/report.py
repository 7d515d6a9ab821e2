"""Score rollouts against the real events: decode, label, compare per step and
aggregate over seeds (`evaluate`, which writes nothing), then results.json and the
plots (`write`) and the printed table (`table`), which the caller asks for.

results.json:
  {"methods": {<method>: {"kl_mean", "kl_mean_std", "kl": {dim}, "js_mean",
               "tv_mean", "w1_mean", "dtw_mean", "nll", "seeds", "per_seed": [...],
               "kl_per_step": [T], "kl_dim_per_step": {dim: [T]},   (every step, warm-up too)
               "kl_per_event": [E],   (each event's KL over its scored steps, mean over seeds)
               "attribute_agreement": {"joint", dim}}},   (an attribute-conditioned policy: how often the
               labeler reads the category it drew, over the scored agents; mean over seeds)
               "attribute_confusion": {dim: [C][C]}   (the same: P(labelled category | drawn one), rows the
               drawn categories in DIMENSIONS order, over the scored agents of every seed; None: never drawn)
               "drawn": {"kl_mean", "kl": {dim}, "kl_per_event": [E]}   (the same: KL scored on the drawn
               categories themselves, the head's forecast before the text; `horizon` and `paired` hold it
               as the row "<method> (drawn)"; not with the writer's channel, whose tags are not the population)
   "writer_channel": {"events", "actions", "agreement"}   (mf drew its tags through the writer's channel,
             `mfjax.rollout.channel`, estimated on that many training events' actions; agreement: how often the
             labeler read the tag back there)
   "paired": {<method>: {<reference>: {"diff", "ci95", "events"}}}   (`paired`: against shrunk and the best
             method without a mean field, over the same events)
   "ib_sweep": [{"beta", "population_weight", "val_relevance", "val_compression_bits", "val_population",
                 "kl_mean", ...}]   (with ib.sweep; val_population: the population head's cross-entropy, None
               without one)
   "intervention": {"text", "step", "agents", "labels", "events", "scored_steps",
                    "methods": {<method>: {"effect": {dim: {category}}, "effect_std", "seeds"}},
                    "world": {"effect": ...}}   (with intervention.text; world: synthetic data)
   "corrected": {"source", "matrices": {dim: [C][C] P(predicted | true)}, "methods": {<method>: {"kl_mean",
                 "kl": {dim}}}, "simulators": {<name>: ...}}   (with eval.corrected: KL of proportions corrected
                 for the labeler's errors, `mfjax.evaluation.correction`, beside the raw ones above)
   "horizon": {"h": [H], "persistence": "warmup", "methods": {<method or reference>: {"kl": [H], "skill": [H],
               "skill_ci95": [H][2]}}}   (with the reference simulators: `horizon`, forecast skill against
               persistence at each step after the warm-up, paired bootstrap over events)
   "simulators": {"methods": {<name>: {"kl_mean", "kl_mean_std", "kl": {dim}, "kl_per_event"}}, ...}   (`bounds.bounds`:
                 no-model reference simulators, from the training events and the eval events' real steps;
                 on synthetic data also "world", the world's own equations run free from the warm-up)
   "environment": {"evaluate": {...}, "stages": {<stage>: [{"from_step", "to_step", ...}]}}   (where the
                  scoring ran and where each trained stage's steps were computed: `mfjax.runs.environment`)
   "rates": {"training", "real", "methods": {<method>: {dim: {category: {"rate", "diff", "ci95", "ci_family"}}}},
             "calibrated"}
            (with the reference simulators: each category's share of the scored steps' actions against the
            training events', `mfjax.evaluation.calibration`)
   "seconds": the wall time of the job that wrote this file, "jobs": [{"commands", "seconds", "finished"}]
              (every job that wrote it, oldest first: `mfjax.pipeline.command.earlier_jobs`)
   "reference": {...}, "data": {...}}

KL is KL(real || simulated) per (event, step) over the rollout steps
(t >= warm-up), averaged; DTW compares whole trajectories; NLL is the mean
per-token negative log-likelihood of the real actions of the rollout steps
under the method. Means and standard deviations are over rollout seeds.

An intervention's effect is, per category, the proportion in the rollout with
it minus that in the rollout without it (same key), averaged over the events
it was applied to and the steps after it; on the synthetic world, the world's own effect is the
same difference of its exact step distributions (`synthetic.generate` with the
intervention, every random draw unchanged).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import numpy as np
from scipy import stats

from mfjax.categories import DIMENSIONS, class_dimensions, class_of
from mfjax.data import synthetic
from mfjax.evaluation import bounds, calibration, metrics, plots
from mfjax.evaluation.labelers import RuleLabeler, category_ids
from mfjax.runs import write_json
from mfjax.workdir import check_rollouts, load_rollout


class CachedLabeler:
  """Label each distinct text once (rollouts repeat texts often); real texts (`keep=True`) also once
  across runs, in the labeler's `LabelStore` on disk where it has one."""

  def __init__(self, labeler):
    self.labeler, self.cache, self._store = labeler, {}, None

  def ids(self, texts: list[str], keep: bool = False) -> dict:
    new = sorted({t for t in texts if t not in self.cache})
    store = self.store() if keep and new else None
    if store is not None:
      held = store.get(new)
      self.cache.update(held)
      new = [t for t in new if t not in held]
    if new:
      labels = category_ids(self.labeler.label(new))
      for i, t in enumerate(new):
        self.cache[t] = {d: labels[d][i] for d in labels}
      if store is not None:
        store.add(new, labels)
        store.save()
    return {d: np.array([self.cache[t][d] for t in texts], np.int64) for d in DIMENSIONS}

  def store(self):
    """The labeler's LabelStore (read once), or None."""
    if self._store is None:
      from mfjax.evaluation.label_store import LabelStore
      self._store = LabelStore.of(self.labeler) or False
    return self._store or None


LABELERS = ("rules", "trained")  # eval.labeler: RuleLabeler, TrainedLabeler (learned from the CED hand labels)


def make_labeler(name: str, data: str = ""):
  """The labeler `eval.labeler` names. `data`: the CED folder whose train/val files hold the texts of
  the hand labels (experiments/labels) that the trained labeler learns from ("": none, e.g. the
  synthetic world)."""
  if name == "rules":
    return RuleLabeler()
  if name == "trained":
    if not data:
      raise ValueError("eval.labeler 'trained' learns from the CED hand labels (experiments/labels), whose texts "
                       "are read from the CED data folder: it needs data.source=ced (data.path)")
    return _trained_labeler(os.path.abspath(data))
  raise ValueError(f"eval.labeler {name!r} is not known offline; use one of {LABELERS} "
                   "(OpenAICompatLabeler is available from Python: mfjax.evaluation.OpenAICompatLabeler)")


@functools.lru_cache(maxsize=None)
def _trained_labeler(data: str):
  from mfjax.evaluation.trained_labeler import TrainedLabeler  # scikit-learn, only where it is used
  return TrainedLabeler.from_hand_labels(data)


def decode_actions(tokenizer, tokens_ExTxBxA, mask_ExTxBxA) -> list[str]:
  """Texts of sampled actions (flattened E*T*B), without <eos> and padding."""
  eos = tokenizer.eos_token_id
  rows = tokens_ExTxBxA.reshape(-1, tokens_ExTxBxA.shape[-1])
  keep = mask_ExTxBxA.reshape(rows.shape).astype(bool) & (rows != eos)
  return tokenizer.batch_decode([r[k].tolist() for r, k in zip(rows, keep)], skip_special_tokens=True)


def label_ids(labeler: CachedLabeler, texts: list[str], shape, keep: bool = False) -> dict:
  """Category ids {dimension: array of `shape`} of texts (flattened in order); `keep`: real texts, whose
  labels are kept on disk for later runs (`CachedLabeler`)."""
  return {d: v.reshape(shape) for d, v in labeler.ids(texts, keep=keep).items()}


def step_kls(real: dict, sim: dict, agent_mask, correct=None) -> np.ndarray:
  """[D, E, T]: each dimension's KL(real || simulated) of every (event, step)'s proportions; with
  `correct` ((dimension, proportions) -> corrected proportions: a `correction.Correction`), of the
  proportions corrected for the labeler's errors."""
  out = []
  for d, cats in DIMENSIONS.items():
    p = metrics.step_distributions(real[d], agent_mask, len(cats))[0]
    q = metrics.step_distributions(sim[d], agent_mask, len(cats))[0]
    if correct is not None:
      p, q = correct(d, np.asarray(p)), correct(d, np.asarray(q))
    out.append(np.asarray(metrics.kl(p, q), np.float64))
  return np.stack(out)


def attribute_agreement(drawn_ExTxB, sim: dict, agents_ExTxB) -> dict:
  """How often the labeler reads in an attribute-conditioned policy's action the category it drew
  (`mfjax.rollout.simulate`, RolloutSpec.tags), over the given agents: {"joint": the whole class,
  <dimension>: that dimension's category}."""
  drawn = np.asarray(drawn_ExTxB)
  n = max(int(agents_ExTxB.sum()), 1)
  out = {"joint": float(((class_of(sim) == drawn) & agents_ExTxB).sum() / n)}
  for d, of_class in class_dimensions().items():
    out[d] = float(((np.asarray(of_class)[np.maximum(drawn, 0)] == sim[d]) & agents_ExTxB).sum() / n)
  return out


def attribute_counts(drawn_ExTxB, sim: dict, agents_ExTxB) -> dict:
  """{dimension: [C_d, C_d] float64}: over the given agents, how many drew each category (rows) and the
  labeler read each category in their actions (columns); `attribute_confusion` normalises the rows."""
  drawn = drawn_ids(drawn_ExTxB)
  ok = np.asarray(agents_ExTxB, bool)
  out = {}
  for d, cats in DIMENSIONS.items():
    m = np.zeros((len(cats), len(cats)))
    np.add.at(m, (drawn[d][ok], np.asarray(sim[d])[ok]), 1.0)
    out[d] = m
  return out


def attribute_confusion(counts: dict) -> dict:
  """{dimension: [C_d][C_d] P(labelled | drawn)} from `attribute_counts` (summed over seeds); None for a
  category no agent drew."""
  return {d: [[float(x) for x in row / row.sum()] if row.sum() > 0 else None for row in m] for d, m in counts.items()}


def drawn_ids(drawn_ExTxB) -> dict:
  """An attribute-conditioned policy's drawn joint classes [E, T, B] as each dimension's category ids
  (the labeler's id layout; -1, no agent, reads as class 0 and must be masked by the caller)."""
  drawn = np.maximum(np.asarray(drawn_ExTxB), 0)
  return {d: np.asarray(of_class)[drawn] for d, of_class in class_dimensions().items()}


def drawn_scores(real: dict, drawn_ExTxB, agent_mask, weights) -> dict:
  """The metrics of a rollout scored on the categories its agents drew rather than on the labeler's
  reading of the actions written: the population the head forecast, before the text. Also "kl_cells"
  [E, T] (the mean over dimensions, as `score`'s) and "kl_per_event" [E]."""
  sim = drawn_ids(drawn_ExTxB)
  kls = step_kls(real, sim, agent_mask)
  return {**metrics.compare(real, sim, agent_mask, agent_mask, step_weights=weights), "kl_cells": kls.mean(0),
          "kl_per_event": kl_per_event(kls, weights)}


def kl_per_step(kls, agent_mask) -> np.ndarray:
  """[D, T]: each dimension's KL (`step_kls`) at each step, the mean over the events that have
  agents there (NaN where none has), at every step: in warm-up too, where a rollout's samples
  are drawn from the real history."""
  valid = np.asarray(agent_mask, bool).any(-1)  # [E, T]
  return np.stack([np.where(valid.any(0), metrics.event_mean(k, valid), np.nan) for k in kls])


def kl_per_event(kls, weights) -> np.ndarray:
  """[E]: each event's KL (`step_kls`), the mean over dimensions of its mean over its scored steps
  (`weights` [E, T]); NaN for an event with no scored step."""
  w = np.asarray(weights, np.float64)
  n = w.sum(1)
  return np.where(n > 0, (kls * w).sum(2).mean(0) / np.maximum(n, 1e-300), np.nan)


PAIRED_DRAWS = 2000  # bootstrap resamples of the events
HORIZON_REFERENCES = ("warmup", "shrunk", "global")  # the forecast references of `horizon`; warmup: persistence


def horizon(cells: dict, weights, warmup: int, persistence: str = "warmup", seed: int = 0,
            draws: int = PAIRED_DRAWS) -> dict:
  """Forecast skill at every horizon. cells: name -> [E, T] KL per (event, step) (each method's mean over seeds,
  each reference's over draws; all over dimensions); h = t - warmup + 1 for the scored steps t. Returns {"h": [H],
  "persistence", "methods": {name: {"kl": [H] (the mean over the events scored at that step), "skill": [H]
  (1 - KL / KL of `persistence`), "skill_ci95": [H][2] (percentile bootstrap over those events, the same
  resamples for every name: paired)}}}."""
  w = np.asarray(weights, bool)
  rng = np.random.default_rng(seed)
  base = np.asarray(cells[persistence], np.float64)
  out = {"h": [], "persistence": persistence, "methods": {n: {"kl": [], "skill": [], "skill_ci95": []} for n in cells}}
  for t in range(warmup, w.shape[1]):
    events = np.flatnonzero(w[:, t])
    if not events.size:
      continue
    out["h"].append(t - warmup + 1)
    resample = rng.integers(0, events.size, (draws, events.size))
    b = base[events, t]
    for name, c in cells.items():
      x = np.asarray(c, np.float64)[events, t]
      boot = 1.0 - x[resample].mean(1) / np.maximum(b[resample].mean(1), 1e-300)
      row = out["methods"][name]
      row["kl"].append(float(x.mean()))
      row["skill"].append(float(1.0 - x.mean() / max(b.mean(), 1e-300)))
      row["skill_ci95"].append([float(v) for v in np.percentile(boot, [2.5, 97.5])])
  return out


def drift(cells: dict, weights, windows, per_dimension: Optional[dict] = None, seed: int = 0,
          draws: int = PAIRED_DRAWS) -> dict:
  """How KL moves over a long rollout. cells: name -> [E, T] KL per (event, step) (as `horizon`'s);
  windows: ((first, last), ...) 1-based inclusive steps; per_dimension: name -> {dimension: [T] KL per
  step} (a method's kl_dim_per_step). Over the events scored in every window: {"windows", "events",
  "methods": {name: {"kl": [per window: the mean over events of each event's mean over the window's
  scored steps], "ratio": the last window's KL / the first's, "ratio_ci95": percentile bootstrap over
  the events (the same resamples for every name), "kl_dim": {dimension: [per window]} where given}}}."""
  w = np.asarray(weights, bool)
  T = w.shape[1]
  masks = [w & ((np.arange(T) >= a - 1) & (np.arange(T) <= b - 1))[None] for a, b in windows]
  events = np.flatnonzero(np.all([m.any(1) for m in masks], 0))
  out = {"windows": [list(x) for x in windows], "events": int(events.size), "methods": {}}
  if not events.size:
    return out
  resample = np.random.default_rng(seed).integers(0, events.size, (draws, events.size))
  for name, c in cells.items():
    c = np.asarray(c, np.float64)
    means = [((c * m).sum(1) / np.maximum(m.sum(1), 1))[events] for m in masks]  # [window][events]
    boot = means[-1][resample].mean(1) / np.maximum(means[0][resample].mean(1), 1e-300)
    row = {"kl": [float(x.mean()) for x in means], "ratio": float(means[-1].mean() / max(means[0].mean(), 1e-300)),
           "ratio_ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])]}
    if per_dimension and name in per_dimension:
      row["kl_dim"] = {d: [float(np.nanmean([np.nan if v is None else v for v in x[a - 1:b]])) for a, b in windows]
                       for d, x in per_dimension[name].items()}
    out["methods"][name] = row
  return out


BLIND = ("state", "recent", "popular", "sft", "blind")  # the methods without a mean field (or blind to it)


def paired(results: dict, seed: int = 0) -> dict:
  """Every method against each reference over the same events: {method: {reference: {"diff": the mean
  over events of KL(method) - KL(reference), "ci95": its 95% percentile bootstrap interval over events
  (scipy.stats.bootstrap, `seed`), "events"}}}. References: the `shrunk` simulator (where the results
  have it) and the best method without a mean field (lowest KL of `BLIND`: state, recent, popular, sft, blind). An
  attribute-conditioned method's drawn categories are a row of their own, "<method> (drawn)"."""
  per_event = {}
  for m, r in results["methods"].items():
    per_event[m] = np.asarray(r["kl_per_event"], np.float64)
    if "kl_per_event" in r.get("drawn", {}):  # an attribute-conditioned method's forecast, before the text
      per_event[f"{m} (drawn)"] = np.asarray(r["drawn"]["kl_per_event"], np.float64)
  refs = {}
  if "shrunk" in results.get("simulators", {}).get("methods", {}):
    refs["shrunk"] = np.asarray(results["simulators"]["methods"]["shrunk"]["kl_per_event"], np.float64)
  blind = [m for m in BLIND if m in results["methods"]]
  if blind:
    best = min(blind, key=lambda m: results["methods"][m]["kl_mean"])
    refs[best] = per_event[best]
  return {m: {name: paired_difference(x, y, seed) for name, y in refs.items()} for m, x in per_event.items()}


def paired_difference(x, y, seed: int = 0) -> dict:
  """{"diff": the mean over events of x - y ([E] KL per event, events where both are finite), "ci95":
  its 95% percentile bootstrap interval over events (scipy.stats.bootstrap, `seed`), "events"}."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  d = (x - y)[np.isfinite(x) & np.isfinite(y)]
  ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=PAIRED_DRAWS, method="percentile",
                       vectorized=True, random_state=np.random.default_rng(seed)).confidence_interval
  return {"diff": float(d.mean()), "ci95": [float(ci.low), float(ci.high)], "events": int(d.size)}


def score(real: dict, sim: dict, agent_mask, weights, real_logprobs, action_mask, correct=None) -> dict:
  """Metrics of one rollout (dimension ids [E, T, B]); with `correct`, also "kl_corrected": {dimension:
  KL over the scored steps of proportions corrected for the labeler's errors}."""
  out = metrics.compare(real, sim, agent_mask, agent_mask, step_weights=weights)
  if correct is not None:
    w = np.asarray(weights, np.float64)
    out["kl_corrected"] = {d: float((k * w).sum() / w.sum())
                           for d, k in zip(DIMENSIONS, step_kls(real, sim, agent_mask, correct))}
  kls = step_kls(real, sim, agent_mask)
  out["kl_per_event"] = kl_per_event(kls, weights)
  w = action_mask.astype(np.float32) * agent_mask[..., None] * weights[..., None, None]
  out["nll"] = float(-(real_logprobs * w).sum() / max(w.sum(), 1.0))
  out["kl_per_step"] = kl_per_step(kls, agent_mask)
  out["kl_cells"] = kls.mean(0)  # [E, T]: the mean over dimensions (`horizon`; not written)
  return out


def _steps(x) -> list:
  return [None if np.isnan(v) else float(v) for v in x]


def summarise(per_seed: list[dict]) -> dict:
  """Mean over seeds of every metric, plus kl_mean_std; the per-step KL ([D, T] per seed) as
  kl_per_step [T] (the mean over dimensions) and kl_dim_per_step {dimension: [T]}."""
  out = {"seeds": len(per_seed)}
  for k, v in per_seed[0].items():
    if k == "kl_per_step":
      steps = np.mean([s[k] for s in per_seed], 0)  # [D, T]
      out["kl_per_step"] = _steps(steps.mean(0))
      out["kl_dim_per_step"] = {d: _steps(x) for d, x in zip(DIMENSIONS, steps)}
    elif k == "kl_cells":
      out[k] = np.mean([s[k] for s in per_seed], 0)  # [E, T], the mean over seeds
    elif k == "kl_per_event":
      out[k] = _steps(np.mean([s[k] for s in per_seed], 0))  # [E], the mean over seeds
    elif isinstance(v, dict):
      out[k] = {d: float(np.mean([s[k][d] for s in per_seed])) for d in v}
    else:
      out[k] = float(np.mean([s[k] for s in per_seed]))
  out["kl_mean_std"] = float(np.std([s["kl_mean"] for s in per_seed]))
  out["per_seed"] = [{"kl_mean": s["kl_mean"], "js_mean": s["js_mean"], "nll": s["nll"]} for s in per_seed]
  return out


def world_runs(truth, warmup: int, draws: int, seed: int = 0) -> Optional[dict]:
  """{"world": category ids of `draws` free runs of the synthetic world from the real warm-up}
  (`synthetic.run_free`, seeds (seed, 0..draws-1)), or None without a world's truth. The ids are
  the world's own attributes, which the rule labeler reads back from its texts exactly."""
  if truth is None:
    return None
  return {"world": [synthetic.run_free(truth, warmup, seed=(seed, k)).attributes for k in range(draws)]}


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """What `evaluate` scores: the rollouts saved under `workdir`/rollouts against the real eval events."""

  workdir: str
  tokenizer: object
  eval_batch: object  # mfjax.data.StepBatch: the real eval events (their texts are labelled)
  runs: tuple  # (tag, method, params stage) of each scored rollout (`mfjax.pipeline_config.Rollout`)
  seeds: int
  warmup: int
  labeler_name: str = "rules"
  label_data: str = ""  # the CED folder the trained labeler's hand labels read their texts from ("": none)
  corrected: bool = False  # also score distributions corrected for the labeler's errors (needs label_data)
  truth: Optional[object] = None  # synthetic.GroundTruth of the eval events: the sampling-noise floor, `world*`
  sweep: Optional[dict] = None  # tag -> validation terms of each IB sweep stage
  # {"intervention": mfjax.data.intervention.Intervention, "labels": its text's categories, "forced": [E, T, B]
  # its agents, "runs": [(tag with it, tag without)], "world": None or (probs without, probs with) [E, T, C] per
  # dimension}
  intervention: Optional[dict] = None
  # {"train_texts" [N][T*B], "train_mask" [N, T, B], "train_labels" [N], "eval_labels" [E]}: the reference
  # simulators (`bounds`), scored with as many draws as seeds, into results' "simulators"
  references: Optional[dict] = None
  drift: tuple = ()  # eval.drift: ((first, last), ...) step windows compared in results' "drift"
  # the writer's channel `mf` drew its tags through (its writer_channel.json); None: tags drawn from the head
  writer_channel: Optional[dict] = None


@dataclasses.dataclass
class Evaluation:
  """`evaluate`'s answer: results.json's content, and what the plots draw."""

  results: dict
  real: dict  # dimension -> [E, T, B] category ids of the real actions
  sims: dict  # tag -> dimension -> [E, T, B] category ids of its seed-0 rollout
  agent_mask: np.ndarray  # [E, T, B]
  weights: np.ndarray  # [E, T]: the scored (event, step) cells
  traces: Optional[dict] = None  # the intervention's plot: name -> (proportions without, with)


def evaluate(req: EvalRequest) -> Evaluation:
  """Label and score the rollouts of `req` (see the module docstring); writes nothing."""
  workdir, runs, seeds, warmup = req.workdir, list(req.runs), req.seeds, req.warmup
  intervention = req.intervention
  check_rollouts(workdir, runs + [(tag, None, None) for tag, _ in (intervention or {}).get("runs", [])], seeds)
  labeler = CachedLabeler(make_labeler(req.labeler_name, req.label_data))
  correct = None
  if req.corrected:
    if not req.label_data:
      raise ValueError("eval.corrected estimates the labeler's errors on the CED hand labels (experiments/labels), "
                       "whose texts are read from the CED data folder: it needs data.source=ced (data.path)")
    from mfjax.evaluation import quality  # scikit-learn, only where it is used
    correct = quality.correction(req.labeler_name, req.label_data)
  E, T, B = req.eval_batch.agent_mask.shape
  agent_mask = req.eval_batch.agent_mask
  real = label_ids(labeler, [t for row in req.eval_batch.texts for t in row], (E, T, B), keep=True)
  weights = (np.arange(T)[None, :] >= warmup) & agent_mask.any(-1)
  if not weights.any():
    raise ValueError(f"no rollout step to score: warm-up {warmup} covers all {T} steps or the events are empty")
  results = {"methods": {}, "data": {"events": E, "steps": T, "agents_per_step": B, "warmup": warmup,
                                     "scored_steps": int(weights.sum()), "labeler": req.labeler_name,
                                     "labeler_version": getattr(labeler.labeler, "version", req.labeler_name)}}
  if correct is not None:
    results["corrected"] = {"source": correct.source, "matrices": correct.to_json()["matrices"], "methods": {}}
  cells = {}  # name -> [E, T] KL per (event, step): each method's and forecast reference's (`horizon`)
  sim_cells = {}  # name -> [E, T] of every reference simulator (`drift`)
  labelled = {}  # (tag, seed) -> category ids [E, T, B] per dimension: each rollout decoded and labelled once

  def sim_ids(tag: str, seed: int, r=None) -> dict:
    if (tag, seed) not in labelled:
      r = load_rollout(workdir, tag, seed) if r is None else r
      labelled[tag, seed] = label_ids(labeler, decode_actions(req.tokenizer, r["tokens"], r["mask"]), (E, T, B))
    return labelled[tag, seed]

  scored_agents = agent_mask & weights[..., None]
  for tag, method, _ in runs:
    per_seed, agreement, drawn, confusion = [], [], [], []
    for seed in range(seeds):
      r = load_rollout(workdir, tag, seed)
      sim = sim_ids(tag, seed, r)
      per_seed.append(score(real, sim, agent_mask, weights, r["real_logprobs"], req.eval_batch.action_mask, correct))
      if "category" in r:
        agreement.append(attribute_agreement(r["category"], sim, scored_agents))
        confusion.append(attribute_counts(r["category"], sim, scored_agents))
        if req.writer_channel is None:  # through the channel the tags are drawn off the population on purpose
          drawn.append(drawn_scores(real, r["category"], agent_mask, weights))
      if seed == 0:
        if tag == "mf":
          results["mf_field"] = {"kl_nats_per_step": [float(x) for x in r["mf_kl"].mean(0)]}
    results["methods"][tag] = summarise(per_seed)
    cells[tag] = results["methods"][tag].pop("kl_cells")
    if correct is not None:
      kl = results["methods"][tag].pop("kl_corrected")
      results["corrected"]["methods"][tag] = {"kl_mean": float(np.mean(list(kl.values()))), "kl": kl}
    if agreement:
      results["methods"][tag]["attribute_agreement"] = {k: float(np.mean([a[k] for a in agreement]))
                                                        for k in agreement[0]}
      results["methods"][tag]["attribute_confusion"] = attribute_confusion(
          {d: sum(c[d] for c in confusion) for d in DIMENSIONS})
      if drawn:
        results["methods"][tag]["drawn"] = {
            "kl_mean": float(np.mean([x["kl_mean"] for x in drawn])),
            "kl": {d: float(np.mean([x["kl"][d] for x in drawn])) for d in DIMENSIONS},
            "kl_per_event": _steps(np.mean([x["kl_per_event"] for x in drawn], 0))}
        cells[f"{tag} (drawn)"] = np.mean([x["kl_cells"] for x in drawn], 0)
  if req.writer_channel is not None:
    results["writer_channel"] = {k: req.writer_channel[k] for k in ("events", "actions", "agreement")}
  truth = req.truth
  if truth is not None:
    # The floor set by finite steps: the real B agents of a step against their own exact distribution.
    floor = [float(np.sum(metrics.kl(metrics.step_distributions(real[d], agent_mask, len(c))[0], truth.probs[d])
                          * weights) / weights.sum()) for d, c in DIMENSIONS.items()]
    results["reference"] = {"kl_real_vs_truth_mean": float(np.mean(floor)),
                            "note": "KL(real step proportions || exact step distribution): sampling noise of B agents"}
  if req.references is not None:
    refs = req.references
    train_mask = np.asarray(refs["train_mask"], bool)
    train = label_ids(labeler, [t for row in refs["train_texts"] for t in row], train_mask.shape, keep=True)
    results["simulators"] = bounds.bounds(real, agent_mask, refs["eval_labels"], train, train_mask,
                                          refs["train_labels"], warmup=warmup, draws=seeds,
                                          simulated=world_runs(truth, warmup, seeds), correct=correct,
                                          keep_cells=True)
    sim_cells = results["simulators"].pop("cells")
    each_seed = {tag: [sim_ids(tag, s) for s in range(seeds)] for tag, _, _ in runs}
    results["rates"] = calibration.calibration(real, each_seed, scored_agents, train, train_mask, warmup)
    cells.update({name: sim_cells[name] for name in HORIZON_REFERENCES if name in sim_cells})
    results["horizon"] = horizon(cells, weights, warmup)
    if correct is not None:
      results["corrected"]["simulators"] = results["simulators"].pop("corrected")
  if req.drift:  # each method and every reference simulator (where the run has them) over the same windows
    tags = [tag for tag, _, _ in runs]
    results["drift"] = drift({**{tag: cells[tag] for tag in tags}, **sim_cells}, weights, req.drift,
                             {tag: results["methods"][tag]["kl_dim_per_step"] for tag in tags})
  if req.sweep:
    results["ib_sweep"] = [{"beta": v["beta"], "population_weight": v.get("population_weight"),
                            "val_relevance": v.get("val_relevance"),
                            "val_compression_bits": v.get("val_compression_bits"),
                            "val_population": v.get("val_population"),  # None without a population head
                            **{k: results["methods"][tag][k] for k in ("kl_mean", "kl_mean_std", "js_mean", "nll")}}
                           for tag, v in req.sweep.items()]
  results["paired"] = paired(results)
  traces = None
  if intervention is not None:
    results["intervention"], traces = _intervention(sim_ids, intervention, agent_mask, seeds)
  return Evaluation(results, real, {tag: sim_ids(tag, 0) for tag, _, _ in runs}, agent_mask, weights, traces)


def write(workdir: str, ev: Evaluation) -> None:
  """results.json and plots/ of an evaluation."""
  write_json(os.path.join(workdir, "results.json"), ev.results)
  if ev.traces is not None:
    plots.intervention(workdir, ev.traces, ev.agent_mask, ev.results["intervention"])
  plots.write_all(workdir, ev.real, ev.sims, ev.agent_mask, ev.weights, ev.results)


def intervention_effect(without: dict, with_: dict, weights_ExT) -> dict:
  """dimension -> [C]: the weighted mean over (event, step) of the proportions
  `with_` minus `without` (dimension -> [E, T, C])."""
  w = np.asarray(weights_ExT, np.float64)[..., None]
  return {d: ((np.asarray(with_[d], np.float64) - np.asarray(without[d], np.float64)) * w).sum((0, 1)) / w.sum()
          for d in DIMENSIONS}


def intervention_weights(agent_mask_ExTxB, forced_ExTxB, step: int) -> np.ndarray:
  """[E, T] bool: the (event, step)s an intervention at `step` is measured on: the steps
  after it that have agents, of the events it was applied to (a short event may lack its slots)."""
  agent_mask = np.asarray(agent_mask_ExTxB, bool)
  hit = np.asarray(forced_ExTxB, bool).any((1, 2))
  return (np.arange(agent_mask.shape[1])[None, :] > step) & agent_mask.any(-1) & hit[:, None]


def _by_category(values: dict) -> dict:
  return {d: {c: float(v) for c, v in zip(DIMENSIONS[d], values[d])} for d in DIMENSIONS}


def _intervention(sim_ids, spec: dict, agent_mask, seeds: int) -> tuple[dict, dict]:
  """(results.json's "intervention" section, tag -> (proportions without, with) of seed 0 for the plot);
  sim_ids(tag, seed): a rollout's category ids, labelled once for the whole evaluation."""
  iv = spec["intervention"]
  weights = intervention_weights(agent_mask, spec["forced"], iv.step)
  if not weights.any():
    raise ValueError(f"no event has agents both at the intervention's step {iv.step} and after it")
  props = lambda ids: {d: np.asarray(metrics.step_distributions(ids[d], agent_mask, len(c))[0])
                       for d, c in DIMENSIONS.items()}
  out = {"text": iv.text, "step": iv.step, "agents": iv.agents, "labels": spec["labels"],
         "events": int(np.asarray(spec["forced"]).any((1, 2)).sum()),
         "scored_steps": [int(t) for t in np.flatnonzero(weights.any(0))], "methods": {}}
  traces = {}
  for tag, base in spec["runs"]:
    per_seed = []
    for seed in range(seeds):
      pair = [props(sim_ids(name, seed)) for name in (base, tag)]
      per_seed.append(intervention_effect(*pair, weights))
      if seed == 0:
        traces[base] = pair
    out["methods"][base] = {"effect": _by_category({d: np.mean([s[d] for s in per_seed], 0) for d in DIMENSIONS}),
                            "effect_std": _by_category({d: np.std([s[d] for s in per_seed], 0) for d in DIMENSIONS}),
                            "seeds": seeds}
  if spec.get("world") is not None:
    out["world"] = {"effect": _by_category(intervention_effect(*spec["world"], weights)),
                    "note": "the synthetic world's own answer: its exact step distributions with minus without"}
    traces["world"] = spec["world"]
  return out, traces


def table(results: dict) -> str:
  rows = [f"{'method':<14}{'KL mean':>10}{'± std':>8}{'JS':>8}{'DTW':>9}{'NLL':>8}   KL per dimension"]
  for m, r in results["methods"].items():
    dims = " ".join(f"{d[:4]} {v:.3f}" for d, v in r["kl"].items())
    rows.append(f"{m:<14}{r['kl_mean']:>10.4f}{r['kl_mean_std']:>8.4f}{r['js_mean']:>8.4f}{r['dtw_mean']:>9.3f}"
                f"{r['nll']:>8.3f}   {dims}")
  for m, r in results["methods"].items():
    if "attribute_agreement" in r:
      a = r["attribute_agreement"]
      rows.append(f"({m}: the labeler reads the category each agent drew in {a['joint']:.1%} of its actions; "
                  + ", ".join(f"{d} {a[d]:.1%}" for d in DIMENSIONS) + ")")
    if "attribute_agreement" in r and "writer_channel" in results:
      w = results["writer_channel"]
      rows.append(f"({m} drew its tags through the writer's channel, estimated on {w['actions']} actions of "
                  f"{w['events']} training events, where the labeler read the tag back in {w['agreement']:.1%}: "
                  "the tags are drawn off the population so that the labelled actions follow it, and are not "
                  "scored)")
    if "drawn" in r:
      dims = " ".join(f"{d[:4]} {v:.3f}" for d, v in r["drawn"]["kl"].items())
      rows.append(f"({m} scored on the categories its agents drew, not on the labeler's reading of their actions: "
                  f"KL {r['drawn']['kl_mean']:.4f}   {dims})")
  if "simulators" in results:
    world = ("; world*: the synthetic world's own equations run free from the warm-up"
             if "world" in results["simulators"]["methods"] else "")
    rows.append(f"reference simulators, no model: each step's agents drawn from a fixed distribution{world}; mean "
                f"± std over {results['simulators']['draws']} draws (* an oracle; mfjax/evaluation/bounds.py):")
    for name, r in results["simulators"]["methods"].items():
      dims = " ".join(f"{d[:4]} {v:.3f}" for d, v in r["kl"].items())
      label = f"{name}*" if name in bounds.ORACLES else name
      rows.append(f"{label:<14}{r['kl_mean']:>10.4f}{r['kl_mean_std']:>8.4f}{'':>25}   {dims}")
  if "corrected" in results:
    c = results["corrected"]
    rows.append(f"KL of proportions corrected for the labeler's errors ({c['source']}; raw KL above):")
    for name, r in [*c["methods"].items(), *c.get("simulators", {}).items()]:
      dims = " ".join(f"{d[:4]} {v:.3f}" for d, v in r["kl"].items())
      label = f"{name}*" if name in bounds.ORACLES else name
      rows.append(f"{label:<14}{r['kl_mean']:>10.4f}{'':>33}   {dims}")
  if "reference" in results:
    rows.append(f"(sampling-noise floor, real vs exact truth: KL {results['reference']['kl_real_vs_truth_mean']:.4f})")
  if results.get("paired"):
    refs = list(next(iter(results["paired"].values())))
    rows.append(f"\npaired over the events: KL(method) - KL(reference), mean and 95% bootstrap interval "
                f"({results['data']['events']} events; below 0: the method is closer to the real population)")
    rows.append(f"{'method':<14}" + "".join(f"{'vs ' + r:>30}" for r in refs))
    for m, row in results["paired"].items():
      rows.append(f"{m:<14}" + "".join(f"{row[r]['diff']:>+12.4f} [{row[r]['ci95'][0]:+.4f}, {row[r]['ci95'][1]:+.4f}]"
                                       for r in refs))
  if results.get("rates"):
    header, body = calibration.rate_rows(results["rates"])
    rows.append(f"\ncategory rates after the warm-up: {calibration.NOTE}")
    rows.extend(f"{r[0]:<22}" + "".join(f"{x:>10}" for x in r[1:]) for r in [header] + body)
    rows.append("calibrated (every rate within noise of the training events'): "
                + calibration.verdicts(results["rates"]))
  if results.get("horizon", {}).get("h"):
    hz = results["horizon"]
    first, last = 0, len(hz["h"]) - 1
    rows.append(f"\nforecast skill against persistence ({hz['persistence']}): 1 - KL / KL({hz['persistence']}) at h "
                f"steps after the warm-up, 95% bootstrap interval over events")
    rows.append(f"{'method':<14}" + "".join(f"{'h=' + str(hz['h'][i]):>30}" for i in sorted({first, last})))
    for name, r in hz["methods"].items():
      rows.append(f"{name:<14}" + "".join(f"{r['skill'][i]:>+12.3f} [{r['skill_ci95'][i][0]:+.3f}, "
                                          f"{r['skill_ci95'][i][1]:+.3f}]" for i in sorted({first, last})))
  if results.get("drift", {}).get("methods"):
    dr = results["drift"]
    spans = [f"steps {a}-{b}" for a, b in dr["windows"]]
    rows.append(f"\ndrift: mean KL in each window of steps and the last against the first (95% bootstrap "
                f"interval over {dr['events']} events)")
    rows.append(f"{'':<14}" + "".join(f"{x:>17}" for x in spans) + f"{'ratio':>26}")
    for name, r in dr["methods"].items():
      label = f"{name}*" if name in bounds.ORACLES and name not in results["methods"] else name
      rows.append(f"{label:<14}" + "".join(f"{x:>17.4f}" for x in r["kl"])
                  + f"{r['ratio']:>10.3f} [{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]")
  if "intervention" in results:
    rows.append(intervention_table(results["intervention"]))
  if "ib_sweep" in results:
    rows.append(f"\n{'beta':>8}{'pop w':>8}{'val NLL':>10}{'val pop':>10}{'bits':>10}{'KL mean':>10}")
    nan = lambda x: float("nan") if x is None else x
    for r in results["ib_sweep"]:
      rows.append(f"{r['beta']:>8g}{nan(r.get('population_weight')):>8g}{nan(r['val_relevance']):>10.4f}"
                  f"{nan(r.get('val_population')):>10.4f}{nan(r['val_compression_bits']):>10.2f}"
                  f"{r['kl_mean']:>10.4f}")
  return "\n".join(rows)


def intervention_table(iv: dict) -> str:
  """The intervention's effect on the category each dimension's plot shows, per method (and the world's)."""
  steps, shown = iv["scored_steps"], [(d, plots.SHOWN[d]) for d in DIMENSIONS]
  rows = [f"\nintervention: {iv['agents']} agents write {iv['text']!r} "
          f"({', '.join(iv['labels'][d] for d in DIMENSIONS)}) at step {iv['step']}; change in "
          f"{f'steps {steps[0]}-{steps[-1]}' if len(steps) > 1 else f'step {steps[0]}'}, with minus without "
          "(mean ± std over seeds):",
          f"{'method':<14}" + "".join(f"{c:>18}" for _, c in shown)]
  for m, r in iv["methods"].items():
    rows.append(f"{m:<14}" + "".join(f"{r['effect'][d][c]:>+11.4f} ±{r['effect_std'][d][c]:.3f}" for d, c in shown))
  if "world" in iv:
    rows.append(f"{'world (exact)':<14}" + "".join(f"{iv['world']['effect'][d][c]:>+11.4f}{'':>7}" for d, c in shown))
  return "\n".join(rows)
