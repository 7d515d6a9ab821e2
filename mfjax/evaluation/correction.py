"""Category distributions corrected for a labeler's errors.

A labeler reads a text of true category t as category j with probability
M[t, j] = P(predicted j | true t) (its confusion matrix, estimated on hand labels by
cross-validation: `mfjax.evaluation.hand_labels`). A step's predicted proportions q then
estimate q = p @ M, not the true proportions p. `correct` inverts that: the maximum-likelihood
p on the simplex given q (the EM iteration for the weights of a mixture with known components,
p_t <- p_t * sum_j q_j M[t, j] / (p @ M)_j, from the uniform start), which never leaves the
simplex and, where M is invertible and q lies in its image, converges to the plain inverse.

`Correction` holds one matrix per dimension and corrects {dimension: [..., C]} proportions.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mfjax.categories import DIMENSIONS

EM_STEPS = 500


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_categories: int, weights=None,
              prior: float = 0.5) -> np.ndarray:
  """[C, C] row-stochastic P(predicted | true) from labelled examples (weighted), each row smoothed
  by `prior` pseudo-examples spread over its predictions in proportion to identity (a true category
  with no example reads as itself)."""
  y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
  w = np.ones(y_true.shape, np.float64) if weights is None else np.asarray(weights, np.float64)
  counts = np.zeros((num_categories, num_categories))
  np.add.at(counts, (y_true, y_pred), w)
  n = np.bincount(y_true, minlength=num_categories).astype(np.float64)  # examples per true category
  rows = counts / np.maximum(counts.sum(1, keepdims=True), 1e-300)  # weighted frequencies
  # the prior weighs like `prior` examples against the row's own count
  smoothed = (n[:, None] * rows + prior * np.eye(num_categories)) / (n[:, None] + prior)
  return smoothed


def correct(q, matrix, steps: int = EM_STEPS) -> np.ndarray:
  """[..., C]: the true proportions p that maximise the likelihood of predicted proportions
  q [..., C] under P(predicted | true) = matrix [C, C] (EM from the uniform p; rows of q with
  no mass stay zero)."""
  q = np.asarray(q, np.float64)
  m = np.asarray(matrix, np.float64)
  mass = q.sum(-1, keepdims=True)
  qn = q / np.maximum(mass, 1e-300)
  p = np.full(q.shape, 1.0 / q.shape[-1])
  for _ in range(steps):
    pred = p @ m  # [..., C]: predicted proportions under p
    p = p * ((qn / np.maximum(pred, 1e-300)) @ m.T)
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)
  return np.where(mass > 0, p, 0.0)


@dataclasses.dataclass(frozen=True)
class Correction:
  """One confusion matrix P(predicted | true) per dimension (`DIMENSIONS` order of categories)."""

  matrices: dict  # dimension -> [C, C]
  source: str = ""  # how the matrices were estimated (for results.json)

  def __post_init__(self):
    for d, cats in DIMENSIONS.items():
      m = np.asarray(self.matrices.get(d))
      if m.shape != (len(cats), len(cats)):
        raise ValueError(f"Correction: dimension {d!r} needs a {len(cats)}x{len(cats)} matrix, got {m.shape}")
      if not np.allclose(m.sum(1), 1.0):
        raise ValueError(f"Correction: rows of {d!r}'s matrix must sum to 1 (P(predicted | true))")

  def __call__(self, dimension: str, q) -> np.ndarray:
    return correct(q, self.matrices[dimension])

  def to_json(self) -> dict:
    return {"source": self.source, "matrices": {d: np.asarray(m).round(4).tolist() for d, m in self.matrices.items()}}
