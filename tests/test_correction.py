"""Distributions corrected for a labeler's errors (`mfjax.evaluation.correction`): exact where the
confusion is known, and on the synthetic world a corrupted labelling corrected back to the truth."""

import numpy as np
import pytest

from mfjax.categories import DIMENSIONS
from mfjax.data import synthetic
from mfjax.evaluation import bounds, report
from mfjax.evaluation.correction import Correction, confusion, correct

# A labeler that reads negative as neutral a quarter of the time, positive as neutral a third, and
# neutral as either pole a tenth each: sentiment's confusion shape on real text (docs/labeling.md)
SENTIMENT_M = np.array([[0.70, 0.25, 0.05], [0.10, 0.80, 0.10], [0.05, 0.30, 0.65]])


def identity_correction():
  return Correction({d: np.eye(len(c)) for d, c in DIMENSIONS.items()}, source="identity")


def test_correct_inverts_a_known_confusion_exactly():
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(3), size=(5, 4))  # [5, 4, 3] true proportions
  q = p @ SENTIMENT_M  # what the labeler would report with infinitely many actions
  np.testing.assert_allclose(correct(q, SENTIMENT_M, steps=5000), p, atol=2e-3)
  assert np.allclose(correct(q, SENTIMENT_M).sum(-1), 1.0)
  np.testing.assert_allclose(correct(q, np.eye(3)), q, atol=1e-12)  # a perfect labeler: nothing to correct
  assert np.all(correct(np.zeros((2, 3)), SENTIMENT_M) == 0)  # a step without actions stays empty


def test_corrected_distributions_recover_the_synthetic_worlds_truth():
  """The world's exact step distributions p; each (event, step)'s 80,000 actions drawn from p and
  their labels corrupted by SENTIMENT_M (a known labeler). The raw proportions miss p by far more
  than sampling noise; the corrected ones land on p within it."""
  _, truth = synthetic.generate(6, seed=3)
  p = np.asarray(truth.probs["sentiment"], np.float64)[:, :4]  # [6, 4, 3]
  rng = np.random.default_rng(1)
  n = 80_000
  true_counts = rng.multinomial(n, p.reshape(-1, 3))  # [24, 3]
  observed = np.zeros_like(true_counts)
  for t in range(3):  # each true category's actions read through its row of the confusion
    observed += rng.multinomial(true_counts[:, t], SENTIMENT_M[t])
  q = (observed / n).reshape(p.shape)
  fixed = correct(q, SENTIMENT_M, steps=5000)
  # 4 standard errors of a proportion, through the inverse confusion (its largest absolute column sum)
  noise = 4 * np.sqrt(0.25 / n) * np.abs(np.linalg.inv(SENTIMENT_M)).sum(0).max()
  assert np.abs(q - p).max() > 5 * noise  # raw: off by the labeler's errors
  assert np.abs(fixed - p).max() < noise  # corrected: the truth, up to sampling noise


def test_confusion_is_row_stochastic_weighted_and_smoothed():
  m = confusion([0, 0, 0, 1], [0, 1, 1, 1], 3, weights=[3.0, 1.0, 1.0, 1.0], prior=0.0 + 1e-12)
  np.testing.assert_allclose(m[0], [0.6, 0.4, 0.0], atol=1e-9)  # weighted: 3 of 5 read right
  np.testing.assert_allclose(m[2], [0.0, 0.0, 1.0])  # no example of category 2: read as itself
  assert np.allclose(m.sum(1), 1.0)
  smoothed = confusion([0, 0], [1, 1], 2, prior=0.5)
  np.testing.assert_allclose(smoothed[0], [0.2, 0.8])  # 2 examples against half an example on the diagonal


def test_a_bad_correction_names_the_dimension():
  good = {d: np.eye(len(c)) for d, c in DIMENSIONS.items()}
  with pytest.raises(ValueError, match="'sentiment' needs a 3x3 matrix"):
    Correction({**good, "sentiment": np.eye(2)})
  with pytest.raises(ValueError, match="rows of 'belief'"):
    Correction({**good, "belief": np.array([[0.5, 0.4], [0.0, 1.0]])})


def _ids(rng, E=5, T=6, B=8):
  return {d: rng.integers(0, len(c), (E, T, B)) for d, c in DIMENSIONS.items()}


def test_an_identity_correction_changes_no_kl():
  rng = np.random.default_rng(2)
  real, sim = _ids(rng), _ids(rng)
  mask = rng.random((5, 6, 8)) < 0.8
  np.testing.assert_allclose(report.step_kls(real, sim, mask, identity_correction()), report.step_kls(real, sim, mask),
                             atol=1e-6)
  out = bounds.bounds(real, mask, ["a"] * 5, sim, mask, ["a"] * 5, warmup=2, draws=2, correct=identity_correction())
  for name, r in out["methods"].items():
    assert out["corrected"][name]["kl_mean"] == pytest.approx(r["kl_mean"], abs=1e-6), name
  plain = bounds.bounds(real, mask, ["a"] * 5, sim, mask, ["a"] * 5, warmup=2, draws=2)
  assert plain["methods"] == out["methods"] and "corrected" not in plain  # the same draws with or without it
