"""tools/probe_text.py: the length bands, the rates within them and the labeler's entropy (a whole run
is probed in test_pipeline's CED smoke test)."""

import math
import os
import sys

import numpy as np
import pytest

from mfjax.categories import DIMENSIONS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import probe_text  # noqa: E402


class _Fixed:
  """predict_proba: the same distribution for every text."""

  def __init__(self, p):
    self.p = np.asarray(p, np.float64)

  def predict_proba(self, texts):
    return np.tile(self.p, (len(texts), 1))


def _ids(rows):
  """{dimension: [N]} from (behaviour, belief, sentiment, intent) names per action."""
  return {d: np.array([DIMENSIONS[d].index(r[j]) for r in rows]) for j, d in enumerate(DIMENSIONS)}


def test_the_profile_counts_comments_by_length_band_and_their_categories_within_each():
  share = ("share", "believe", "neutral", "promotion")
  texts = ["", "好", "真的吗？", "一二三四五六七", "一二三四五六七八九十一二三", "x" * 30, "y" * 40]
  rows = [share, ("comment", "believe", "negative", "opinion"), ("comment", "doubt", "neutral", "question"),
          ("comment", "believe", "negative", "opinion"), ("comment", "believe", "positive", "promotion"),
          ("comment", "believe", "negative", "opinion"), ("comment", "doubt", "neutral", "opinion")]
  models = {"belief": _Fixed([0.5, 0.5]), "sentiment": _Fixed([1.0, 0.0, 0.0]), "intent": _Fixed([0.25, 0.25, 0.5])}
  labeler = type("L", (), {"models": models})()
  out = probe_text.profile(texts, _ids(rows), labeler)
  assert out["actions"] == 7 and out["comments"] == 6 and out["share"] == pytest.approx(1 / 7)
  assert out["length_median"] == np.median([1, 4, 7, 13, 30, 40])
  b = out["bands"]
  assert list(b) == ["1-5", "6-11", "12-23", "24+"]
  assert [b[k]["n"] for k in b] == [2, 1, 1, 2]
  assert b["1-5"]["of_comments"] == pytest.approx(2 / 6)
  assert b["1-5"]["negative"] == 0.5 and b["1-5"]["doubt"] == 0.5 and b["1-5"]["question"] == 0.5
  assert b["12-23"]["positive"] == 1.0 and b["12-23"]["promotion"] == 1.0
  assert b["24+"]["negative"] == 0.5 and b["24+"]["doubt"] == 0.5 and b["24+"]["neutral"] == 0.5
  assert out["entropy"]["belief"] == pytest.approx(math.log(2))
  assert out["entropy"]["sentiment"] == pytest.approx(0.0, abs=1e-12)
  assert out["entropy"]["intent"] == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))
  assert "entropy" not in probe_text.profile(texts, _ids(rows), None)  # a labeler without probabilities
  empty = probe_text.profile(texts[:1], _ids(rows[:1]), labeler)  # shares only: no comment to profile
  assert empty["comments"] == 0 and math.isnan(empty["bands"]["1-5"]["negative"]) and "entropy" not in empty
