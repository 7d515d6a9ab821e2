"""Is a method calibrated? Each category's share among the actions of the scored steps, pooled over
events (and seeds), for every method, beside the real eval events' and the training events' over the
same steps, with each rate's difference from the training events' and its 95% bootstrap interval
(events resampled, the two sets of events independently; scipy.stats.bootstrap).

A policy that reads only the agent's state (`state`) was trained to write the training events' actions,
so its rates should be the training events' within sampling noise (the interval holds 0); the real
eval events' rates may differ from those (another set of events), which the `real` row shows.

results.json "rates":
  {"steps": "t >= warm-up", "training": {dim: {category: rate}}, "real": {dim: {category: {"rate",
   "diff", "ci95", "ci_family"}}}, "methods": {<method>: {dim: {category: {...}}}}, "calibrated": {<method>:
   bool}}   (diff: rate - the training events' rate; ci_family: its interval at 1 - 0.05 / 12, the 12
   categories judged together (Bonferroni); calibrated: every category's ci_family holds 0, so that a
   calibrated method is called one with probability 0.95 or more however many categories it has)
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import bounds

DRAWS = 2000  # bootstrap resamples of the events


def event_counts(ids_NxTxB, mask_NxTxB, categories: int) -> np.ndarray:
  """[N, C]: each event's actions of each category among the masked cells (`bounds.counts` summed over steps)."""
  return bounds.counts(ids_NxTxB, mask_NxTxB, categories).sum(1)


def _holds_zero(ci) -> bool:
  return ci[0] <= 0.0 <= ci[1]


def pooled(counts_NxC) -> np.ndarray:
  """[C]: each category's share of all the actions counted (0 where there are none)."""
  total = counts_NxC.sum()
  return counts_NxC.sum(0) / total if total else np.zeros(counts_NxC.shape[-1])


def rate_difference(counts_ExC, reference_NxC, seed: int = 0, draws: int = DRAWS, family: int = 1) -> dict:
  """{category index: (diff, (low, high), (low, high) of the family)}: the pooled rate of `counts` minus that
  of `reference`, its 95% percentile bootstrap interval (each set's events resampled on their own), and the
  interval at 1 - 0.05 / family (Bonferroni: `family` rates judged together)."""
  a, b = np.asarray(counts_ExC, np.float64), np.asarray(reference_NxC, np.float64)
  diff = pooled(a) - pooled(b)
  out = {}
  for c in range(a.shape[1]):
    def statistic(i, j, axis=-1, c=c):
      i, j = i.astype(np.int64), j.astype(np.int64)
      rate = lambda x, k: x[k, c].sum(axis) / np.maximum(x[k].sum(-1).sum(axis), 1.0)
      return rate(a, i) - rate(b, j)
    res = stats.bootstrap((np.arange(len(a)), np.arange(len(b))), statistic, confidence_level=0.95,
                          n_resamples=draws, method="percentile", vectorized=True, paired=False,
                          random_state=np.random.default_rng((seed, c)))
    tail = 2.5 / family
    wide = np.percentile(res.bootstrap_distribution, [tail, 100.0 - tail])
    ci = res.confidence_interval
    out[c] = (float(diff[c]), (float(ci.low), float(ci.high)), (float(wide[0]), float(wide[1])))
  return out


def _against(counts_ExC: np.ndarray, training_NxC: np.ndarray, names: tuple, seed: int, family: int) -> dict:
  rate, diff = pooled(counts_ExC), rate_difference(counts_ExC, training_NxC, seed, family=family)
  return {name: {"rate": float(rate[c]), "diff": diff[c][0], "ci95": list(diff[c][1]), "ci_family": list(diff[c][2])}
          for c, name in enumerate(names)}


def calibration(real: dict, sims: dict, scored_ExTxB, train: dict, train_mask_NxTxB, warmup: int,
                seed: int = 0) -> dict:
  """results.json "rates" (the module docstring). real, train: dimension -> category ids [E, T, B] and
  [N, T', B'] (the training events in the eval layout); sims: method -> [dimension -> [E, T, B]] per seed;
  scored_ExTxB: the scored agents (steps >= warmup); train_mask_NxTxB: the training events' agents."""
  family = sum(len(names) for names in DIMENSIONS.values())
  train_scored = np.asarray(train_mask_NxTxB, bool) & (np.arange(train_mask_NxTxB.shape[1]) >= warmup)[:, None]
  out = {"steps": f"t >= {warmup} (after the warm-up)", "training": {}, "real": {}, "methods": {t: {} for t in sims}}
  for d, names in DIMENSIONS.items():
    C = len(names)
    training = event_counts(train[d], train_scored, C)
    out["training"][d] = {name: float(r) for name, r in zip(names, pooled(training))}
    out["real"][d] = _against(event_counts(real[d], scored_ExTxB, C), training, names, seed, family)
    for tag, seeds in sims.items():  # the seeds' actions of an event counted together: one resampling unit
      counts = sum(event_counts(s[d], scored_ExTxB, C) for s in seeds)
      out["methods"][tag][d] = _against(counts, training, names, seed, family)
  out["calibrated"] = {tag: all(_holds_zero(r["ci_family"]) for dim in per.values() for r in dim.values())
                       for tag, per in out["methods"].items()}
  return out


def rate_rows(rates: dict) -> tuple[list[str], list[list[str]]]:
  """The rates as a table: a header and a row per category (training, real, each method; * where its
  difference from the training events' rate has a 95% interval without 0, ** where the family's does)."""
  tags = list(rates["methods"])
  mark = lambda r: f"{r['rate']:.3f}" + ("" if _holds_zero(r["ci95"]) else "*" if _holds_zero(r["ci_family"]) else "**")
  rows = [[f"{d} {name}", f"{rates['training'][d][name]:.3f}", mark(rates["real"][d][name]),
           *(mark(rates["methods"][t][d][name]) for t in tags)]
          for d, names in DIMENSIONS.items() for name in names]
  return ["category", "training", "real", *tags], rows


def verdicts(rates: dict, quote: str = "") -> str:
  """"state no, mf yes": each method's `calibrated`, its name between `quote`s."""
  return ", ".join(f"{quote}{m}{quote} {'yes' if ok else 'no'}" for m, ok in rates["calibrated"].items())


NOTE = ("Each category's share of the actions after the warm-up (pooled over events and seeds); * the difference "
        "from the training events' rate has a 95% bootstrap interval (over events) without 0, ** also the interval "
        "of the 12 categories judged together (Bonferroni, 1 - 0.05 / 12).")
