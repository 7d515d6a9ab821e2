"""How good a labeler is, measured on the hand labels, and the confusion that corrects for it.

`cross_validated(hand, extra, name)`: each row of `hand` (the stratified draw) labelled by a labeler
that never saw it: the rule labeler as it is; the trained one fitted, per fold of a k-fold split,
on the other folds plus `extra` (the uniform val labels, never scored here). `trained_natural`
(compared, not a pipeline labeler): the trained one fitted with each row weighted as in the natural
distribution (the stratified rows by their stratum weights, scaled to a mean of 1; `extra`, a uniform
draw, 1 each). Both get the `EmoticonSentiment` passed as `emoticons` (learned without hand labels, so
one serves every fold). `scores`: accuracy,
balanced accuracy and macro-F1 (scikit-learn, weighted to the natural distribution by the rows'
weights) with 95% bootstrap intervals over rows. `correction(name, data_dir)`: the weighted
cross-validated P(predicted | true) of each dimension, as a `Correction`.
"""

from __future__ import annotations

import functools

import numpy as np

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import hand_labels
from mfjax.evaluation.correction import Correction, confusion
from mfjax.evaluation.labelers import RuleLabeler, category_ids

FOLDS = 5
BOOTSTRAP = 1000
LABELERS = ("rules", "trained")
COMPARED = LABELERS + ("trained_natural",)  # tools/labeler_quality.py's table


def cross_validated(hand: hand_labels.HandLabels, extra: hand_labels.HandLabels, name: str, folds: int = FOLDS,
                    seed: int = 0, emoticons=None) -> dict:
  """{dimension: [N] predicted category names} for the rows of `hand`, each from a labeler that did
  not see it (see the module docstring)."""
  if name == "rules":
    return RuleLabeler().label(hand.texts)
  if name not in COMPARED:
    raise ValueError(f"unknown labeler {name!r}; known: {COMPARED}")
  from sklearn.model_selection import StratifiedKFold
  from mfjax.evaluation.trained_labeler import TrainedLabeler
  n = len(hand.texts)
  pred = {d: np.empty(n, dtype=object) for d in DIMENSIONS}
  # stratified on the rarest dimension's categories (doubt), so that every fold has some
  split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), hand.labels["belief"])
  for train, test in split:
    fit_on = hand.subset(train)
    weights = {} if emoticons is None else {"emoticons": emoticons}
    if name == "trained_natural":
      weights["sample_weight"] = np.concatenate([fit_on.weights / hand.weights.mean(), np.ones(len(extra.texts))])
    model = TrainedLabeler.fit(fit_on.texts + extra.texts,
                               {d: fit_on.labels[d] + extra.labels[d] for d in DIMENSIONS}, seed=seed, **weights)
    got = model.label([hand.texts[i] for i in test])
    for d in DIMENSIONS:
      pred[d][test] = got[d]
  return {d: list(v) for d, v in pred.items()}


def _metrics(y_true, y_pred, w, labels) -> np.ndarray:
  from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
  present = [c for c in labels if np.any(y_true == c)]
  return np.asarray([accuracy_score(y_true, y_pred, sample_weight=w),
                     balanced_accuracy_score(y_true, y_pred, sample_weight=w),
                     f1_score(y_true, y_pred, labels=present, average="macro", sample_weight=w, zero_division=0)])


def scores(y_true: dict, y_pred: dict, weights, draws: int = BOOTSTRAP, seed: int = 0) -> dict:
  """{dimension: {"accuracy", "balanced_accuracy", "macro_f1": {"value", "ci95"}}}, each weighted by
  `weights`, the interval a percentile bootstrap over rows (the same resamples for every dimension)."""
  w = np.asarray(weights, np.float64)
  n = w.size
  rng = np.random.default_rng(seed)
  resamples = [rng.integers(0, n, n) for _ in range(draws)]
  out = {}
  for d, cats in DIMENSIONS.items():
    t, p = np.asarray(y_true[d], dtype=object), np.asarray(y_pred[d], dtype=object)
    value = _metrics(t, p, w, cats)
    boot = np.asarray([_metrics(t[i], p[i], w[i], cats) for i in resamples])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    out[d] = {k: {"value": round(float(value[j]), 4), "ci95": [round(float(lo[j]), 4), round(float(hi[j]), 4)]}
              for j, k in enumerate(("accuracy", "balanced_accuracy", "macro_f1"))}
  return out


def confusions(y_true: dict, y_pred: dict, weights) -> dict:
  """{dimension: [C, C] P(predicted | true)}, weighted (`correction.confusion`)."""
  t, p = category_ids(y_true), category_ids(y_pred)
  return {d: confusion(t[d], p[d], len(cats), weights) for d, cats in DIMENSIONS.items()}


@functools.lru_cache(maxsize=None)
def _hand(data_dir: str) -> tuple:
  return hand_labels.load(data_dir, (hand_labels.STRATIFIED,)), hand_labels.load(data_dir, (hand_labels.UNIFORM_VAL,))


def correction(name: str, data_dir: str) -> Correction:
  """The labeler's cross-validated confusion on the stratified hand labels (natural weights); kept on disk
  for later runs (`mfjax.evaluation.fit_cache`)."""
  from mfjax.evaluation import fit_cache
  from mfjax.evaluation.trained_labeler import fitting_code_digest, inputs_digest
  digest = inputs_digest(data_dir)
  if digest is None:  # a file is missing: the fit names it
    return _correction(name, data_dir)
  key = (f"{name} | {digest} | {FOLDS} folds | {fit_cache.libraries()} | "
         f"code {fitting_code_digest()} {fit_cache.code_digest(__file__)}")
  return fit_cache.cached("correction", key, lambda: _correction(name, data_dir))


def _correction(name: str, data_dir: str) -> Correction:
  hand, extra = _hand(data_dir)
  emoticons = None
  if name != "rules":
    from mfjax.evaluation.trained_labeler import EmoticonSentiment
    emoticons = EmoticonSentiment.from_data(data_dir)
  pred = cross_validated(hand, extra, name, emoticons=emoticons)
  return Correction(confusions(hand.labels, pred, hand.weights),
                    source=f"{name}: {FOLDS}-fold cross-validated confusion on {len(hand.texts)} hand labels "
                           f"(experiments/labels/{hand_labels.STRATIFIED}, natural weights)")
