"""tools/probe_policy.py: the mean-field variants, the policy's and the head's P(share) under each,
and the cross-validated linear read-out (a whole run is probed in test_pipeline)."""

import os
import sys

import jax
import numpy as np
import pytest

from mf_setup import make_batch, make_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import probe_policy  # noqa: E402


def test_the_variants_are_the_mean_field_moved_as_named():
  rng = np.random.default_rng(0)
  m, mu = (rng.normal(size=(3, 4, 2, 5)).astype(np.float32) for _ in range(2))
  f = lambda name: np.asarray(probe_policy.variant_field(name, m, mu, jax.random.PRNGKey(0), warmup=2))
  np.testing.assert_array_equal(f("sampled"), m)
  # the warm-up's mean field from the first step after it on: steps 0-2 read their own, step 3 reads step 2's
  np.testing.assert_array_equal(f("warmup")[:, :3], m[:, :3])
  np.testing.assert_array_equal(f("warmup")[:, 3], m[:, 2])
  np.testing.assert_array_equal(f("mean"), mu)
  np.testing.assert_array_equal(f("swapped")[1], m[0])  # each event reads another's, at the same step
  np.testing.assert_array_equal(f("zero"), 0)
  shuffled = f("shuffled")  # every step reads one of its own event's steps
  assert all(any(np.array_equal(shuffled[e, t], m[e, s]) for s in range(4)) for e in range(3) for t in range(4))


def test_the_policy_reads_its_first_token_distribution_under_each_variant():
  model, encoder, params = make_model()
  batch = make_batch()
  out, mu = probe_policy.probe_chunk(model, encoder, params, batch, None, 5, jax.random.PRNGKey(0))
  assert set(out) == set(probe_policy.VARIANTS) and mu.shape[:2] == batch["agent_mask"].shape[:2]
  for row in out.values():
    p = np.asarray(row["p_share"])
    assert p.shape == batch["agent_mask"].shape and ((p > 0) & (p < 1)).all()
    assert "population" not in row  # no head
  # a policy that reads m: its first-token probabilities move when m does
  assert np.abs(np.asarray(out["zero"]["p_share"]) - np.asarray(out["sampled"]["p_share"])).max() > 1e-6
  np.testing.assert_array_equal(out["sampled"]["tokens"], batch["action_mask"].sum(-1))


def test_the_read_out_recovers_a_linear_signal_and_not_noise():
  rng = np.random.default_rng(1)
  X = rng.normal(size=(400, 6))
  groups = np.repeat(np.arange(40), 10)
  Y = np.stack([X @ rng.normal(size=6), rng.normal(size=400)], -1)
  r2 = probe_policy.ridge_r2(X, Y, groups, alpha=1e-4)
  assert r2[0] > 0.99 and r2[1] < 0.05


def test_the_head_forecast_is_scored_against_the_real_steps_beside_shrunk_and_global():
  from mfjax.categories import CLASSES, class_dimensions
  from mfjax.evaluation import bounds
  rng = np.random.default_rng(2)
  C, W = len(CLASSES), 2
  mask = rng.random((5, 6, 8)) < 0.9
  mask[0, 4:] = False  # an event that ends early: its empty steps are not scored
  val = {"agent_mask": mask, "category": np.where(mask, rng.integers(0, C, mask.shape), -1)}
  tmask = rng.random((7, 6, 8)) < 0.9
  train = {"agent_mask": tmask, "category": np.where(tmask, rng.integers(0, C, tmask.shape), -1)}
  exact = np.eye(C)[np.maximum(val["category"], 0)]  # each agent's own class: the step's real proportions
  out = probe_policy.head_forecast(exact, val, train, W)
  assert set(out) == {"h1", "all"} and set(out["h1"]) == {"head", "shrunk", "global"}
  dims = class_dimensions()
  for span in out.values():
    assert all(abs(span["head"][d]) < 1e-6 for d in dims)  # a perfect forecast
    assert span["head"]["mean"] < 1e-6 < span["shrunk"]["mean"]
  # shrunk and global as the reference simulators forecast them, scored over the steps after the warm-up
  scored = mask.any(-1) & (np.arange(6) >= W)[None]
  for d, of in dims.items():
    count = lambda c, m: (np.eye(max(of) + 1)[np.asarray(of)[np.maximum(c, 0)]] * m[..., None]).sum(2)
    real, tr = count(val["category"], mask), count(train["category"], tmask)
    q, _ = bounds.predictors(real, tr, ["a"] * 5, ["a"] * 7, W, scored)
    for name in ("shrunk", "global"):
      kl = bounds.kls(real, q[name])
      assert out["all"][name][d] == pytest.approx(kl[scored].mean(), rel=1e-9)
      h1 = scored & (np.arange(6) == W)[None]
      assert out["h1"][name][d] == pytest.approx(kl[h1].mean(), rel=1e-9)
    # agents that spread evenly over the classes forecast each category in proportion to its classes
    even = probe_policy.head_forecast(np.full(exact.shape, 1.0 / C), val, train, W)
    spread = np.bincount(of, minlength=max(of) + 1) / C
    want = bounds.kls(real, np.broadcast_to(spread, real.shape))[scored].mean()
    assert even["all"]["head"][d] == pytest.approx(want, rel=1e-9)
    # several heads at once: each its own row, scored as it would be alone
    both = probe_policy.head_forecast({"head": exact, "head_warmup_m": np.full(exact.shape, 1.0 / C)}, val, train, W)
    assert both["all"]["head_warmup_m"][d] == pytest.approx(want, rel=1e-9) and abs(both["all"]["head"][d]) < 1e-6
    assert both["h1"]["shrunk"] == out["h1"]["shrunk"]
