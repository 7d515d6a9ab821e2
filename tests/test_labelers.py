"""RuleLabeler on hand-written Weibo-style cases (each rule, and what it must not fire on)."""

import os

import numpy as np
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


def _tools(name):
  import importlib
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
  return importlib.import_module(name)


def test_hand_labels_are_the_recorded_draw_and_their_texts_are_found(ced_dir, capsys):
  """The stratified file holds exactly the draw tools/draw_label_sample.py makes (same seed, strata,
  pool sizes), every labelled (eid, mid) is found in train/val with its text, a row weighs its stratum's
  pool over its draw, and the blind second labellings agree as the docs say they can be compared."""
  import os
  import numpy as np
  from mfjax.evaluation import hand_labels
  _tools("draw_label_sample").main(["--data", ced_dir, "--check", os.path.join(hand_labels.LABELS_DIR,
                                                                                 hand_labels.STRATIFIED)])
  assert "the draw and its pool sizes match" in capsys.readouterr().out
  hand = hand_labels.load(ced_dir)
  assert len(hand.texts) == 1320 + 150 and all(isinstance(t, str) and t for t in hand.texts)
  assert sum(b == "doubt" for b in hand.labels["belief"][:1320]) >= 100  # the floor for the rare class
  cue = [w for w, g in zip(hand.weights, hand.group) if g.endswith(":cue")]
  assert len(cue) == 620 and np.allclose(cue, 87503 / 620)
  for i, b in enumerate(hand.labels["behaviour"]):  # a share reads as SHARE_LABELS, as the guide says
    if b == "share":
      assert (hand.labels["belief"][i], hand.labels["sentiment"][i], hand.labels["intent"][i]) == (
          "believe", "neutral", "promotion")
  agreement = _tools("labeler_quality").agreement()
  assert agreement["ced_hand"]["rows"] == 100 and agreement["ced_val_hand"]["rows"] == 150
  assert all(-1 <= agreement[f][d]["kappa"] <= 1 for f in agreement for d in DIMENSIONS)


def test_a_malformed_labels_file_names_file_and_line(tmp_path):
  from mfjax.evaluation import hand_labels
  path = tmp_path / "x.tsv"
  path.write_text("# c\neid\tmid\tbehaviour\tbelief\tsentiment\tintent\ne1\tm1\tcomment\tbelieve\tangry\topinion\n")
  with pytest.raises(ValueError, match="x.tsv line 3: sentiment 'angry' is not one of"):
    hand_labels.read_tsv(str(path))
  path.write_text("eid\tmid\tbehaviour\n")
  with pytest.raises(ValueError, match=r"x.tsv line 1: missing columns \['belief'"):
    hand_labels.read_tsv(str(path))
  path.write_text("eid\tmid\tbehaviour\tbelief\tsentiment\tintent\ne1\t\tcomment\tbelieve\tneutral\topinion\n")
  with pytest.raises(ValueError, match=r"x.tsv line 2: no value for \['mid'\]"):  # a missing id
    hand_labels.read_tsv(str(path))
  path.write_text("eid\tmid\tbehaviour\tbelief\tsentiment\tintent\ne1\tm1\tcomment\n")
  with pytest.raises(ValueError, match="x.tsv line 2: expected 6 tab-separated values"):
    hand_labels.read_tsv(str(path))
  with pytest.raises(ValueError, match="no '# pool: stratum=N"):
    hand_labels.pool_sizes(["# other"], str(path))


# A tiny hand-labelled corpus in the guide's conventions: the trained labeler must learn it
TRAIN = [("转发微博", "share", "believe", "neutral", "promotion"), ("", "share", "believe", "neutral", "promotion"),
         ("真的假的？", "comment", "doubt", "neutral", "question"), ("谣言吧[怒]", "comment", "doubt", "negative", "opinion"),
         ("太好了[哈哈]", "comment", "believe", "positive", "opinion"), ("心疼[泪]", "comment", "believe", "negative", "opinion"),
         ("扩散！", "comment", "believe", "neutral", "promotion"), ("@王五 看看", "comment", "believe", "neutral", "promotion"),
         ("在哪里？", "comment", "believe", "neutral", "question"), ("支持加油", "comment", "believe", "positive", "opinion")]


def test_trained_labeler_learns_hand_labels_and_keeps_the_share_convention():
  from mfjax.evaluation.trained_labeler import TrainedLabeler
  texts = [t for t, *_ in TRAIN] * 8
  labels = {d: [row[1 + i] for row in TRAIN] * 8 for i, d in enumerate(DIMENSIONS)}
  model = TrainedLabeler.fit(texts, labels)
  got = model.label([t for t, *_ in TRAIN])
  for i, (text, *want) in enumerate(TRAIN):
    assert [got[d][i] for d in DIMENSIONS] == want, text
  assert model.label([]) == {d: [] for d in DIMENSIONS}
  one = {**labels, "belief": ["believe"] * len(texts)}
  with pytest.raises(ValueError, match="'belief' hold one category only"):
    TrainedLabeler.fit(texts, one)


def test_the_trained_labeler_needs_the_ced_data():
  from mfjax.evaluation.report import make_labeler
  with pytest.raises(ValueError, match="'trained' learns from the CED hand labels .* data.source=ced"):
    make_labeler("trained")
  with pytest.raises(ValueError, match="eval.labeler 'gpt' is not known offline"):
    make_labeler("gpt")


def test_labeler_quality_on_a_missing_data_folder_names_it(tmp_path):
  with pytest.raises(SystemExit, match="nope/train.jsonl.gz, which does not exist"):
    _tools("labeler_quality").main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out").exists()


def test_trained_labeler_fits_deterministically():
  import numpy as np
  from mfjax.evaluation.trained_labeler import TrainedLabeler
  texts = [t for t, *_ in TRAIN] * 8
  labels = {d: [row[1 + i] for row in TRAIN] * 8 for i, d in enumerate(DIMENSIONS)}
  a, b = TrainedLabeler.fit(texts, labels), TrainedLabeler.fit(texts, labels)
  for d in DIMENSIONS:
    np.testing.assert_array_equal(a.models[d].steps[-1][1].coef_, b.models[d].steps[-1][1].coef_)
  probe = ["真的吗", "哈哈好", "[泪]", "转发"]
  assert a.label(probe) == b.label(probe)


def test_cross_validation_never_scores_a_comment_it_trained_on(monkeypatch):
  import numpy as np
  from mfjax.evaluation import quality
  from mfjax.evaluation.hand_labels import HandLabels
  from mfjax.evaluation.trained_labeler import TrainedLabeler
  n = 40
  texts = [f"{TRAIN[i % len(TRAIN)][0]}#{i}" for i in range(n)]  # every text distinct
  labels = {d: [TRAIN[i % len(TRAIN)][1 + j] for i in range(n)] for j, d in enumerate(DIMENSIONS)}
  hand = HandLabels(texts, labels, np.ones(n), ["x"] * n, [("e", str(i)) for i in range(n)])
  extra = HandLabels(["额外的"] * 2, {d: [TRAIN[2][1 + j], TRAIN[3][1 + j]] for j, d in enumerate(DIMENSIONS)},
                     np.ones(2), ["y"] * 2, [("e", "x1"), ("e", "x2")])
  seen = []

  class Spy:
    def __init__(self, fit_on):
      self.fit_on = set(fit_on)

    def label(self, batch):
      seen.append((self.fit_on, list(batch)))
      return {d: [TRAIN[0][1 + j]] * len(batch) for j, d in enumerate(DIMENSIONS)}

  monkeypatch.setattr(TrainedLabeler, "fit", classmethod(lambda cls, t, y, seed=0, **kw: Spy(t)))
  pred = quality.cross_validated(hand, extra, "trained", folds=4)
  assert len(seen) == 4 and all(len(v) == n for v in pred.values())
  scored = [t for _, batch in seen for t in batch]
  assert sorted(scored) == sorted(texts)  # every row scored once
  for fit_on, batch in seen:
    assert not fit_on & set(batch) and "额外的" in fit_on  # never on what it trained on; the extra rows always fit


def test_the_natural_weighted_fit_weighs_each_row_as_its_stratum_and_the_weights_reach_the_model(monkeypatch):
  import numpy as np
  from mfjax.evaluation import quality
  from mfjax.evaluation.hand_labels import HandLabels
  from mfjax.evaluation.trained_labeler import TrainedLabeler
  n = 40
  texts = [f"{TRAIN[i % len(TRAIN)][0]}#{i}" for i in range(n)]
  labels = {d: [TRAIN[i % len(TRAIN)][1 + j] for i in range(n)] for j, d in enumerate(DIMENSIONS)}
  weights = np.where(np.arange(n) % 2 == 0, 6.0, 1.0)  # two strata, one drawn 6x less often than its pool
  hand = HandLabels(texts, labels, weights, ["x"] * n, [("e", str(i)) for i in range(n)])
  extra = HandLabels(["额外的"] * 2, {d: [TRAIN[2][1 + j], TRAIN[3][1 + j]] for j, d in enumerate(DIMENSIONS)},
                     np.ones(2), ["y"] * 2, [("e", "x1"), ("e", "x2")])
  fits = []

  def spy(cls, t, y, seed=0, sample_weight=None, emoticons=None):
    fits.append((list(t), sample_weight))
    return TrainedLabeler._fit(list(t), y, seed, "spy", sample_weight, emoticons)
  monkeypatch.setattr(TrainedLabeler, "fit", classmethod(spy))
  quality.cross_validated(hand, extra, "trained_natural", folds=4)
  assert len(fits) == 4
  by_text = dict(zip(texts, weights / weights.mean()))
  for t, w in fits:
    np.testing.assert_allclose(w, [by_text.get(x, 1.0) for x in t])  # extra rows: 1 each
  # the weights reach the fitted model
  a = TrainedLabeler.fit(texts, labels, sample_weight=weights)
  b = TrainedLabeler.fit(texts, labels)
  assert not np.array_equal(a.models["belief"].steps[-1][1].coef_, b.models["belief"].steps[-1][1].coef_)


def test_the_emoticon_sentiment_model_learns_words_from_emoticons_and_feeds_the_sentiment_model_only():
  import numpy as np
  from mfjax.evaluation.trained_labeler import EmoticonSentiment, TrainedLabeler
  corpus = (["好开心啊[哈哈]", "真棒[赞]", "开心死了[爱你]", "棒棒哒[鼓掌]"] * 5
            + ["气死了[怒]", "太惨了[泪]", "气人[抓狂]", "惨不忍睹[衰]"] * 5
            + ["[哈哈][怒]混着的不算", "没有表情的不算", "转发微博//@某人:开心[哈哈]"])  # neither: left out
  kept, y = EmoticonSentiment.distant_labels(corpus)
  assert len(kept) == 40 and y.sum() == 20
  model = EmoticonSentiment.fit(corpus)
  pos, neg, bare_pos, bare_neg = model.score(["开心", "气死", "开心[怒]", "气死[哈哈]"])[:, 0]
  assert pos > 0 > neg
  assert (bare_pos, bare_neg) == (pos, neg)  # it reads the words, not the emoticons (the labeler reads those)
  with pytest.raises(ValueError, match="both positive and negative"):
    EmoticonSentiment.fit(corpus[:20])
  texts = [t for t, *_ in TRAIN] * 8
  labels = {d: [row[1 + i] for row in TRAIN] * 8 for i, d in enumerate(DIMENSIONS)}
  labeler = TrainedLabeler.fit(texts, labels, emoticons=model)
  for d in DIMENSIONS:
    names = [n for n, _ in labeler.models[d].steps[0][1].transformer_list]
    assert ("emoticons" in names) == (d == "sentiment"), d
  plain = TrainedLabeler.fit(texts, labels)
  width = {d: m.steps[-1][1].coef_.shape[1] for d, m in plain.models.items()}
  assert labeler.models["sentiment"].steps[-1][1].coef_.shape[1] == width["sentiment"] + 1
  np.testing.assert_array_equal(labeler.models["belief"].steps[-1][1].coef_, plain.models["belief"].steps[-1][1].coef_)


def test_the_fit_cache_keeps_what_it_made_under_its_key_and_makes_it_again_otherwise(tmp_path, monkeypatch):
  from mfjax.evaluation import fit_cache
  monkeypatch.setenv(fit_cache.LABELER_CACHE_ENV, str(tmp_path / "cache"))
  made = []
  make = lambda value: lambda: made.append(value) or {"value": value}
  assert fit_cache.cached("model", "key a", make(1)) == {"value": 1}
  assert fit_cache.cached("model", "key a", make(2)) == {"value": 1} and made == [1]  # read back, not made
  assert fit_cache.cached("model", "key b", make(3)) == {"value": 3} and made == [1, 3]  # another key
  assert fit_cache.cached("other", "key a", make(4)) == {"value": 4}  # another kind
  path = fit_cache.path_of("model", "key a")
  with open(path, "wb") as f:  # a truncated entry is made again and replaced
    f.write(b"\x80\x05trunc")
  assert fit_cache.cached("model", "key a", make(5)) == {"value": 5}
  assert fit_cache.cached("model", "key a", make(6)) == {"value": 5}
  assert sorted(os.listdir(tmp_path / "cache")) == sorted(
      os.path.basename(fit_cache.path_of(k, key)) for k, key in (("model", "key a"), ("model", "key b"),
                                                                  ("other", "key a")))  # no temporary left
  monkeypatch.setenv(fit_cache.LABELER_CACHE_ENV, "off")  # off: made every time, nothing written
  assert fit_cache.path_of("model", "key a") is None
  assert fit_cache.cached("model", "key a", make(7)) == {"value": 7} and made[-1] == 7
  blocked = tmp_path / "file"
  blocked.write_text("")  # a folder that cannot be made: a warning, and the value
  monkeypatch.setenv(fit_cache.LABELER_CACHE_ENV, str(blocked / "cache"))
  with pytest.warns(UserWarning, match="the labeler cache could not keep"):
    assert fit_cache.cached("model", "key a", make(8)) == {"value": 8}


class _Counting:
  """A labeler that counts the texts it labels (the rule labeler's labels), under a key of its own."""

  def __init__(self, key):
    self.cache_key, self.seen, self.rules = key, [], RuleLabeler()

  def label(self, texts):
    self.seen.extend(texts)
    return self.rules.label(texts)


def test_real_texts_labels_are_kept_on_disk_per_labeler_and_sampled_texts_are_not(tmp_path, monkeypatch):
  from mfjax.evaluation import fit_cache, label_store
  from mfjax.evaluation.report import CachedLabeler
  monkeypatch.setenv(fit_cache.LABELER_CACHE_ENV, str(tmp_path / "cache"))
  real = ["转发微博", "假的吧？", "太感人了[心]", "", "//@某人: 求真相", "假的吧？"]
  want = CachedLabeler(RuleLabeler()).ids(real)
  first = _Counting("key a")
  got = CachedLabeler(first).ids(real, keep=True)
  assert sorted(first.seen) == sorted(set(real)) and all((got[d] == want[d]).all() for d in want)
  again = _Counting("key a")  # a later run: read from disk, nothing labelled
  cached = CachedLabeler(again)
  got = cached.ids(real[::-1] + ["新的一条"], keep=True)
  assert again.seen == ["新的一条"]
  assert all((got[d][:len(real)] == want[d][::-1]).all() for d in want)
  cached.ids(["采样的动作"])  # not kept: a sampled text
  other = _Counting("key a")
  CachedLabeler(other).ids(real + ["新的一条", "采样的动作"], keep=True)
  assert other.seen == ["采样的动作"]
  another = _Counting("key b")  # another labeler: its own store
  CachedLabeler(another).ids(real, keep=True)
  assert sorted(another.seen) == sorted(set(real))
  path = fit_cache.path_of(label_store.KIND, label_store.labeler_key(first))
  with open(path, "wb") as f:  # a truncated store is labelled again and replaced
    f.write(b"\x80\x05trunc")
  broken = _Counting("key a")
  CachedLabeler(broken).ids(real, keep=True)
  assert sorted(broken.seen) == sorted(set(real))
  assert set(label_store.LabelStore(label_store.labeler_key(first)).get(real)) == set(real)
  assert label_store.labeler_key(object()) is None  # a labeler that names nothing of its labels: no store
  assert label_store.labeler_key(RuleLabeler()).startswith(RuleLabeler.version)
  monkeypatch.setenv(fit_cache.LABELER_CACHE_ENV, "off")
  off = _Counting("key a")
  CachedLabeler(off).ids(real, keep=True)
  assert sorted(off.seen) == sorted(set(real))


def test_the_trained_labeler_is_fitted_once_and_read_back_while_its_files_and_code_are_the_same(ced_dir, monkeypatch):
  # (the test run's own cache: the first test of the run that needs the labeler fits it)
  from mfjax.evaluation import fit_cache, hand_labels, quality, trained_labeler
  from mfjax.evaluation.trained_labeler import TrainedLabeler
  first, a = TrainedLabeler.from_hand_labels(ced_dir), quality.correction("trained", ced_dir)
  digest = trained_labeler.inputs_digest(ced_dir)
  assert first.version == f"{trained_labeler.VERSION}:{digest[:12]}"
  assert any(name.startswith("trained_labeler-") for name in os.listdir(fit_cache.directory()))

  def refit(*args, **kwargs):
    raise AssertionError("fitted again")
  for owner, name in ((TrainedLabeler, "fit"), (quality, "cross_validated"), (hand_labels, "load")):
    monkeypatch.setattr(owner, name, refit)
  again = TrainedLabeler.from_hand_labels(ced_dir)  # from the cache
  probe = ["真的假的？", "太可怕了[泪]", "转发微博", "支持！", "求真相"]
  assert again.version == first.version and again.label(probe) == first.label(probe)
  # its labels of real texts are kept under its fit's key (`label_store`), the same for the fit read back
  assert again.cache_key == first.cache_key and first.version in first.cache_key
  b = quality.correction("trained", ced_dir)
  assert a.source == b.source and all(np.array_equal(a.matrices[d], b.matrices[d]) for d in DIMENSIONS)
  # other files or other code: another key, fitted again
  monkeypatch.setattr(trained_labeler, "inputs_digest", lambda data_dir: "0" * 64)
  with pytest.raises(AssertionError, match="fitted again"):
    TrainedLabeler.from_hand_labels(ced_dir)
  monkeypatch.setattr(trained_labeler, "inputs_digest", lambda data_dir: digest)
  monkeypatch.setattr(trained_labeler, "fitting_code_digest", lambda: "changed")
  with pytest.raises(AssertionError, match="fitted again"):
    TrainedLabeler.from_hand_labels(ced_dir)
  with pytest.raises(AssertionError, match="fitted again"):
    quality.correction("trained", ced_dir)
