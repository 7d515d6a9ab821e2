"""The mean-field encoder: permutation invariance, masks, the recurrence."""

import jax
import jax.numpy as jnp
import numpy as np

from mf_setup import make_model
from mfjax.meanfield import MeanFieldEncoder, MFState


def _apply(encoder, params, method, *a):
  return encoder.apply({"params": params["mf"]}, *a, method=method)


def _step(encoder, params, feats, mask, steps=2):
  state = MFState.zeros(encoder.cfg, feats.shape[:-2])
  for _ in range(steps):
    state = _apply(encoder, params, MeanFieldEncoder.update, state, feats, mask)
  return _apply(encoder, params, MeanFieldEncoder.posterior, state)


def test_permutation_invariant_and_masked_agents_ignored():
  _, encoder, params = make_model()
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]], bool)
  f = jax.jit(lambda x, m: _step(encoder, params, x, m).mu)
  ref = f(feats, mask)
  perm = np.array([3, 0, 4, 2, 1])
  np.testing.assert_allclose(f(feats[:, perm], mask[:, perm]), ref, rtol=1e-5, atol=1e-6)
  junk = jnp.where(mask[..., None], feats, 1e3 * jnp.asarray(rng.normal(size=feats.shape), jnp.float32))
  np.testing.assert_allclose(f(junk, mask), ref, rtol=1e-5, atol=1e-6)
  # ...and the features do matter (the test can fail):
  assert not np.allclose(f(feats.at[:, 0].add(1.0), mask), ref, atol=1e-4)


def test_running_mean_counts_and_empty_steps():
  _, encoder, params = make_model()
  feats = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 16)), jnp.float32)
  upd = jax.jit(lambda s, x, m: _apply(encoder, params, MeanFieldEncoder.update, s, x, m))
  s0 = MFState.zeros(encoder.cfg, (1,))
  s1 = upd(s0, feats, jnp.asarray([[1, 1, 0, 0]], bool))
  s2 = upd(s1, feats, jnp.asarray([[0, 0, 1, 1]], bool))
  np.testing.assert_allclose(s2.mean, feats.mean(1), rtol=1e-5, atol=1e-6)  # exact mean over all 4 agents
  assert float(s2.count[0]) == 4.0
  s3 = upd(s2, feats, jnp.zeros((1, 4), bool))  # a step without agents leaves the state as it was
  for a, b in zip(jax.tree.leaves(s3), jax.tree.leaves(s2)):
    np.testing.assert_array_equal(a, b)


def test_kl_matches_closed_form():
  _, encoder, params = make_model()
  q = jax.jit(lambda x, m: _step(encoder, params, x, m))(jnp.ones((1, 3, 16)), jnp.ones((1, 3), bool))
  mu, var = np.asarray(q.mu, np.float64), np.exp(np.asarray(q.logvar, np.float64))
  expected = 0.5 * np.sum(mu ** 2 + var - 1 - np.log(var), axis=(-2, -1))
  np.testing.assert_allclose(q.kl_to_standard_normal(), expected, rtol=1e-5)
