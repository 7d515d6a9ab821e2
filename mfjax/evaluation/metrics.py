"""Population metrics: per-step category distributions, real vs simulated.

All functions are vectorised over leading axes (numpy / jax.numpy):
distributions are [..., C] (C categories, summing to 1), trajectories
[..., T, C] (T steps). Divergences use natural logarithms (nats).

- `step_distributions`: category ids [..., T, B] + mask -> proportions [..., T, C]
- `kl`: KL(p || q) after additive smoothing of both (`eps`)
- `js`: Jensen-Shannon divergence; `tv`: total variation
- `w1`: Wasserstein-1 between distributions over ordinal categories 0..C-1
- `dtw`: dynamic-time-warping distance between trajectories (L1 local cost)
- `nll_per_token`: mean negative log-likelihood of real tokens
- `compare`: all of the above per dimension, plus means over dimensions
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import rel_entr

from mfjax.categories import DIMENSIONS, ORDINAL

DEFAULT_EPS = 1e-3  # additive smoothing: a category never seen gets ~eps mass


def step_distributions(ids_TxB, mask_TxB, num_categories: int):
  """Proportions [..., T, C] of each category among valid agents of each step,
  and the number of valid agents [..., T] (a step with none gets all zeros)."""
  ids, mask = jnp.asarray(ids_TxB), jnp.asarray(mask_TxB, jnp.float32)
  onehot = jax.nn.one_hot(ids, num_categories) * mask[..., None]
  counts = mask.sum(-1)
  return onehot.sum(-2) / jnp.maximum(counts, 1.0)[..., None], counts


def event_mean(x_ExT, valid_ExT):
  """[T]: the mean of x over the events that have each step (a step an event
  lacks has no proportions: it is left out, not counted as 0)."""
  return (np.asarray(x_ExT) * valid_ExT).sum(0) / np.maximum(np.asarray(valid_ExT).sum(0), 1)


def smooth(p, eps: float = DEFAULT_EPS):
  p = jnp.asarray(p, jnp.float32)
  return (p + eps) / (1.0 + eps * p.shape[-1])


def kl(p, q, eps: float = DEFAULT_EPS):
  """KL(p || q) over the last axis, both smoothed by `eps`."""
  return jnp.sum(rel_entr(smooth(p, eps), smooth(q, eps)), axis=-1)


def js(p, q):
  """Jensen-Shannon divergence (nats; 0 <= js <= log 2)."""
  p, q = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
  m = 0.5 * (p + q)  # positive wherever p or q is, so rel_entr (0 log 0 = 0) stays finite
  return 0.5 * jnp.sum(rel_entr(p, m), -1) + 0.5 * jnp.sum(rel_entr(q, m), -1)


def tv(p, q):
  return 0.5 * jnp.sum(jnp.abs(jnp.asarray(p) - jnp.asarray(q)), axis=-1)


def w1(p, q):
  """Earth mover's distance between distributions on categories 0, 1, ..., C-1."""
  return jnp.sum(jnp.abs(jnp.cumsum(jnp.asarray(p), -1) - jnp.cumsum(jnp.asarray(q), -1))[..., :-1], axis=-1)


def _dtw_single(x_TxC, y_SxC):
  cost = jnp.sum(jnp.abs(x_TxC[:, None, :] - y_SxC[None, :, :]), -1)  # T, S
  inf = jnp.float32(jnp.inf)

  def row(prev_S, cost_S):
    # D[i, j] = c[i, j] + min(D[i-1, j], D[i-1, j-1], D[i, j-1]); the last term
    # runs along the row, so the row is its own scan.
    diag = jnp.concatenate([jnp.array([inf]), prev_S[:-1]])
    best_up = jnp.minimum(prev_S, diag)

    def col(left, inputs):
      c, up = inputs
      d = c + jnp.minimum(up, left)
      return d, d

    _, cur = jax.lax.scan(col, inf, (cost_S, best_up))
    return cur, None

  first = jnp.cumsum(cost[0])
  last, _ = jax.lax.scan(row, first, cost[1:])
  return last[-1]


@jax.jit
def dtw(x_TxC, y_SxC):
  """DTW distance between two trajectories [..., T, C] and [..., S, C] (L1 cost
  between step distributions; leading axes are batched)."""
  x, y = jnp.asarray(x_TxC, jnp.float32), jnp.asarray(y_SxC, jnp.float32)
  f = _dtw_single
  for _ in range(x.ndim - 2):
    f = jax.vmap(f)
  return f(x, y)


def nll_per_token(logprobs, mask):
  """Mean negative log-likelihood per real token: -sum(logp * mask) / sum(mask)."""
  logprobs, mask = jnp.asarray(logprobs, jnp.float32), jnp.asarray(mask, jnp.float32)
  return -jnp.sum(logprobs * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def compare(real: dict, sim: dict, real_mask, sim_mask, *, eps: float = DEFAULT_EPS,
            step_weights: Optional[np.ndarray] = None) -> dict:
  """Per-dimension metrics between real and simulated category ids.

  real, sim: {dimension: ids [..., T, B]}; masks [..., T, B]. Step metrics (KL,
  JS, TV, W1) are averaged over steps that have real actions; DTW compares the
  whole trajectories. Returns {"kl": {dim: float}, ..., "kl_mean": float, ...}.
  """
  out = {k: {} for k in ("kl", "js", "tv", "w1", "dtw")}
  for d, cats in DIMENSIONS.items():
    if d not in real:
      continue
    p, n_real = step_distributions(real[d], real_mask, len(cats))
    q, _ = step_distributions(sim[d], sim_mask, len(cats))
    valid = (n_real > 0).astype(jnp.float32) if step_weights is None else jnp.asarray(step_weights)
    avg = lambda v: float(jnp.sum(v * valid) / jnp.maximum(jnp.sum(valid), 1.0))
    out["kl"][d] = avg(kl(p, q, eps))
    out["js"][d] = avg(js(p, q))
    out["tv"][d] = avg(tv(p, q))
    out["dtw"][d] = float(jnp.mean(dtw(p, q)))
    if d in ORDINAL:
      out["w1"][d] = avg(w1(p, q))
  for k in list(out):
    if out[k]:
      out[f"{k}_mean"] = float(np.mean(list(out[k].values())))
  return out


def accuracy_macro_f1(y_true, y_pred, categories) -> tuple[float, float]:
  """Accuracy and macro-F1 (mean over `categories` of per-category F1; a
  category absent from both truth and prediction is left out of the mean)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  f1s = []
  for c in categories:
    tp = np.sum((y_pred == c) & (y_true == c))
    fp = np.sum((y_pred == c) & (y_true != c))
    fn = np.sum((y_pred != c) & (y_true == c))
    if tp + fp + fn == 0:
      continue
    f1s.append(2 * tp / (2 * tp + fp + fn))
  return float(np.mean(y_true == y_pred)), float(np.mean(f1s)) if f1s else float("nan")
