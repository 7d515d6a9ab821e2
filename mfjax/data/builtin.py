"""A small built-in corpus of Weibo-style reactions, for demos that must run
with no data on disk (the README's main command on a fresh machine).

Each topic has a known probability that a comment expresses doubt; comments
are composed from stance, sentiment and intent phrases, so that what a model
learns can be checked against the generating rates (see `doubt_rate`).
Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np

# (topic text, probability that a reaction doubts it)
TOPICS = (
    ("网传某市明天起全面停水三天，请大家提前储水", 0.7),
    ("专家称每天喝八杯水可以预防所有感冒", 0.8),
    ("某地发生4.5级地震，暂无人员伤亡报告", 0.15),
    ("国家队今晚三比零获胜，晋级决赛", 0.05),
    ("网传吃香蕉会导致失眠，转给家人看看", 0.75),
    ("新地铁线路将于下月开通运营", 0.2),
)

DOUBT = ("真的吗？", "求真相", "是谣言吧", "别信谣言", "是不是PS的？", "辟谣了没有", "谁能证实一下")
BELIEVE = ("太好了", "支持", "终于等到了", "心疼", "大家注意", "收到", "转发提醒")
POSITIVE = ("[哈哈]", "[赞]", "[鼓掌]")
NEGATIVE = ("[怒]", "[泪]", "[衰]")
QUESTION = ("有人知道吗", "官方怎么说", "哪里看到的")
PROMOTE = ("快转给家人", "扩散", "大家都看看")
SHARE = ("转发微博", "//转发", "转")

DOUBT_MARKERS = ("真的吗", "求真相", "谣言", "是不是PS", "辟谣", "证实")


def is_doubt(text: str) -> bool:
  """True if the text carries one of the doubt markers used by the corpus."""
  return any(m in text for m in DOUBT_MARKERS)


def comment(rng: np.random.Generator, doubt_p: float) -> str:
  """One reaction to a topic whose doubt probability is `doubt_p`."""
  if rng.random() < 0.15:
    return SHARE[rng.integers(len(SHARE))]
  doubt = rng.random() < doubt_p
  words = [(DOUBT if doubt else BELIEVE)[rng.integers(7)]]
  if rng.random() < 0.3:
    words.append((QUESTION if doubt else PROMOTE)[rng.integers(3)])
  emoticon = (NEGATIVE if doubt else POSITIVE)[rng.integers(3)] if rng.random() < 0.6 else ""
  return "，".join(words) + emoticon


def corpus(n_per_topic: int = 400, seed: int = 0) -> list[tuple[int, str]]:
  """[(topic index, comment)], `n_per_topic` reactions for each topic."""
  rng = np.random.default_rng(seed)
  return [(t, comment(rng, p)) for t, (_, p) in enumerate(TOPICS) for _ in range(n_per_topic)]


def doubt_rate(texts: list[str]) -> float:
  """Fraction of texts that carry a doubt marker (nan for none)."""
  return float(np.mean([is_doubt(t) for t in texts])) if texts else float("nan")
