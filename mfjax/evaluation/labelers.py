"""Labelers: action text -> one category per dimension.

The dimensions and their categories are `mfjax.categories.DIMENSIONS`; a plain
share is read as `mfjax.categories.SHARE_LABELS` (believe / neutral / promotion).

`RuleLabeler` is offline and deterministic (lexicons of Weibo emoticons and
Chinese markers); see `OpenAICompatLabeler` in `mfjax.evaluation.llm_labeler`
for the paper's LLM labelling.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

from mfjax.categories import DIMENSIONS, SHARE_LABELS


class Labeler(Protocol):
  """texts -> {dimension: [category, ...]} (one category per text per dimension)."""

  def label(self, texts: Sequence[str]) -> dict[str, list[str]]:
    ...


# Weibo reposts quote the chain they came through: "text//@user: earlier text".
_CHAIN = re.compile(r"//\s*@.*$", re.S)
_MENTION = re.compile(r"@[\w\-\u4e00-\u9fff]+[:：]?")
_REPLY = re.compile(r"^回复@[^:：]*[:：]")
_EMOTICON = re.compile(r"\[[^\[\]]{1,8}\]")
_SHARE_PHRASES = ("转发微博", "轉發微博", "转发", "轉發", "repost", "转", "分享图片", "分享")
_PUNCT = re.compile(r"[\s\.,!?。，！？、~…·:：;；\"'“”‘’()（）【】《》\-—_]+")

DOUBT_MARKERS = ("谣言", "辟谣", "谣传", "造谣", "真的吗", "真的么", "真的假的", "是真的吗", "是真是假", "求真相",
                 "求证", "是不是PS", "是不是ps", "P的吧", "p的吧", "假的", "假新闻", "不实", "不信", "骗人", "忽悠",
                 "靠谱吗", "可信吗", "不靠谱", "有待证实", "谁能证实", "证实一下", "别信", "炒作")
POSITIVE_EMOTICONS = ("[哈哈]", "[嘻嘻]", "[赞]", "[good]", "[鼓掌]", "[爱你]", "[心]", "[可爱]", "[太开心]", "[偷笑]",
                      "[给力]", "[威武]", "[耶]", "[笑哈哈]", "[酷]", "[花心]", "[亲亲]", "[微笑]", "[ok]", "[强]",
                      "[礼物]", "[蛋糕]", "[音乐]", "[太阳]", "[愛你]", "[兔子]", "[doge]", "[笑cry]")
NEGATIVE_EMOTICONS = ("[怒]", "[泪]", "[悲伤]", "[衰]", "[抓狂]", "[汗]", "[晕]", "[鄙视]", "[怒骂]", "[生病]", "[失望]",
                      "[伤心]", "[吐]", "[哼]", "[委屈]", "[可怜]", "[蜡烛]", "[弱]", "[囧]", "[打脸]", "[闭嘴]",
                      "[崩溃]", "[困]", "[淚]", "[哭]", "[拜拜]", "[黑线]", "[左哼哼]", "[右哼哼]", "[吃惊]", "[挖鼻屎]")
POSITIVE_WORDS = ("支持", "加油", "感动", "开心", "漂亮", "厉害", "祝福", "喜欢", "期待", "致敬", "威武", "太好了",
                  "好棒", "真棒", "赞一个", "点赞", "佩服", "欣慰", "温暖", "好样的", "干得漂亮", "给力", "幸福", "感谢",
                  "谢谢", "可爱", "恭喜", "好消息", "美好", "好看", "精彩", "哈哈", "帅", "有才", "感人")
NEGATIVE_WORDS = ("恶心", "可怕", "悲哀", "愤怒", "垃圾", "无耻", "可恶", "心疼", "难过", "可怜", "混蛋", "畜生", "妈的",
                  "尼玛", "太惨", "气愤", "悲剧", "坑爹", "傻逼", "该死", "痛心", "伤心", "讨厌", "担心", "害怕", "吓人",
                  "无语", "唉", "哎", "悲催", "心寒", "可耻", "败类", "人渣", "滚", "去死", "遗憾", "惨", "哀悼", "默哀",
                  "RIP", "卑鄙", "黑心", "丧心病狂", "没人性", "作孽")
QUESTION_MARKERS = ("?", "？", "吗", "谁知道", "有人知道", "为什么", "为啥", "怎么回事", "什么情况", "是不是",
                    "有没有", "哪里", "哪儿", "咋回事", "几时", "多少")
# A broad net for texts that may doubt or ask (rumour, fake, true?, source, a question mark...): not a labeler. The
# stratified draw of experiments/labels/ced_hand.tsv is defined by it (tools/draw_label_sample.py): changing it
# changes what that file's strata mean.
CUES = re.compile(r"谣|假|真的|真相|真是假|真实|求证|证实|不信|信吗|谁信|骗|靠谱|可信|[Pp][Ss]|P的|炒作|忽悠|来源|出处|"
                  r"确定|可能吗|不可能|不会吧|胡说|瞎说|扯淡|编的|[?？]")
PROMOTION_MARKERS = ("转发", "扩散", "转起", "帮转", "求转", "快转", "转给", "转走", "大家", "周知", "提醒", "注意",
                     "看看", "速转", "互相转告", "告诉", "分享")



def _without_chain(text: str) -> str:
  """The author's part of a repost: no quoted //@chain, no 回复@x: prefix."""
  return _REPLY.sub("", _CHAIN.sub("", text))


def strip_forwarding(text: str) -> str:
  """The author's own words: without the quoted repost chain, reply prefix,
  @mentions and emoticons."""
  return _EMOTICON.sub("", _MENTION.sub("", _without_chain(text))).strip()


def is_share(text: str) -> bool:
  """Empty, or only forwarding boilerplate / punctuation once the chain is removed."""
  own = _PUNCT.sub("", _MENTION.sub("", _without_chain(text)))
  for phrase in _SHARE_PHRASES:
    own = own.replace(phrase, "")
  return not own


def collate(per_text: Sequence[dict[str, str]]) -> dict[str, list[str]]:
  """[{dimension: category}] per text -> {dimension: [category per text]}."""
  return {d: [labels[d] for labels in per_text] for d in DIMENSIONS}


class RuleLabeler:
  """Deterministic lexicon rules for Chinese Weibo text (no model, no network)."""

  version = "rules-1"

  def label_one(self, text: str) -> dict[str, str]:
    own_full = _without_chain(text or "")  # the author's words, emoticons kept
    if is_share(text or ""):
      return dict(SHARE_LABELS)
    words = strip_forwarding(own_full)
    doubt = any(m in own_full for m in DOUBT_MARKERS)
    score = (sum(own_full.count(e) for e in POSITIVE_EMOTICONS) - sum(own_full.count(e) for e in NEGATIVE_EMOTICONS)
             + sum(words.count(w) for w in POSITIVE_WORDS) - sum(words.count(w) for w in NEGATIVE_WORDS))
    sentiment = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    if any(m in words for m in QUESTION_MARKERS):
      intent = "question"
    elif any(m in words for m in PROMOTION_MARKERS) or _MENTION.search(own_full):
      intent = "promotion"
    else:
      intent = "opinion"
    return {"behaviour": "comment", "belief": "doubt" if doubt else "believe", "sentiment": sentiment,
            "intent": intent}

  def label(self, texts: Sequence[str]) -> dict[str, list[str]]:
    return collate([self.label_one(t) for t in texts])


def category_ids(labels: dict[str, list[str]]) -> dict[str, list[int]]:
  """Category names -> indices into DIMENSIONS[dimension] (errors name the bad value)."""
  out = {}
  for d, cats in labels.items():
    if d not in DIMENSIONS:
      raise ValueError(f"unknown dimension {d!r}; known: {list(DIMENSIONS)}")
    index = {c: i for i, c in enumerate(DIMENSIONS[d])}
    bad = sorted({c for c in cats if c not in index})
    if bad:
      raise ValueError(f"dimension {d!r}: unknown categories {bad}; known: {DIMENSIONS[d]}")
    out[d] = [index[c] for c in cats]
  return out
