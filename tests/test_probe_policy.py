"""tools/probe_policy.py: the mean-field variants, the policy's and the head's P(share) under each,
and the cross-validated linear read-out (a whole run is probed in test_pipeline)."""

import os
import sys

import jax
import numpy as np

from mf_setup import make_batch, make_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import probe_policy  # noqa: E402


def test_the_variants_are_the_mean_field_moved_as_named():
  rng = np.random.default_rng(0)
  m, mu = (rng.normal(size=(3, 4, 2, 5)).astype(np.float32) for _ in range(2))
  f = lambda name: np.asarray(probe_policy.variant_field(name, m, mu, jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(f("sampled"), m)
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
