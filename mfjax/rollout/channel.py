"""The writer's channel: which class the labeler reads in the actions written after each tag, and tags
drawn so that the labelled population follows the population head.

An attribute-conditioned `mf` draws each agent's class c from the population head, p(c | m, s), and
writes the action after c's tag. The labeler does not always read c back: it reads class c' with
probability W[c, c'] (the writer's channel, `estimate`d from a rollout on training events). The labelled
population is then p W, not the p the head learned from the real actions' labels. With a channel the
rollout draws the tag from q = argmin KL(p || q W) over the simplex (`deconvolve`), the tag distribution
whose labelled actions come closest to p, and the mean field reads a class drawn from W[tag] (what the
labeler would read: distributed as q W, as the real actions' labels it was trained on were), not the tag.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mfjax.evaluation.correction import confusion

# the pseudo-count on each row's own class: a tag seldom drawn where the channel was estimated reads as
# followed (a tag never drawn there: exactly followed)
PRIOR = 2.0


def deconvolve(p_NxC: jax.Array, channel_CxC: jax.Array, iters: int = 500) -> jax.Array:
  """q [N, C], each row on the simplex, minimising KL(p || q W) for its row of p (W = `channel_CxC`, rows
  summing to 1): EM on the mixture weights of W's rows (the KL never rises from one step to the next),
  starting from q = p, so that q = p where W is the identity. The same problem as correcting a step's
  labelled proportions for the labeler's errors (`mfjax.evaluation.correction.correct`, host-side float64);
  this one runs inside the rollout's jit."""
  p = p_NxC.astype(jnp.float32)
  w = channel_CxC.astype(jnp.float32)
  tiny = jnp.finfo(jnp.float32).tiny

  def em(_, q):
    return q * ((p / jnp.maximum(q @ w, tiny)) @ w.T)

  return jax.lax.fori_loop(0, iters, em, p)


def draw(logits_NxC: jax.Array, channel_CxC: jax.Array, rng_tag, rng_read, temperature) -> tuple[jax.Array, jax.Array]:
  """(tag [N], read [N]): the tag drawn with `rng_tag` from `deconvolve`(softmax(logits / temperature), W), and the
  class the labeler would read in its action, drawn with `rng_read` from W[tag]. temperature > 0. With W the
  identity the tag is the draw `mfjax.sampling.sample_token` makes from the logits with `rng_tag`."""
  tiny = jnp.finfo(jnp.float32).tiny
  p = jax.nn.softmax(logits_NxC.astype(jnp.float32) / temperature, axis=-1)
  q = deconvolve(p, channel_CxC)
  tag = jax.random.categorical(rng_tag, jnp.log(jnp.maximum(q, tiny)), axis=-1)
  read = jax.random.categorical(rng_read, jnp.log(jnp.maximum(channel_CxC[tag], tiny)), axis=-1)
  return tag.astype(jnp.int32), read.astype(jnp.int32)


def estimate(tags, labels, mask, classes: int, prior: float = PRIOR) -> tuple[np.ndarray, np.ndarray]:
  """(counts [C, C] float64: the actions written after tag i (rows) that the labeler read as class j, the
  channel W [C, C]: the rows normalised after `prior` pseudo-counts on the diagonal) over the actions
  where `mask` (same shape as tags and labels, class ids in [0, C))."""
  tags, labels, mask = np.asarray(tags), np.asarray(labels), np.asarray(mask, bool)
  if tags.shape != labels.shape or tags.shape != mask.shape:
    raise ValueError(f"tags {tags.shape}, labels {labels.shape} and mask {mask.shape} must have one shape")
  counts = np.zeros((classes, classes))
  np.add.at(counts, (tags[mask], labels[mask]), 1.0)
  return counts, confusion(tags[mask], labels[mask], classes, prior=prior)


def as_static(channel_CxC) -> tuple:
  """The channel as nested tuples of floats: a jit static argument (`RolloutSpec.channel`)."""
  w = np.asarray(channel_CxC, np.float64)
  if w.ndim != 2 or w.shape[0] != w.shape[1] or (w < 0).any() or not np.allclose(w.sum(1), 1.0, atol=1e-6):
    raise ValueError(f"a writer's channel is a square matrix of non-negative rows summing to 1; got shape {w.shape}")
  return tuple(tuple(float(x) for x in row) for row in w)
