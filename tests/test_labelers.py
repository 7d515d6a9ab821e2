"""RuleLabeler on hand-written Weibo-style cases (each rule, and what it must not fire on)."""

import pytest

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import RuleLabeler, category_ids

CASES = [
    # text, behaviour, belief, sentiment, intent
    ("", "share", "believe", "neutral", "promotion"),
    ("转发微博", "share", "believe", "neutral", "promotion"),
    ("转发微博。//@某人:真的吗？", "share", "believe", "neutral", "promotion"),  # quoted chain is not the author's
    ("//@张三: 太可怕了", "share", "believe", "neutral", "promotion"),
    ("@李四", "share", "believe", "neutral", "promotion"),
    ("这是谣言吧[怒]", "comment", "doubt", "negative", "opinion"),
    ("真的吗？求真相", "comment", "doubt", "neutral", "question"),
    ("是不是PS的？", "comment", "doubt", "neutral", "question"),
    ("太好了[哈哈]支持！", "comment", "believe", "positive", "opinion"),
    ("心疼[泪][泪]", "comment", "believe", "negative", "opinion"),
    ("扩散！大家注意", "comment", "believe", "neutral", "promotion"),
    ("@王五 你看看", "comment", "believe", "neutral", "promotion"),
    ("这是哪里发生的？", "comment", "believe", "neutral", "question"),
    ("回复@赵六:辟谣了", "comment", "doubt", "neutral", "opinion"),
    ("有点感人什么的呀", "comment", "believe", "positive", "opinion"),
]


@pytest.mark.parametrize("text,behaviour,belief,sentiment,intent", CASES)
def test_rules(text, behaviour, belief, sentiment, intent):
  assert RuleLabeler().label_one(text) == {"behaviour": behaviour, "belief": belief, "sentiment": sentiment,
                                           "intent": intent}


def test_batch_interface_and_category_ids():
  texts = [c[0] for c in CASES]
  out = RuleLabeler().label(texts)
  assert set(out) == set(DIMENSIONS) and all(len(v) == len(texts) for v in out.values())
  ids = category_ids(out)
  assert ids["sentiment"][5] == 0 and ids["sentiment"][8] == 2  # negative < neutral < positive
  with pytest.raises(ValueError, match="unknown categories \\['maybe'\\]"):
    category_ids({"belief": ["maybe"]})


def test_hand_labelled_ced_val_comments_are_scored(ced_dir):
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
  import labeler_quality
  rows = labeler_quality.read_hand_labels()
  assert len(rows) == 150 and len({(r["eid"], r["mid"]) for r in rows}) == 150
  for r in rows:
    assert all(r[d] in cats for d, cats in DIMENSIONS.items())
  out = labeler_quality.evaluate(os.path.join(ced_dir, "val.jsonl.gz"))  # every (eid, mid) is found in val
  assert out["n"] == 150 and all(0.0 <= out[d]["accuracy"] <= 1.0 for d in DIMENSIONS)


def test_labeler_quality_on_a_missing_or_malformed_file_names_it(tmp_path, capsys):
  import gzip
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
  import labeler_quality
  with pytest.raises(SystemExit, match="no such event file or folder: .*nope.jsonl.gz"):
    labeler_quality.main(["--data", str(tmp_path / "nope.jsonl.gz")])
  with gzip.open(tmp_path / "val.jsonl.gz", "wt") as f:
    f.write("{oops\n")
  with pytest.raises(SystemExit, match="val.jsonl.gz:1: invalid JSON"):
    labeler_quality.main(["--data", str(tmp_path / "val.jsonl.gz")])
