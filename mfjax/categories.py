"""The category vocabulary: what an action is labelled with, one category per dimension.

Dimensions and their categories (ordinal ones in order, low to high):

- behaviour: share, comment (an empty text or a bare forwarding phrase is a share)
- belief: believe, doubt
- sentiment: negative, neutral, positive (ordinal)
- intent: question, promotion, opinion

A plain share counts as believe / neutral / promotion: it spreads the post
without a word against it.

A leaf module (it imports nothing from mfjax): the synthetic world (`mfjax.data`)
and the labelers and metrics (`mfjax.evaluation`) both speak it.
"""

import numpy as np

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "behaviour": ("share", "comment"),
    "belief": ("believe", "doubt"),
    "sentiment": ("negative", "neutral", "positive"),
    "intent": ("question", "promotion", "opinion"),
}
ORDINAL = ("sentiment",)

# How labelers read a plain share: it spreads the post without a word against it.
SHARE_LABELS = {"behaviour": "share", "belief": "believe", "sentiment": "neutral", "intent": "promotion"}

# The joint categories a labeler gives an action: a share (read as SHARE_LABELS), then every comment's
# (belief, sentiment, intent). An attribute-conditioned policy draws one of these per agent and writes
# the action given it (`mfjax.meanfield.encoder.MeanFieldEncoder.class_logits`, `mfjax.rollout`).
CLASSES: tuple[dict, ...] = (dict(SHARE_LABELS),) + tuple(
    {"behaviour": "comment", "belief": b, "sentiment": s, "intent": i}
    for b in DIMENSIONS["belief"] for s in DIMENSIONS["sentiment"] for i in DIMENSIONS["intent"])


def class_of(ids: dict):
  """The joint class (index into CLASSES) of labelled actions, from their category indices
  ({dimension: int array}, indices into DIMENSIONS[dimension]): every share is class 0, whatever
  its other dimensions say; a comment is 1 + its (belief, sentiment, intent) in row-major order."""
  b, s, i = (np.asarray(ids[d]) for d in ("belief", "sentiment", "intent"))
  comment = 1 + (b * len(DIMENSIONS["sentiment"]) + s) * len(DIMENSIONS["intent"]) + i
  return np.where(np.asarray(ids["behaviour"]) == 0, 0, comment).astype(np.int32)


def class_dimensions() -> dict:
  """{dimension: [len(CLASSES)] index of each class's category in DIMENSIONS[dimension]}."""
  return {d: [cats.index(c[d]) for c in CLASSES] for d, cats in DIMENSIONS.items()}
