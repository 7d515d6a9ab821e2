"""What population information can buy on real events: the pipeline's score for simulators
that sample each step's agents from fixed distributions, some knowing more than any method can.

The pipeline scores a method by KL(real || simulated) per (event, step) over the rollout
steps, each side being the category proportions of a step's B agents (`report.evaluate`).
Here the simulated side is n agents (the step's valid ones) drawn from a distribution q per
(event, step), scored the same way, for these q:

  global    the training events' proportions at the same step index: knows nothing of the event
  label     the same over the training events with the event's label (rumor / non-rumor), a
            stand-in for what the topic alone tells a population-blind policy
  warmup    the event's own warm-up steps, pooled: what the warm-up shows, held fixed
  shrunk    the warm-up's counts plus `global` as k pseudo-agents, k fitted per dimension on
            the training events (their warm-up predicting their later steps): a simple
            estimator from the warm-up that a population model should beat
  previous  the event's real previous step: teacher-forced history (past the first rollout step
            a rollout has only its own samples, so this is an oracle there)
  event     the event's own scored steps, pooled: an oracle, its static distribution
  step      the real step itself, resampled: an oracle, the sampling noise of n agents alone

and, where the agents' states are given as numbers (`mfjax.data.step_numbers`), a forecaster that reads
each agent:

  agents    a per-agent logistic regression (scikit-learn) from the `shrunk` forecast's log-probabilities,
            the step and the agent's state as numbers (cascade depth, hours since the post, activity
            elsewhere), fitted on the training events' agents after the warm-up; a step's q is the mean
            over its agents: what a population head that reads the agent's state reaches with no LM
            (`AgentAnchor`: the same over joint classes, per agent, as an anchored head's start)
  words     `agents` whose agents also read their event's warm-up words as numbers (`warmup_words`: the
            warm-up actions' character n-grams, TF-IDF reduced by an SVD fitted on the training events):
            what the warm-up's text tells beyond its labelled classes, still with no LM

and, on the synthetic world (whose equations are known), a simulator that runs rather than draws:

  world     the world's own equations run free from the real warm-up (`synthetic.run_free`), each
            step reading the history it made itself: the perfect simulator, an oracle of the world's
            rules. A rollout past its warm-up can at best score as it does: the real course is one
            draw among the many a faithful simulator may take.

A method that reads the population can gain at most what separates `label` (or `global`) from
`event` by knowing the event, and from `event` towards `step` by following it over time. Where
`warmup` already scores below every method, the methods leave the warm-up's information unused.

Letters: E events, T steps, B agents, C categories of a dimension, N training events.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Callable, Optional, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import metrics

PREDICTORS = ("global", "label", "warmup", "shrunk", "previous", "event", "step")
ORACLES = ("previous", "event", "step", "world")  # they read real steps a rollout past its warm-up does not
# have, or (world) the rules that made them
PSEUDOCOUNTS = tuple(2.0 ** np.arange(-2, 13))  # the k `shrunk` chooses from


def counts(ids_ExTxB, mask_ExTxB, num_categories: int) -> np.ndarray:
  """Category counts [E, T, C] of each step's valid agents (float64)."""
  onehot = np.eye(num_categories)[np.asarray(ids_ExTxB)] * np.asarray(mask_ExTxB, bool)[..., None]
  return onehot.sum(-2)


def _normalise(c, fallback):
  """c / its sum over the last axis, `fallback` (broadcast) where the sum is 0."""
  total = c.sum(-1, keepdims=True)
  return np.where(total > 0, c / np.maximum(total, 1e-300), fallback)


def _shrunk(counts_ExTxC, per_step_TxC, warmup: int, k: float):
  """[E, T, C]: (the warm-up's pooled counts + k * the step's training proportions) / (their agents + k)."""
  warm = counts_ExTxC[:, :warmup].sum(1, keepdims=True)
  return (warm + k * per_step_TxC[None]) / (warm.sum(-1, keepdims=True) + k)


def training_proportions(train_NxTxC) -> tuple[np.ndarray, np.ndarray]:
  """(pooled [C], per step [T, C]) category proportions of the training events' counts: `global`'s,
  each falling back to the coarser one (to uniform for pooled) where it has no agent."""
  train = np.asarray(train_NxTxC, np.float64)
  pooled = _normalise(train.sum((0, 1)), np.full(train.shape[-1], 1.0 / train.shape[-1]))
  return pooled, _normalise(train.sum(0), pooled)


def fit_pseudocount(train_NxTxC, per_step_TxC, warmup: int) -> float:
  """The k of PSEUDOCOUNTS under which the training events' warm-ups best predict their later
  steps' agents (the highest log-likelihood; ties go to the smaller k)."""
  target = train_NxTxC[:, warmup:]
  ll = [float((target * np.log(np.maximum(_shrunk(train_NxTxC, per_step_TxC, warmup, k)[:, warmup:], 1e-300))).sum())
        for k in PSEUDOCOUNTS]
  return PSEUDOCOUNTS[int(np.argmax(ll))]


def shrunk_forecast(real_ExTxC, train_NxTxC, warmup: int, per_step_TxC=None) -> tuple[np.ndarray, float]:
  """(`shrunk`'s forecast [E, T, C] of every step of the scored events from their warm-up's counts, its
  pseudo-count k fitted on the training events' counts); per_step_TxC: the training proportions per step
  (`training_proportions`, computed when not given)."""
  train = np.asarray(train_NxTxC, np.float64)
  if per_step_TxC is None:
    _, per_step_TxC = training_proportions(train)
  k = fit_pseudocount(train, per_step_TxC, warmup)
  return _shrunk(np.asarray(real_ExTxC, np.float64), per_step_TxC, warmup, k), k


def predictors(real_ExTxC, train_NxTxC, real_labels: Sequence, train_labels: Sequence, warmup: int,
               scored_ExT) -> dict:
  """(name -> q [E, T, C], shrunk's k) for one dimension, from category counts of the scored
  events (real) and of the training events; scored_ExT: the (event, step)s the score covers."""
  real = np.asarray(real_ExTxC, np.float64)
  train = np.asarray(train_NxTxC, np.float64)
  E, T, C = real.shape
  if train.shape[1:] != (T, C):
    raise ValueError(f"training counts {train.shape} do not match the scored events' steps and categories {real.shape}")
  pooled, per_step = training_proportions(train)  # [C], the fallback of every estimate; [T, C]
  out = {"global": np.broadcast_to(per_step, real.shape)}
  train_labels = np.asarray(train_labels, object)
  by_label = {lab: _normalise(train[train_labels == lab].sum(0), per_step) for lab in set(real_labels)}
  out["label"] = np.stack([by_label[lab] for lab in real_labels]) if E else np.zeros_like(real)
  warm = real[:, :warmup].sum(1, keepdims=True)  # [E, 1, C]
  out["warmup"] = np.broadcast_to(_normalise(warm, per_step[None]), real.shape)
  shrunk, k = shrunk_forecast(real, train, warmup, per_step)
  out["shrunk"] = np.broadcast_to(shrunk, real.shape)
  step = _normalise(real, per_step[None])
  out["previous"] = np.concatenate([per_step[None, :1].repeat(E, 0), step[:, :-1]], 1)
  scored = np.asarray(scored_ExT, bool)[..., None]
  out["event"] = np.broadcast_to(_normalise((real * scored).sum(1, keepdims=True), per_step[None]), real.shape)
  out["step"] = step
  return out, k


def _agent_features(shrunk_ExTxC, numbers_ExTxBxF, steps: int) -> np.ndarray:
  """[E, T, B, C + steps + F]: what the `agents` forecaster reads of each agent: the log of its step's
  `shrunk`-style forecast, the step one-hot (`steps` of them; a later step reads as the last) and its
  state as numbers."""
  lead, C = np.shape(numbers_ExTxBxF)[:3], np.shape(shrunk_ExTxC)[-1]
  logq = np.broadcast_to(np.log(np.maximum(np.asarray(shrunk_ExTxC, np.float64), 1e-6))[:, :, None], lead + (C,))
  return np.concatenate([logq, _blind_features(numbers_ExTxBxF, steps)], -1)


def _blind_features(numbers_ExTxBxF, steps: int) -> np.ndarray:
  """[E, T, B, steps + F]: `_agent_features` without the event's forecast: the step one-hot and the state."""
  n = np.asarray(numbers_ExTxBxF, np.float64)
  onehot = np.eye(steps)[np.minimum(np.arange(n.shape[1]), steps - 1)]
  return np.concatenate([np.broadcast_to(onehot[None, :, None], n.shape[:3] + (steps,)), n], -1)


def _agent_model(X, y):
  """The `agents` forecaster's logistic regression (scikit-learn), fitted on rows X [N, F] of classes y [N] with
  one BLAS thread (on CED's 457k training agents 17 s alone on 2 cores, 21 s with two threads)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  with threadpool_limits(1):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


def _class_probs(model, X, C: int) -> np.ndarray:
  """[..., C] the fitted model's probabilities of rows X [..., F] (0 for a class it never saw)."""
  p = np.zeros(X.shape[:-1] + (C,))
  with threadpool_limits(1):
    p[..., model.classes_] = model.predict_proba(X.reshape(-1, X.shape[-1])).reshape(X.shape[:-1] + (-1,))
  return p


def _class_logprobs(model, X, C: int) -> np.ndarray:
  """[..., C] float32: the log of `_class_probs`, a class the model never saw at log 1e-12 (what the head reads)."""
  return np.log(np.maximum(_class_probs(model, X, C), 1e-12)).astype(np.float32)


def agent_forecast(real_ExTxB, real_mask, real_numbers, train_NxTxB, train_mask, train_numbers, shrunk_real,
                   shrunk_train, warmup: int) -> np.ndarray:
  """`agents`' q [E, T, C] for one dimension: category ids [., T, B] of the scored and the training
  events' agents, their masks, their states as numbers [., T, B, F] and the `shrunk` forecasts [., T, C]
  of each. Before the warm-up's end, and at a step with no agent, q is `shrunk`'s."""
  T, C = np.shape(shrunk_real)[1:]
  after = (np.arange(T) >= warmup)[None, :, None]
  fit = np.asarray(train_mask, bool) & after
  if not fit.any():
    raise ValueError("the `agents` forecaster has no training agent after the warm-up")
  model = _agent_model(_agent_features(shrunk_train, train_numbers, T)[fit], np.asarray(train_NxTxB)[fit])
  p = _class_probs(model, _agent_features(shrunk_real, real_numbers, T), C)
  w = (np.asarray(real_mask, bool) & after).astype(np.float64)
  n = w.sum(-1)[..., None]
  q = (p * w[..., None]).sum(2) / np.maximum(n, 1.0)
  return np.where(n > 0, q, np.asarray(shrunk_real, np.float64))


@dataclasses.dataclass(frozen=True)
class WarmupWords:
  """An event's first actions' words as numbers: their texts joined into one document, weighted as character
  1-2-gram TF-IDF (scikit-learn; vocabulary and weights from the training events') and reduced to `dims` by a
  truncated SVD fitted on them. Read by the `words` forecaster and by an anchor with `mf.anchor_words`."""

  vectorizer: object
  svd: object
  actions: int  # the leading actions read (the warm-up's: its steps x agents)

  @classmethod
  def fit(cls, train_texts: Sequence[Sequence[str]], actions: int, dims: int, seed: int = 0) -> "WarmupWords":
    """Fitted on the training events' texts [N][T*B] (laid out as `step_texts` lays them out)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=3, max_features=30000, sublinear_tf=True)
    fit = vec.fit_transform(_documents(train_texts, actions))
    if fit.shape[1] <= dims:
      raise ValueError(f"the training events' warm-ups hold {fit.shape[1]} character n-grams seen in 3+ of them: "
                       f"too few for {dims} dimensions")
    with threadpool_limits(1):
      return cls(vec, TruncatedSVD(dims, random_state=seed).fit(fit), int(actions))

  def transform(self, texts: Sequence[Sequence[str]], actions: Optional[int] = None) -> np.ndarray:
    """[E, dims] float64 of each event's first `actions` texts (default: the fitted number); no later one read."""
    with threadpool_limits(1):
      return self.svd.transform(self.vectorizer.transform(_documents(texts, self.actions if actions is None
                                                                      else actions)))

  def causal(self, texts: Sequence[Sequence[str]], steps: int, agents: int) -> np.ndarray:
    """[E, T, dims]: at step t the words of the steps before min(t, the fitted steps), never t's own or later
    ones (t = 0 reads none: zeros), as an anchored head may read them at t."""
    read = self.actions // agents
    upto = [np.zeros((len(texts), self.svd.components_.shape[0]))]  # upto[s]: the words of the first s steps
    upto += [self.transform(texts, s * agents) for s in range(1, read + 1)]
    return np.stack([upto[min(t, read)] for t in range(steps)], 1)


def _documents(texts: Sequence[Sequence[str]], actions: int) -> list[str]:
  return [" ".join(t for t in row[:actions] if t) for row in texts]


def warmup_words(train_texts: Sequence[Sequence[str]], texts: Sequence[Sequence[str]], warmup_actions: int,
                 dims: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(scored [E, dims], training [N, dims]): each event's first `warmup_actions` actions' words as numbers for
  the `words` forecaster (`WarmupWords`, fitted on the training events)."""
  words = WarmupWords.fit(train_texts, warmup_actions, dims, seed)
  return words.transform(texts), words.transform(train_texts)


def with_event_features(numbers_ExTxBxF, event) -> np.ndarray:
  """[E, T, B, F + G]: every agent's numbers followed by its event's features, [E, G] or per step [E, T, G]."""
  n = np.asarray(numbers_ExTxBxF, np.float64)
  g = np.asarray(event, np.float64)
  g = g[:, None, None] if g.ndim == 2 else g[:, :, None]
  return np.concatenate([n, np.broadcast_to(g, n.shape[:3] + g.shape[-1:])], -1)


def causal_shrunk(counts_ExTxC, per_step_TxC, steps: int, k: float) -> np.ndarray:
  """[E, T, C]: at each step t, (the counts of the steps s < min(t, steps) + k * the training proportions
  of step t) / (their agents + k): `shrunk` as an anchored head reads it at t (`mfjax.meanfield.encoder.
  anchor_counts`), never from t's own agents or later ones. A step past per_step's reads its last row."""
  c = np.asarray(counts_ExTxC, np.float64)
  T = c.shape[1]
  first = c * (np.arange(T) < steps)[None, :, None]
  before = np.cumsum(first, 1) - first
  prior = np.asarray(per_step_TxC, np.float64)[np.minimum(np.arange(T), len(per_step_TxC) - 1)]
  return (before + k * prior[None]) / (before.sum(-1, keepdims=True) + k)


@dataclasses.dataclass(frozen=True)
class AgentAnchor:
  """A population head's per-agent anchor (`mf.anchor='agents'`): the `agents` forecaster over joint classes
  (`mfjax.categories.CLASSES`), each agent's class from `causal_shrunk` (k and the per-step proportions
  fitted on the training events), its step and its state as numbers, a logistic regression fitted on every
  labelled training agent. `logprobs` gives each agent's log-probabilities: what the head adds its layers to.
  With `words` (mf.anchor_words) each agent also reads the words of its event's steps before min(t, steps)
  (`WarmupWords.causal`), as it reads their classes. `blind` gives the anchor of agents of whose events
  nothing is known: a second regression, fitted on the same agents from their step and state alone."""

  model: object
  per_step: np.ndarray  # [T, C] the training events' class proportions per step
  k: float
  steps: int  # the anchor reads the classes of the events' first `steps` steps (mf.anchor_steps)
  words: Optional[WarmupWords] = None
  blind_model: object = None  # the regression on the step and the state alone (`blind`)

  @classmethod
  def fit(cls, classes_NxTxB, mask_NxTxB, numbers_NxTxBxF, *, steps: int, classes: int, texts=None,
          words: int = 0, blind: bool = False) -> "AgentAnchor":
    """Fitted on the training events' joint classes [N, T, B] (-1: unlabelled), agent mask and numbers;
    `words` > 0: also their words as that many numbers, from their texts [N][T*B] (`step_texts`' layout);
    `blind`: also the regression `blind` reads (a second fit, where the method 'blind' is rolled out)."""
    if steps < 1:
      raise ValueError(f"an agents anchor reads the classes of the first steps: steps={steps} must be >= 1")
    y = np.asarray(classes_NxTxB)
    known = np.asarray(mask_NxTxB, bool) & (y >= 0)
    if not known.any():
      raise ValueError("an agents anchor needs labelled training agents: every training action is unlabelled")
    c = counts(np.maximum(y, 0), known, classes)
    _, per_step = training_proportions(c)
    k = fit_pseudocount(c, per_step, steps)
    ww = None
    if words:
      if texts is None:
        raise ValueError("an agents anchor that reads words needs the training events' texts")
      ww = WarmupWords.fit(texts, steps * y.shape[2], words)
    anchor = cls(None, per_step, k, steps, ww)
    X = _agent_features(causal_shrunk(c, per_step, steps, k), anchor._numbers(numbers_NxTxBxF, texts), c.shape[1])
    blind_model = _agent_model(_blind_features(numbers_NxTxBxF, c.shape[1])[known], y[known]) if blind else None
    return dataclasses.replace(anchor, model=_agent_model(X[known], y[known]), blind_model=blind_model)

  def _numbers(self, numbers_ExTxBxF, texts) -> np.ndarray:
    """The agents' numbers, followed by their event's words so far where the anchor reads them."""
    if self.words is None:
      return numbers_ExTxBxF
    if texts is None:
      raise ValueError("this agents anchor reads the events' words (mf.anchor_words): give their texts")
    shape = np.shape(numbers_ExTxBxF)
    return with_event_features(numbers_ExTxBxF, self.words.causal(texts, shape[1], shape[2]))

  def logprobs(self, classes_ExTxB, mask_ExTxB, numbers_ExTxBxF, texts=None) -> np.ndarray:
    """[E, T, B, C] float32: each agent's anchor log-probabilities, from the labelled classes (and with
    `words`, the texts [E][T*B]) of its event's first `steps` steps (later ones, e.g. a forecast's
    placeholders, are never read)."""
    y = np.asarray(classes_ExTxB)
    T = y.shape[1]
    known = np.asarray(mask_ExTxB, bool) & (y >= 0) & (np.arange(T) < self.steps)[None, :, None]
    C = self.per_step.shape[-1]
    shrunk = causal_shrunk(counts(np.maximum(y, 0), known, C), self.per_step, self.steps, self.k)
    X = _agent_features(shrunk, self._numbers(numbers_ExTxBxF, texts), len(self.per_step))
    return _class_logprobs(self.model, X, C)

  def blind(self, numbers_ExTxBxF) -> np.ndarray:
    """[E, T, B, C] float32: the anchor of agents of whose events nothing is known (the rollout method 'blind'):
    the regression fitted on the training agents' step and state alone, none of their event's classes or words
    (so that, averaged over the training agents of a step, it gives that step's training proportions)."""
    if self.blind_model is None:
      raise ValueError("this agents anchor was fitted without its blind regression (AgentAnchor.fit blind=True)")
    return _class_logprobs(self.blind_model, _blind_features(numbers_ExTxBxF, len(self.per_step)),
                           self.per_step.shape[-1])


def kls(real_ExTxC, sim_ExTxC, eps: float = metrics.DEFAULT_EPS, correct: Optional[Callable] = None) -> np.ndarray:
  """[E, T]: the pipeline's KL(real || simulated) per (event, step) between the proportions of
  two steps' category counts; `correct` maps proportions [..., C] to corrected ones first (the
  labeler's errors: `mfjax.evaluation.correction`)."""
  p = [np.asarray(c, np.float64) for c in (real_ExTxC, sim_ExTxC)]
  p_real, p_sim = (c / np.maximum(c.sum(-1, keepdims=True), 1) for c in p)
  if correct is not None:
    p_real, p_sim = correct(p_real), correct(p_sim)
  return np.asarray(metrics.kl(p_real, p_sim, eps), np.float64)


def sampled_counts(real_ExTxC, q_ExTxC, rng: np.random.Generator) -> np.ndarray:
  """[E, T, C]: as many agents as each real step has, drawn from q."""
  real = np.asarray(real_ExTxC, np.float64)
  q = np.asarray(q_ExTxC, np.float64)
  return rng.multinomial(real.sum(-1).astype(np.int64), q / q.sum(-1, keepdims=True))


def sampled_kls(real_ExTxC, q_ExTxC, rng: np.random.Generator, eps: float = metrics.DEFAULT_EPS) -> np.ndarray:
  """[E, T]: `kls` with the simulated side as many agents as the real step has, drawn from q."""
  return kls(real_ExTxC, sampled_counts(real_ExTxC, q_ExTxC, rng), eps)


def bounds(real_ids: dict, real_mask, real_labels: Sequence, train_ids: dict, train_mask, train_labels: Sequence,
           *, warmup: int, draws: int = 3, seed: int = 0, simulated: Optional[dict] = None,
           correct: Optional[Callable] = None, keep_cells: bool = False, numbers: Optional[tuple] = None,
           words: Optional[tuple] = None) -> dict:
  """Every predictor's sampled KL, from category ids {dimension: [E, T, B]} and agent masks of the
  scored events and of the training events; `simulated`: name -> one set of category ids per draw
  of simulators that run (`world`), scored over the real agent mask; `numbers`: (scored, training)
  agents' states as numbers [., T, B, F] (`mfjax.data.step_numbers`), which add the `agents` forecaster;
  `words` (with `numbers`): (scored, training) events' warm-up words as numbers [., G] (`warmup_words`), which
  add the `words` forecaster. Returns
  {"methods": {name: {"kl_mean" (mean over draws of the mean over dimensions), "kl_mean_std" (over
  draws), "kl": {dimension}, "kl_per_step": [T] (the mean over the events scored at each step; None
  where none is), "kl_per_event": [E] (each event's mean over its scored steps, draws and dimensions;
  None for an event with none)}}, "scored_steps", "draws", "shrunk_pseudocounts": {dimension: k}}; with
  `correct` (dimension, proportions [..., C]) -> corrected proportions, also "corrected": {name: {"kl_mean",
  "kl": {dimension}}}, the same draws scored on corrected proportions; with `keep_cells`, also "cells": {name:
  [E, T] KL per (event, step), the mean over draws and dimensions} (arrays: for the caller, not for JSON)."""
  real_mask = np.asarray(real_mask, bool)
  T = real_mask.shape[1]
  scored = (np.arange(T)[None] >= warmup) & real_mask.any(-1)
  if not scored.any():
    raise ValueError(f"no step to score: warm-up {warmup} covers all {T} steps or the events are empty")
  w = scored.astype(np.float64)
  simulated = simulated or {}
  for name, runs in simulated.items():
    if len(runs) != draws:
      raise ValueError(f"simulated[{name!r}] has {len(runs)} runs for {draws} draws")
  if words is not None and numbers is None:
    raise ValueError("the `words` forecaster is `agents` reading more: give the agents' numbers too")
  predicted = PREDICTORS + (("agents",) if numbers is not None else ()) + (("words",) if words is not None else ())
  if words is not None:  # the agents' numbers with their event's words, for every dimension
    numbers_words = tuple(with_event_features(n, w) for n, w in zip(numbers, words))
  per_draw = {name: {d: [] for d in DIMENSIONS} for name in (*predicted, *simulated)}  # each draw's KL [E, T]
  per_draw_corrected = {name: {d: [] for d in DIMENSIONS} for name in per_draw}
  pseudocounts = {}
  for d, cats in DIMENSIONS.items():
    real = counts(real_ids[d], real_mask, len(cats))
    train = counts(train_ids[d], train_mask, len(cats))
    qs, pseudocounts[d] = predictors(real, train, real_labels, train_labels, warmup, scored)
    if numbers is not None:
      shrunk_train = _shrunk(train, training_proportions(train)[1], warmup, pseudocounts[d])  # the k just fitted
      qs["agents"] = agent_forecast(real_ids[d], real_mask, numbers[0], train_ids[d], train_mask, numbers[1],
                                    qs["shrunk"], shrunk_train, warmup)
    if words is not None:
      qs["words"] = agent_forecast(real_ids[d], real_mask, numbers_words[0], train_ids[d], train_mask,
                                   numbers_words[1], qs["shrunk"], shrunk_train, warmup)
    fix = None if correct is None else functools.partial(correct, d)
    sims = {name: [] for name in per_draw}  # each draw's simulated counts [E, T, C]
    for name in predicted:
      # keyed by names: a predictor's draws do not move when another is added; `words` draws with `agents`' keys
      # (common random numbers: their paired difference is the forecasts', not the draws')
      key = "agents" if name == "words" else name
      for k in range(draws):
        rng = np.random.default_rng([seed, k, zlib.crc32(key.encode()), zlib.crc32(d.encode())])
        sims[name].append(sampled_counts(real, qs[name], rng))
    for name, runs in simulated.items():
      sims[name] = [counts(ids[d], real_mask, len(cats)) for ids in runs]
    for name, drawn in sims.items():
      per_draw[name][d] = [kls(real, c) for c in drawn]
      if fix is not None:
        per_draw_corrected[name][d] = [kls(real, c, correct=fix) for c in drawn]
  out, cells = {}, {}
  for name, dims in per_draw.items():
    kl = {d: (np.stack(v) * w).sum((1, 2)) / w.sum() for d, v in dims.items()}  # [draws] per dimension
    means = np.mean([kl[d] for d in DIMENSIONS], 0)  # [draws]: the mean over dimensions of each draw
    steps = np.mean([np.mean(v, 0) for v in dims.values()], 0)  # [E, T]: over draws and dimensions
    cells[name] = steps
    per_step = metrics.event_mean(steps, w)
    n = w.sum(1)
    per_event = np.where(n > 0, (steps * w).sum(1) / np.maximum(n, 1e-300), np.nan)  # [E]
    out[name] = {"kl_mean": float(means.mean()), "kl_mean_std": float(means.std()),
                 "kl": {d: float(v.mean()) for d, v in kl.items()},
                 "kl_per_step": [float(x) if scored[:, t].any() else None for t, x in enumerate(per_step)],
                 "kl_per_event": [None if np.isnan(x) else float(x) for x in per_event]}
  result = {"methods": out, "scored_steps": int(scored.sum()), "draws": draws, "shrunk_pseudocounts": pseudocounts}
  if keep_cells:
    result["cells"] = cells
  if correct is not None:
    result["corrected"] = {}
    for name, dims in per_draw_corrected.items():
      kl = {d: float(np.mean([(x * w).sum() / w.sum() for x in v])) for d, v in dims.items()}
      result["corrected"][name] = {"kl_mean": float(np.mean(list(kl.values()))), "kl": kl}
  return result


def table(result: dict, first: str = "simulator") -> str:
  """`bounds`' result as text, the oracles starred as in the pipeline's table."""
  rows = [f"{first:<12}{'KL mean':>10}{'± std':>8}   KL per dimension"]
  for name, r in result["methods"].items():
    dims = " ".join(f"{d[:4]} {v:.3f}" for d, v in r["kl"].items())
    label = f"{name}*" if name in ORACLES else name
    rows.append(f"{label:<12}{r['kl_mean']:>10.4f}{r['kl_mean_std']:>8.4f}   {dims}")
  if "shrunk_pseudocounts" in result:
    ks = ", ".join(f"{d} {k:g}" for d, k in result["shrunk_pseudocounts"].items())
    rows.append(f"(shrunk's pseudo-agents k: {ks})")
  return "\n".join(rows)
