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

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "behaviour": ("share", "comment"),
    "belief": ("believe", "doubt"),
    "sentiment": ("negative", "neutral", "positive"),
    "intent": ("question", "promotion", "opinion"),
}
ORDINAL = ("sentiment",)

# How labelers read a plain share: it spreads the post without a word against it.
SHARE_LABELS = {"behaviour": "share", "belief": "believe", "sentiment": "neutral", "intent": "promotion"}
