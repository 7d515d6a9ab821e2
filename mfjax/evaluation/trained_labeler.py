"""`TrainedLabeler`: a labeler learned from the project's hand labels (docs/labeling.md).

Per dimension, a logistic regression (scikit-learn; class-balanced, its strength chosen by an
inner cross-validation on balanced accuracy) over
- character 1-3-grams (TF-IDF) of the author's own text: the repost chain and reply prefix removed,
  emoticons kept, every @mention read as one symbol (names say nothing about a stance), and
- the lexicons of `RuleLabeler` as counts (positive / negative emoticons and words, doubt,
  question and promotion markers, the broad doubt-or-question `CUES`, mentions, question marks), its own
  reading of the text one-hot, whether the text is a bare share, and its length;
- sentiment also, where an `EmoticonSentiment` is given: its score of the text, learned by distant
  supervision from the unlabelled CED train comments (their emoticons as noisy positive / negative
  labels, the words without the emoticons as features), which reads feelings in words that the
  ~1,400 hand labels never show.
Behaviour is learned on every text; belief, sentiment and intent on the comments, and a text read
as a share gets `SHARE_LABELS`, as the guide says. It fits in a few seconds on the ~1,470 hand
labels (`fit`), the emoticon model in about 17 s on the ~130,000 train comments with one kind of
emoticon (`EmoticonSentiment.from_data`, once per process); `from_hand_labels(data_dir)` reads the
hand labels with their texts from the CED files and learns both, once: the fit is kept on disk for
later runs (`mfjax.evaluation.fit_cache`).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from mfjax.categories import DIMENSIONS, SHARE_LABELS
from mfjax.evaluation import labelers as rules
from mfjax.evaluation.labelers import RuleLabeler, collate

COMMENT_DIMENSIONS = ("belief", "sentiment", "intent")
C_GRID = (0.3, 1.0, 3.0, 10.0)  # inverse regularisation strengths the inner cross-validation picks from
NGRAMS = (1, 3)  # character n-gram lengths
VERSION = "trained-2"  # with the hand labels' digest, `TrainedLabeler.version` (from_hand_labels)
_MENTION = re.compile(r"@[\w\-\u4e00-\u9fff]+[:：]?")


def own_text(text: str) -> str:
  """The author's words with emoticons, each @mention as '@'."""
  return _MENTION.sub(" @ ", rules._without_chain(text or "")).strip()


def rule_features(texts: Sequence[str]) -> np.ndarray:
  """[N, F] dense features from the rule lexicons and the rule labeler's reading."""
  rule = RuleLabeler()
  rows = []
  for text in texts:
    own = rules._without_chain(text or "")
    words = rules.strip_forwarding(own)
    read = rule.label_one(text or "")
    row = [float(rules.is_share(text or "")), np.log1p(len(words)), np.log1p(len(own)),
           sum(own.count(e) for e in rules.POSITIVE_EMOTICONS), sum(own.count(e) for e in rules.NEGATIVE_EMOTICONS),
           len(rules._EMOTICON.findall(own)),
           sum(words.count(w) for w in rules.POSITIVE_WORDS), sum(words.count(w) for w in rules.NEGATIVE_WORDS),
           sum(m in own for m in rules.DOUBT_MARKERS), sum(m in words for m in rules.QUESTION_MARKERS),
           sum(m in words for m in rules.PROMOTION_MARKERS), len(_MENTION.findall(own)),
           own.count("?") + own.count("？"), own.count("!") + own.count("！"), len(rules.CUES.findall(own))]
    row += [float(read[d] == c) for d, cats in DIMENSIONS.items() for c in cats]
    rows.append(row)
  return np.log1p(np.asarray(rows, np.float64))


def without_emoticons(text: str) -> str:
  """`own_text` with its emoticons blanked: what `EmoticonSentiment` reads."""
  return rules._EMOTICON.sub(" ", own_text(text)).strip()


class EmoticonSentiment:
  """Distant supervision for sentiment: a logistic regression over character 1-3-grams of the words
  (`without_emoticons`) of comments that carry positive emoticons only (`rules.POSITIVE_EMOTICONS`) or
  negative ones only, told apart by those emoticons. `score(texts)`: [N, 1] log-odds of positive."""

  def __init__(self, model):
    self.model = model

  @staticmethod
  def distant_labels(texts: Sequence[str]) -> tuple[list, np.ndarray]:
    """The texts that carry one kind of emoticon only, and 1 (positive) or 0 (negative) for each."""
    kept, y = [], []
    for text in texts:
      own = rules._without_chain(text or "")
      pos = any(e in own for e in rules.POSITIVE_EMOTICONS)
      neg = any(e in own for e in rules.NEGATIVE_EMOTICONS)
      if pos != neg:
        kept.append(text)
        y.append(float(pos))
    return kept, np.asarray(y)

  @classmethod
  def fit(cls, texts: Sequence[str]) -> "EmoticonSentiment":
    """Learn from unlabelled texts (those with one kind of emoticon; both kinds must occur)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    kept, y = cls.distant_labels(texts)
    if len(set(y)) < 2:
      raise ValueError("EmoticonSentiment: the texts need both positive and negative emoticons")
    with threadpool_limits(1):
      model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, min_df=3, sublinear_tf=True,
                                            preprocessor=without_emoticons, max_features=200_000),
                            LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000))
      return cls(model.fit(kept, y))

  @classmethod
  def from_data(cls, data_dir: str) -> "EmoticonSentiment":
    """Learned from the comments of `data_dir`'s train file, the hand-labelled ones left out (cached)."""
    return _emoticon_sentiment(os.path.abspath(data_dir))

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return self.model.decision_function(list(texts))[:, None]


@functools.lru_cache(maxsize=None)
def _emoticon_sentiment(data_dir: str) -> EmoticonSentiment:
  from mfjax.data import load_events  # a heavy import, only where texts are read
  from mfjax.evaluation import hand_labels
  path = os.path.join(data_dir, "train.jsonl.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"EmoticonSentiment learns from {path}, which does not exist "
                            "(python tools/download_data.py --out <folder>)")
  labelled = hand_labels.all_keys()
  texts = [a.text for e in load_events(path) for a in e.actions if a.text and (e.eid, a.id) not in labelled]
  return EmoticonSentiment.fit(texts)


def _pipeline(seed: int, emoticons: EmoticonSentiment | None = None):
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegressionCV
  from sklearn.model_selection import StratifiedKFold
  from sklearn.pipeline import FeatureUnion, make_pipeline
  from sklearn.preprocessing import FunctionTransformer
  parts = [("chars", TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, min_df=2, sublinear_tf=True,
                                     preprocessor=own_text, lowercase=True)),
           ("rules", FunctionTransformer(rule_features))]
  if emoticons is not None:
    parts.append(("emoticons", FunctionTransformer(emoticons.score)))
  features = FeatureUnion(parts)
  model = LogisticRegressionCV(Cs=list(C_GRID), cv=StratifiedKFold(4, shuffle=True, random_state=seed),
                               scoring="balanced_accuracy", class_weight="balanced", max_iter=5000,
                               l1_ratios=(0.0,), use_legacy_attributes=False)
  return make_pipeline(features, model)


class TrainedLabeler:
  """Learned from hand labels; the `Labeler` interface (texts -> {dimension: [category]})."""

  def __init__(self, models: dict, version: str):
    self.models, self.version = models, version

  @classmethod
  def fit(cls, texts: Sequence[str], labels: dict, seed: int = 0, version: str = "trained",
          sample_weight=None, emoticons: EmoticonSentiment | None = None) -> "TrainedLabeler":
    """Fit on texts with their hand labels {dimension: [category]}; sample_weight [N]: each row's
    weight in the fit (on top of the class balance; None: every row alike, the default labeler);
    emoticons: the sentiment model's distant score (None: without it, e.g. with no CED data)."""
    with threadpool_limits(1):  # small sparse problems: BLAS threads beside XLA's made a fit 15x slower
      return cls._fit(list(texts), labels, seed, version, sample_weight, emoticons)

  @classmethod
  def _fit(cls, texts: list, labels: dict, seed: int, version: str, sample_weight=None,
           emoticons: EmoticonSentiment | None = None) -> "TrainedLabeler":
    comment = np.asarray([b == "comment" for b in labels["behaviour"]])
    models = {}
    for d in DIMENSIONS:
      rows = np.arange(len(texts)) if d == "behaviour" else np.flatnonzero(comment)
      y = np.asarray(labels[d])[rows]
      if len(set(y)) < 2:
        raise ValueError(f"TrainedLabeler: the hand labels of {d!r} hold one category only ({set(y)})")
      weights = ({} if sample_weight is None
                 else {"logisticregressioncv__sample_weight": np.asarray(sample_weight)[rows]})
      pipeline = _pipeline(seed, emoticons if d == "sentiment" else None)
      models[d] = pipeline.fit([texts[i] for i in rows], y, **weights)
    return cls(models, version)

  @classmethod
  def from_hand_labels(cls, data_dir: str) -> "TrainedLabeler":
    """Fit on every hand-labelled file (`mfjax.evaluation.hand_labels`), texts read from `data_dir`,
    with the `EmoticonSentiment` of `data_dir`'s train comments; kept on disk for later runs
    (`mfjax.evaluation.fit_cache`: the same files, code and libraries give the same fit)."""
    from mfjax.evaluation import fit_cache, hand_labels
    digest = inputs_digest(data_dir)
    if digest is None:  # a file is missing: hand_labels.load names it
      hand_labels.load(data_dir)
      raise FileNotFoundError(f"the trained labeler's files are not all there: {_inputs(data_dir)}")
    version = f"{VERSION}:{digest[:12]}"

    def fit():
      hand = hand_labels.load(data_dir)
      return cls.fit(hand.texts, hand.labels, version=version, emoticons=EmoticonSentiment.from_data(data_dir))

    key = f"{version} {digest} | {fit_cache.libraries()} | code {fitting_code_digest()}"
    labeler = fit_cache.cached("trained_labeler", key, fit)
    labeler.cache_key = key  # what its labels depend on (`mfjax.evaluation.label_store`)
    return labeler

  def label(self, texts: Sequence[str]) -> dict[str, list[str]]:
    with threadpool_limits(1):
      return self._label([t or "" for t in texts])

  def _label(self, texts: list) -> dict[str, list[str]]:
    if not texts:
      return {d: [] for d in DIMENSIONS}
    share = self.models["behaviour"].predict(texts) == "share"
    out = {d: np.asarray([SHARE_LABELS[d]] * len(texts), dtype=object) for d in DIMENSIONS}
    out["behaviour"] = np.where(share, "share", "comment").astype(object)
    comments = np.flatnonzero(~share)
    if comments.size:
      for d in COMMENT_DIMENSIONS:
        out[d][comments] = self.models[d].predict([texts[i] for i in comments])
    return collate([{d: str(out[d][i]) for d in DIMENSIONS} for i in range(len(texts))])


def _inputs(data_dir: str) -> list[str]:
  """The files the trained labeler reads: the hand labels, and the files of their texts and of the emoticon
  model's comments."""
  from mfjax.evaluation import hand_labels
  return ([os.path.join(hand_labels.LABELS_DIR, name) for name in (hand_labels.STRATIFIED, hand_labels.UNIFORM_VAL)]
          + [os.path.join(data_dir, f"{split}.jsonl.gz") for split in ("train", "val")])


def inputs_digest(data_dir: str) -> str | None:
  """The sha256 of the files the trained labeler reads (`from_hand_labels`; its version holds the first 12
  digits), or None if one is missing."""
  from mfjax.evaluation import fit_cache
  paths = _inputs(data_dir)
  return fit_cache.files_digest(paths) if all(os.path.exists(p) for p in paths) else None


def fitting_code_digest() -> str:
  """A digest of the code a fit runs: this module, the rule labeler's features and the hand labels' reader."""
  from mfjax.evaluation import fit_cache, hand_labels
  return fit_cache.code_digest(__file__, rules.__file__, hand_labels.__file__)
