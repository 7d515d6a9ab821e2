"""Population metrics against scipy and hand-computed cases."""

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import metrics


def _dists(seed, n=7, c=3):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.ones(c), n)
  p[0, 0] = 0.0  # a category with zero mass must be handled
  p[0] /= p[0].sum()
  return p, rng.dirichlet(np.ones(c), n)


def test_kl_matches_scipy_entropy_after_smoothing():
  p, q = _dists(0)
  eps = 1e-3
  ps, qs = (p + eps) / (1 + 3 * eps), (q + eps) / (1 + 3 * eps)
  want = [scipy.stats.entropy(a, b) for a, b in zip(ps, qs)]
  np.testing.assert_allclose(np.asarray(metrics.kl(p, q, eps)), want, rtol=1e-5)
  assert float(metrics.kl(p[1], p[1])) == pytest.approx(0.0, abs=1e-7)


def test_js_and_tv_match_scipy():
  p, q = _dists(1)
  want = [scipy.spatial.distance.jensenshannon(a, b) ** 2 for a, b in zip(p, q)]  # scipy returns the sqrt
  np.testing.assert_allclose(np.asarray(metrics.js(p, q)), want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(metrics.tv(p, q)), 0.5 * np.abs(p - q).sum(-1), rtol=1e-6)
  assert float(metrics.js([1, 0], [0, 1])) == pytest.approx(np.log(2), rel=1e-6)


def test_w1_matches_scipy_wasserstein_on_ordinal_categories():
  p, q = _dists(2, c=5)
  cats = np.arange(5)
  want = [scipy.stats.wasserstein_distance(cats, cats, a, b) for a, b in zip(p, q)]
  np.testing.assert_allclose(np.asarray(metrics.w1(p, q)), want, rtol=1e-5, atol=1e-7)


def _dtw_reference(x, y):
  """The textbook O(T*S) recursion with Python loops."""
  T, S = len(x), len(y)
  D = np.full((T + 1, S + 1), np.inf)
  D[0, 0] = 0
  for i in range(1, T + 1):
    for j in range(1, S + 1):
      D[i, j] = np.abs(x[i - 1] - y[j - 1]).sum() + min(D[i - 1, j], D[i - 1, j - 1], D[i, j - 1])
  return D[T, S]


def test_dtw_hand_cases_and_reference():
  one = lambda seq: np.asarray(seq, np.float32)[:, None]
  assert float(metrics.dtw(one([0, 1, 2]), one([0, 1, 2]))) == 0.0
  # a time shift costs nothing that warping can absorb: [0,0,1,2] vs [0,1,2,2]
  assert float(metrics.dtw(one([0, 0, 1, 2]), one([0, 1, 2, 2]))) == 0.0
  # by hand: [0, 2] vs [1]: |0-1| + |2-1| = 2
  assert float(metrics.dtw(one([0, 2]), one([1]))) == 2.0
  # by hand: [1, 2, 3] vs [2, 2, 2, 2]: 1 + 0 + 0 + 0 + 1 = 2
  assert float(metrics.dtw(one([1, 2, 3]), one([2, 2, 2, 2]))) == 2.0
  rng = np.random.default_rng(0)
  x, y = rng.dirichlet(np.ones(3), (4, 9)), rng.dirichlet(np.ones(3), (4, 6))
  got = np.asarray(metrics.dtw(x, y))  # batched over the leading axis
  np.testing.assert_allclose(got, [_dtw_reference(a, b) for a, b in zip(x, y)], rtol=1e-5)


def test_step_distributions_respect_the_mask():
  ids = np.array([[0, 1, 1, 2], [2, 2, 0, 0], [1, 1, 1, 1]])
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
  p, n = metrics.step_distributions(ids, mask, 3)
  np.testing.assert_allclose(np.asarray(p), [[1 / 3, 2 / 3, 0], [0, 0, 1], [0, 0, 0]], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(n), [3, 2, 0])


def test_compare_is_zero_for_identical_populations_and_grows_with_difference():
  rng = np.random.default_rng(3)
  real = {"belief": rng.integers(0, 2, (5, 8)), "sentiment": rng.integers(0, 3, (5, 8))}
  mask = np.ones((5, 8))
  same = metrics.compare(real, real, mask, mask)
  assert same["kl_mean"] == pytest.approx(0.0, abs=1e-6) and same["dtw_mean"] == 0.0 and same["w1"]["sentiment"] == 0.0
  flipped = {"belief": 1 - real["belief"], "sentiment": 2 - real["sentiment"]}
  far = metrics.compare(real, flipped, mask, mask)
  assert far["kl"]["belief"] > 0.1 and far["js_mean"] > 0.01 and set(far["kl"]) == {"belief", "sentiment"}


def test_nll_per_token():
  lp = np.log(np.array([[0.5, 0.25, 0.9], [0.1, 1.0, 1.0]]))
  mask = np.array([[1, 1, 0], [1, 0, 0]])
  assert float(metrics.nll_per_token(lp, mask)) == pytest.approx(-(np.log(0.5) + np.log(0.25) + np.log(0.1)) / 3, rel=1e-6)


def test_accuracy_and_macro_f1_by_hand():
  y_true = ["a", "a", "b", "b", "c"]
  y_pred = ["a", "b", "b", "b", "a"]
  acc, f1 = metrics.accuracy_macro_f1(y_true, y_pred, ["a", "b", "c", "d"])
  # a: tp1 fp1 fn1 -> 0.5; b: tp2 fp1 fn0 -> 0.8; c: tp0 fp0 fn1 -> 0; d absent from both: left out
  assert acc == pytest.approx(0.6) and f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_plotted_event_mean_leaves_out_steps_an_event_lacks():
  # event 1 ends after step 0: its later steps have no agents, so no proportions
  ids = np.array([[[0, 1], [0, 0], [1, 1]], [[0, 0], [0, 0], [0, 0]]])
  mask = np.array([[[1, 1], [1, 1], [1, 1]], [[1, 1], [0, 0], [0, 0]]], bool)
  share = np.asarray(metrics.step_distributions(ids, mask, 2)[0])[..., 0]  # [E, T]
  np.testing.assert_allclose(metrics.event_mean(share, mask.any(-1)), [0.75, 1.0, 0.0])


def test_per_step_kl_of_a_rollout_by_hand_and_weighed_back_to_its_score():
  from mfjax.evaluation.report import score, summarise
  rng = np.random.default_rng(3)
  E, T, B = 4, 5, 6
  real = {d: rng.integers(0, len(c), (E, T, B)) for d, c in DIMENSIONS.items()}
  sims = [{d: rng.integers(0, len(c), (E, T, B)) for d, c in DIMENSIONS.items()} for _ in range(2)]
  mask = np.ones((E, T, B), bool)
  mask[1, 3:] = False  # event 1 ends after step 2
  mask[:, 4] = False  # no event has step 4
  weights = (np.arange(T)[None] >= 2) & mask.any(-1)
  lp, am = np.zeros((E, T, B, 3)), np.ones((E, T, B, 3), bool)
  per_seed = [score(real, s, mask, weights, lp, am) for s in sims]
  out = summarise(per_seed)
  for d, cats in DIMENSIONS.items():  # by hand: each step's mean over the events that have it, seed by seed
    want = []
    for s in sims:
      kl = np.asarray(metrics.kl(metrics.step_distributions(real[d], mask, len(cats))[0],
                                 metrics.step_distributions(s[d], mask, len(cats))[0]))
      want.append([kl[[e for e in range(E) if mask[e, t].any()], t].mean() for t in range(4)])
    np.testing.assert_allclose(out["kl_dim_per_step"][d][:4], np.mean(want, 0), rtol=1e-6)
    assert out["kl_dim_per_step"][d][4] is None  # no event there
    # warm-up steps are kept (drawn from the real history); the scored ones, weighed by their events, give kl
    n = weights.sum(0)[2:4]
    np.testing.assert_allclose((np.array(out["kl_dim_per_step"][d][2:4]) * n).sum() / n.sum(), out["kl"][d], rtol=1e-5)
  np.testing.assert_allclose(out["kl_per_step"][:4], np.mean([out["kl_dim_per_step"][d][:4] for d in DIMENSIONS], 0))
  assert out["kl_per_step"][4] is None
  # each event's KL: its scored steps' mean, the mean over dimensions and seeds (event 1 has only step 2)
  for e in range(E):
    steps = [t for t in range(T) if weights[e, t]]
    want = np.mean([np.mean([np.asarray(metrics.kl(metrics.step_distributions(real[d], mask, len(c))[0],
                                                   metrics.step_distributions(s[d], mask, len(c))[0]))[e, steps].mean()
                             for d, c in DIMENSIONS.items()]) for s in sims])
    np.testing.assert_allclose(out["kl_per_event"][e], want, rtol=1e-6)


def test_paired_differences_over_events_with_bootstrap_intervals():
  """report.paired: every method against shrunk and the best method without a mean field, the mean
  over the same events of the difference and a 95% bootstrap interval that holds it (scipy's)."""
  from mfjax.evaluation.report import paired
  rng = np.random.default_rng(0)
  base = rng.uniform(0.1, 0.4, 200)
  events = lambda x: [None if i == 7 else float(v) for i, v in enumerate(x)]  # event 7 was not scored
  results = {"methods": {"state": {"kl_mean": 0.30, "kl_per_event": events(base + 0.05)},
                         "sft": {"kl_mean": 0.25, "kl_per_event": events(base + 0.02)},
                         "mf": {"kl_mean": 0.20, "kl_per_event": events(base - 0.03 + rng.normal(0, 0.01, 200))}},
             "simulators": {"methods": {"shrunk": {"kl_per_event": events(base)}}}}
  out = paired(results)
  assert set(out) == {"state", "sft", "mf"} and all(set(r) == {"shrunk", "sft"} for r in out.values())
  mf = out["mf"]["shrunk"]
  assert mf["events"] == 199 and mf["ci95"][0] < mf["diff"] < mf["ci95"][1] < 0
  np.testing.assert_allclose(mf["diff"], np.mean(np.delete(np.array(results["methods"]["mf"]["kl_per_event"], float)
                                                           - base, 7)), rtol=1e-9)
  np.testing.assert_allclose(out["state"]["shrunk"]["diff"], 0.05, rtol=1e-9)  # a constant gap: a point interval
  np.testing.assert_allclose(out["state"]["shrunk"]["ci95"], [0.05, 0.05], rtol=1e-9)
  assert out["sft"]["sft"] == {"diff": 0.0, "ci95": [0.0, 0.0], "events": 199}
  ci = scipy.stats.bootstrap((np.delete(np.array(results["methods"]["mf"]["kl_per_event"], float) - base, 7),),
                             np.mean, n_resamples=2000, method="percentile",
                             random_state=np.random.default_rng(0)).confidence_interval
  np.testing.assert_allclose(mf["ci95"], [ci.low, ci.high], rtol=1e-9)


def test_intervention_effect_and_weights_by_hand():
  from mfjax.evaluation.report import intervention_effect, intervention_weights
  agent_mask = np.ones((3, 4, 2), bool)
  agent_mask[1, 3] = False  # event 1 lacks its last step
  forced = np.zeros((3, 4, 2), bool)
  forced[:2, 1, 1] = True  # event 2 was too short for the intervention's slot
  w = intervention_weights(agent_mask, forced, step=1)
  np.testing.assert_array_equal(w, [[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
  rng = np.random.default_rng(0)
  without = {d: rng.dirichlet(np.ones(len(c)), (3, 4)) for d, c in DIMENSIONS.items()}
  with_ = {d: rng.dirichlet(np.ones(len(c)), (3, 4)) for d, c in DIMENSIONS.items()}
  got = intervention_effect(without, with_, w)
  for d in DIMENSIONS:  # the mean over the three weighted (event, step)s
    cells = [(0, 2), (0, 3), (1, 2)]
    np.testing.assert_allclose(got[d], np.mean([with_[d][c] - without[d][c] for c in cells], 0), rtol=1e-12)


def test_horizon_skill_is_paired_over_the_events_scored_at_each_step():
  from mfjax.evaluation.report import horizon
  E, T, warmup = 6, 5, 2
  rng = np.random.default_rng(0)
  base = rng.uniform(0.1, 1.0, (E, T))
  weights = np.ones((E, T), bool)
  weights[:, :warmup] = False
  weights[0, 4] = False  # event 0 has no step 4: left out there, for every name alike
  cells = {"warmup": base, "half": base / 2, "noisy": base * rng.uniform(0.5, 1.5, (E, T))}
  out = horizon(cells, weights, warmup, draws=500)
  assert out["h"] == [1, 2, 3] and out["persistence"] == "warmup"
  assert out["methods"]["warmup"]["skill"] == [0.0] * 3
  half = out["methods"]["half"]
  np.testing.assert_allclose(half["skill"], 0.5)  # half the KL on every event: skill 1/2, and so in every resample
  np.testing.assert_allclose(np.asarray(half["skill_ci95"]), 0.5)
  np.testing.assert_allclose(half["kl"][2], base[1:, 4].mean() / 2)  # step 4 without event 0
  noisy = out["methods"]["noisy"]
  for (lo, hi), s in zip(noisy["skill_ci95"], noisy["skill"]):
    assert lo <= s <= hi and hi > lo


def test_drift_compares_the_last_window_with_the_first_over_the_events_scored_in_both():
  from mfjax.evaluation.report import drift
  E, T = 5, 10
  rng = np.random.default_rng(1)
  flat = rng.uniform(0.1, 1.0, (E, 1)) * np.ones((1, T))  # each event's KL the same at every step
  growing = flat * np.linspace(1, 2, T)[None]  # step 10's twice step 1's
  weights = np.ones((E, T), bool)
  weights[:, :2] = False  # warm-up
  weights[4, 6:] = False  # event 4 ends early: not in the late window, left out of every row
  out = drift({"flat": flat, "growing": growing}, weights, ((3, 4), (9, 10)),
              {"flat": {"belief": [0.5] * 8 + [1.0, None]}}, draws=300)
  assert out["windows"] == [[3, 4], [9, 10]] and out["events"] == 4
  f, g = out["methods"]["flat"], out["methods"]["growing"]
  assert f["ratio"] == pytest.approx(1.0) and f["ratio_ci95"] == pytest.approx([1.0, 1.0])
  np.testing.assert_allclose(f["kl"], [flat[:4, 0].mean()] * 2)
  scale = np.linspace(1, 2, T)
  assert g["ratio"] == pytest.approx(scale[8:].mean() / scale[2:4].mean())
  assert g["ratio_ci95"] == pytest.approx([g["ratio"]] * 2)  # the same factor for every event
  assert f["kl_dim"] == {"belief": [0.5, 1.0]} and "kl_dim" not in g  # a missing step is skipped


@pytest.mark.parametrize("text, message", [("4-10", "at least two windows"), ("2-5,8-9", "steps 4..12 are scored"),
                                           ("5-4,8-9", "first <= last"), ("4-x,8-9", "'4-x' is not a window")])
def test_a_bad_drift_window_is_an_error_naming_it(text, message):
  from mfjax.pipeline_config import drift_windows
  with pytest.raises(ValueError, match=message):
    drift_windows(text, 3, 12)
  assert drift_windows("4-6, 10-12", 3, 12) == ((4, 6), (10, 12)) and drift_windows("", 3, 12) == ()
