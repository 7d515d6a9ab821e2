"""The writer's channel (mfjax.rollout.channel): the tag distribution whose labelled actions come closest to
the head's, checked against scipy's constrained minimiser; its estimate from labelled rollouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mfjax.rollout.channel import PRIOR, as_static, deconvolve, draw, estimate


def _kl(p, q):
  return float(np.sum(p * (np.log(p) - np.log(q))))


def _channel(rng, C, follow=0.7):
  w = follow * np.eye(C) + (1 - follow) * rng.dirichlet(np.ones(C), size=C)
  return w / w.sum(1, keepdims=True)


def test_deconvolve_inverts_a_channel_where_it_can():
  rng = np.random.default_rng(0)
  C = 5
  w = _channel(rng, C)
  q0 = rng.dirichlet(np.ones(C) * 2, size=4)
  p = q0 @ w  # reachable: q0 is the exact answer
  q = np.asarray(deconvolve(jnp.asarray(p), jnp.asarray(w), iters=3000))
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(q @ w, p, atol=2e-5)
  np.testing.assert_allclose(q, q0, atol=2e-3)


def test_deconvolve_finds_scipys_minimum_where_the_head_is_out_of_the_channels_reach():
  rng = np.random.default_rng(1)
  C = 4
  w = _channel(rng, C, follow=0.5)
  p = np.array([0.9, 0.04, 0.03, 0.03])  # sharper than any mixture of w's rows
  q = np.asarray(deconvolve(jnp.asarray(p[None]), jnp.asarray(w), iters=3000))[0]
  best = optimize.minimize(lambda x: _kl(p, x @ w), np.full(C, 1.0 / C), method="SLSQP", bounds=[(0, 1)] * C,
                           constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-12})
  assert best.success
  assert _kl(p, q @ w) <= best.fun + 1e-5
  assert _kl(p, q @ w) < _kl(p, p @ w)  # better than drawing the tags from the head as they are
  assert (q >= 0).all() and q.sum() == pytest.approx(1.0, abs=1e-5)


def test_an_identity_channel_leaves_the_head_as_it_is_and_the_draws_as_sample_token_makes_them():
  from mfjax.sampling import sample_token
  logits = jax.random.normal(jax.random.PRNGKey(0), (512, 6)) * 2.0
  p = jax.nn.softmax(logits / 1.5, -1)
  np.testing.assert_allclose(deconvolve(p, jnp.eye(6)), p, rtol=1e-5)
  tag, read = draw(logits, jnp.eye(6), jax.random.PRNGKey(1), jax.random.PRNGKey(2), 1.5)
  np.testing.assert_array_equal(tag, sample_token(logits, jax.random.PRNGKey(1), temperature=1.5)[0])
  np.testing.assert_array_equal(read, tag)


def test_drawn_through_a_channel_the_reads_follow_the_head():
  """Tags from q, reads from W[tag]: the reads are distributed as the head's p (reachable here), the tags as q."""
  rng = np.random.default_rng(2)
  C, N = 4, 200_000
  w = _channel(rng, C, follow=0.6)
  q0 = np.array([0.05, 0.6, 0.3, 0.05])
  p_row = q0 @ w  # reachable: the tags drawn from q0 give it exactly
  logits = jnp.tile(jnp.log(jnp.asarray(p_row, jnp.float32)), (N, 1))
  tag, read = draw(logits, jnp.asarray(w, jnp.float32), jax.random.PRNGKey(3), jax.random.PRNGKey(4), 1.0)
  q = np.asarray(deconvolve(jnp.asarray(p_row[None]), jnp.asarray(w), iters=3000))[0]
  np.testing.assert_allclose(q, q0, atol=2e-3)
  se = np.sqrt(0.25 / N)
  np.testing.assert_allclose(np.bincount(np.asarray(read), minlength=C) / N, p_row, atol=5 * se)
  np.testing.assert_allclose(np.bincount(np.asarray(tag), minlength=C) / N, q, atol=5 * se)
  assert np.abs(q - p_row).max() > 0.05  # the tags differ from the head: the channel is not the identity


def test_estimate_counts_the_labels_read_after_each_tag_over_the_mask():
  tags = np.array([[0, 0, 1, 1, 2], [0, 1, 1, 2, 2]])
  labels = np.array([[0, 1, 1, 1, 2], [0, 0, 1, 0, 2]])
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  counts, w = estimate(tags, labels, mask, 4)
  want = np.zeros((4, 4))
  for t, lab in zip(tags[mask], labels[mask]):
    want[t, lab] += 1
  np.testing.assert_array_equal(counts, want)
  smoothed = want + PRIOR * np.eye(4)
  np.testing.assert_allclose(w, smoothed / smoothed.sum(1, keepdims=True))
  np.testing.assert_array_equal(w[3], np.eye(4)[3])  # a tag never drawn reads as followed
  with pytest.raises(ValueError, match="one shape"):
    estimate(tags, labels[:, :3], mask, 4)


def test_a_channel_must_be_a_square_row_stochastic_matrix():
  assert as_static(np.eye(2)) == ((1.0, 0.0), (0.0, 1.0))
  for bad in (np.ones((2, 3)) / 3, np.array([[0.5, 0.4], [0.0, 1.0]]), np.array([[1.5, -0.5], [0.0, 1.0]])):
    with pytest.raises(ValueError, match="square matrix"):
      as_static(bad)
