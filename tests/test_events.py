"""Event loaders on real CED events and on files the tests write in each layout."""

import dataclasses
import datetime
import gzip
import json
import os
import sys

import numpy as np
import pytest

from mfjax.data import events as ev
from mfjax.data.batching import BatchConfig, make_step_batch
from mfjax.data.prompts import SHARE_TEXT, UidActivity, agent_states, cascade_depths

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import download_data  # noqa: E402


@pytest.fixture(scope="module")
def val_events(ced_dir):
  report = ev.LoadReport()
  events = list(ev.load_events(os.path.join(ced_dir, "val.jsonl.gz"), report=report))
  return events, report


def test_ced_val_loads_completely(val_events):
  events, report = val_events
  assert len(events) == 364 and report.loaded == 364 and report.skipped == 0
  assert sum(e.label == "rumor" for e in events) == 151  # the data README's table
  assert all(ev.split_of(e.eid) == "val" for e in events)
  for e in events:
    times = [a.time for a in e.actions]
    assert times == sorted(times) and isinstance(e.time, (int, float))
  shares = np.mean([a.text == "" for e in events for a in e.actions])
  assert 0.3 < shares < 0.5  # "about 40% of all actions" are plain reposts


def test_weibo_date_strings_become_unix_time():
  record = {"eid": "x", "label": "rumor", "topic": "t", "time": "Wed Aug 08 13:25:02 +0800 2012", "actions": []}
  assert ev.parse_ced(record).time == datetime.datetime(2012, 8, 8, 5, 25, 2, tzinfo=datetime.timezone.utc).timestamp()


def _write_lines(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def test_malformed_lines_name_file_line_and_field(tmp_path, val_events):
  events, _ = val_events
  good = [json.dumps(ev.event_to_ced(e), ensure_ascii=False) for e in events[:3]]
  missing = json.loads(good[2])
  del missing["actions"][5]["uid"]
  path = str(tmp_path / "bad.jsonl.gz")
  _write_lines(path, [good[0], '{"eid": "broken", ', json.dumps(missing, ensure_ascii=False), good[1]])
  with pytest.raises(ev.EventFormatError, match=r"bad\.jsonl\.gz:2: invalid JSON"):
    list(ev.load_events(path))
  path2 = str(tmp_path / "missing.jsonl.gz")
  _write_lines(path2, [good[0], good[1], json.dumps(missing, ensure_ascii=False)])
  with pytest.raises(ev.EventFormatError, match=r"missing\.jsonl\.gz:3 field 'actions\[5\]\.uid': missing"):
    list(ev.load_events(path2))
  report = ev.LoadReport()
  kept = list(ev.load_events(path, format="ced", skip_errors=True, report=report))
  assert [e.eid for e in kept] == [events[0].eid, events[1].eid]
  assert report.loaded == 2 and report.skipped == 2 and ":3 field 'actions[5].uid'" in report.errors[1]


def test_canonical_jsonl_round_trip(tmp_path, val_events):
  events, _ = val_events
  path = str(tmp_path / "events.jsonl")
  assert ev.write_jsonl(events[:5], path) == 5
  assert ev.detect_format(path) == "jsonl"
  assert list(ev.load_events(path)) == events[:5]


def test_rumdect_folder_with_labels_and_profiles(tmp_path):
  folder = tmp_path / "Weibo"
  folder.mkdir()
  src = {"uid": 1, "text": "网传某地停水", "original_text": "网传某地停水", "t": 1000, "mid": "m0",
         "followers_count": 10, "verified": False, "gender": "f"}
  kid = {"uid": 2, "text": "真的吗？", "t": 1060, "mid": "m1", "parent": "m0", "followers_count": 5,
         "friends_count": 7, "verified": True, "gender": "m", "user_description": "路人"}
  (folder / "4010.json").write_text(json.dumps([src, kid], ensure_ascii=False))
  (folder / "4011.json").write_text(json.dumps([src], ensure_ascii=False))
  (tmp_path / "Weibo.txt").write_text("eid:4010\tlabel:1\t1 2\neid:4011\tlabel:0\t3\n")
  loaded = list(ev.load_events(str(folder)))
  assert [(e.eid, e.label, len(e.actions)) for e in loaded] == [("4010", "rumor", 1), ("4011", "non-rumor", 0)]
  a = loaded[0].actions[0]
  assert (a.id, a.agent, a.parent, a.profile["followers_count"]) == ("m1", "2", "m0", 5)
  assert agent_states(loaded[0]) == ["男，粉丝5，关注7，认证用户，简介：路人"]
  del kid["uid"]
  (folder / "4010.json").write_text(json.dumps([src, kid], ensure_ascii=False))
  with pytest.raises(ev.EventFormatError, match=r"4010\.json field '\[1\]\.uid': missing"):
    list(ev.load_events(str(folder)))


def _write_raw_layout(root, events):
  """Real events written back into the original CED_Dataset layout."""
  cst = datetime.timezone(datetime.timedelta(hours=8))
  for sub in download_data.EXPECTED:
    (root / sub).mkdir(parents=True)
  for e in events:
    (root / "original-microblog" / f"{e.eid}.json").write_text(json.dumps(
        {"text": e.topic, "user": e.meta["user"], "time": e.time, "source": e.meta["source"],
         "has_url": e.meta["has_url"], **e.meta["counts"]}, ensure_ascii=False))
    reposts = [{"kids": [], "uid": a.agent, "parent": a.parent, "text": a.text, "mid": a.id,
                "date": datetime.datetime.fromtimestamp(a.time, cst).strftime("%Y-%m-%d %H:%M:%S")}
               for a in reversed(e.actions)]  # the raw files list newest first
    reposts.append({"kids": [], "uid": "u", "parent": "", "text": "x", "mid": "bad", "date": "2013-13-45 99:00:00"})
    sub = "rumor-repost" if e.label == "rumor" else "non-rumor-repost"
    (root / sub / f"{e.eid}.json").write_text(json.dumps(reposts, ensure_ascii=False))


def test_ced_raw_layout_converts_to_the_shared_files(tmp_path, val_events):
  events, _ = val_events
  chosen = [e for e in events if e.label == "rumor"][:3] + [e for e in events if e.label != "rumor"][:2]
  raw = tmp_path / "CED_Dataset"
  _write_raw_layout(raw, chosen)
  assert ev.detect_format(str(raw)) == "ced-raw"
  out = tmp_path / "out"
  counts = download_data.convert(str(raw), str(out))
  assert counts["val"]["events"] == 5 and counts["train"]["events"] == 0 and counts["dropped_actions"] == 5
  converted = {e.eid: e for e in ev.load_events(str(out / "val.jsonl.gz"), format="ced")}
  for e in chosen:
    c = converted[e.eid]
    assert (c.topic, c.label, c.time, c.meta) == (e.topic, e.label, e.time, e.meta)
    assert c.actions == e.actions
  with pytest.raises(SystemExit, match="--force"):
    download_data.convert(str(raw), str(out))


def test_step_batches_of_real_events(val_events):
  from mfjax.data import train_tokenizer
  events, _ = val_events
  sample = events[:6]
  texts = [e.topic for e in sample] + [a.text for e in sample for a in e.actions]
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    tok = train_tokenizer(texts, 600, d)
  cfg = BatchConfig(steps=4, agents_per_step=5, prompt_len=48, action_len=16)
  batch = make_step_batch(sample, tok, cfg, activity=UidActivity.fit(sample))
  E, T, B = 6, 4, 5
  assert batch.prompt_ids.shape == (E, T, B, 48) and batch.action_ids.shape == (E, T, B, 16)
  assert batch.agent_mask.all()  # every val event has >= 20 actions
  assert batch.report["actions_used"] == E * T * B
  assert batch.report["actions_dropped"] == sum(len(e.actions) for e in sample) - E * T * B
  # left-padded prompts end with the cue; actions start at 0 and end with eos
  assert (batch.prompt_mask[..., -1] == 1).all() and (batch.action_mask[..., 0] == 1).all()
  n_act = batch.action_mask.sum(-1)
  last = np.take_along_axis(batch.action_ids, (n_act - 1)[..., None], -1)[..., 0]
  assert (last == tok.eos_token_id).all()
  # masks are one contiguous run of real tokens
  assert (np.diff(batch.prompt_mask, axis=-1) >= 0).all() and (np.diff(batch.action_mask, axis=-1) <= 0).all()
  first = sample[0].actions[0]
  ids = batch.action_ids[0, 0, 0][batch.action_mask[0, 0, 0] == 1][:-1]
  assert tok.decode(ids) == (first.text or SHARE_TEXT)[:len(tok.decode(ids))]
  assert tok.decode(batch.prompt_ids[0, 0, 0][batch.prompt_mask[0, 0, 0] == 1]).endswith("评论：")
  # a short event leaves masked slots, counted in the report
  short = ev.Event("s", "t", 0.0, None, sample[0].actions[:7])
  b2 = make_step_batch([short], tok, cfg)
  assert b2.agent_mask.sum() == 7 and b2.report["agent_slots_empty"] == 13
  assert not b2.agent_mask[0, 1, 2:].any() and (b2.action_mask[~b2.agent_mask] == 0).all()


def test_cascade_depth_follows_parent_links(val_events):
  act = lambda i, parent: ev.Action(id=i, agent="u" + i, time=float(len(i)), text="", parent=parent)
  chain = ev.Event("c", "t", 0.0, None, (act("a", ""), act("bb", "a"), act("ccc", "bb"), act("dddd", "zz")))
  assert cascade_depths(chain) == [1, 2, 3, 1]
  events, _ = val_events
  depths = [d for e in events[:50] for d in cascade_depths(e)]
  assert min(depths) == 1 and max(depths) >= 3  # real cascades are deeper than one hop


def test_an_intervention_replaces_only_its_actions_texts(val_events):
  from mfjax.data.intervention import Intervention, forced_mask, inject
  events, _ = val_events
  sample = list(events[:3]) + [ev.Event("s", "t", 0.0, None, events[0].actions[:13])]  # a short one too
  iv = Intervention("谣言，别信", step=2, agents=3)
  got = inject(sample, iv, agents_per_step=5)
  for before, after in zip(sample, got):
    assert len(after.actions) == len(before.actions) and after.topic == before.topic
    for i, (a, b) in enumerate(zip(before.actions, after.actions)):
      if 12 <= i < 15:  # step 2's last 3 agents: the injected text, the rest of the action as it was
        assert b.text == iv.text and b == dataclasses.replace(a, text=iv.text)
      else:
        assert b == a
  assert sample[0].actions[12].text != iv.text  # the originals are untouched
  agent_mask = np.ones((4, 4, 5), bool)
  agent_mask[3].reshape(-1)[13:] = False  # the short event has only the first of those slots
  forced = forced_mask(agent_mask, iv)
  assert forced.sum() == 3 * 3 + 1 and forced[:3, 2, 2:].all()
  assert forced[3, 2].tolist() == [False, False, True, False, False]
  iv.check(steps=4, agents_per_step=5, warmup=2)
  with pytest.raises(ValueError, match="must be a rollout step"):
    iv.check(steps=4, agents_per_step=5, warmup=3)
  with pytest.raises(ValueError, match="before the last of 3 steps"):
    iv.check(steps=3, agents_per_step=5)
  with pytest.raises(ValueError, match="agents 3 must be 1 to the 2 agents"):
    iv.check(steps=4, agents_per_step=2)


def test_an_agents_activity_leaves_out_its_own_event():
  """UidActivity counts a uid's actions in the fitted events other than the one asked about: a training
  agent's state means what a held-out agent's does (before, every training agent showed at least 1)."""
  act = lambda i, uid: ev.Action(id=i, agent=uid, time=float(len(i)), text="", parent="")
  a = ev.Event("a", "t", 0.0, None, (act("1", "u"), act("2", "u"), act("3", "v")))
  b = ev.Event("b", "t", 0.0, None, (act("1", "u"),))
  activity = UidActivity.fit([a, b])
  assert (activity("u", "a"), activity("u", "b"), activity("v", "a")) == (1, 2, 0)
  assert activity("u", "held-out") == activity("u") == 3 and activity("w", "a") == 0
  assert [s.split("，")[-1] for s in agent_states(a, activity)] == ["历史活跃1次", "历史活跃1次", "历史活跃0次"]


def test_an_agents_state_as_numbers_says_what_its_state_line_says(val_events):
  """agent_numbers (mf.state_numbers): per action log1p of the cascade depth, of the hours since the post
  (0 and a flag where a time is missing) and of the uid's actions in other events, as the state line
  renders them; step_numbers lays them out as make_step_batch lays out the actions."""
  import math
  from mfjax.data import NUMBER_FEATURES, agent_numbers, step_numbers
  act = lambda i, uid, t, parent="": ev.Action(id=i, agent=uid, time=t, text="", parent=parent)
  a = ev.Event("a", "t", 0.0, None, (act("1", "u", 7200.0), act("2", "v", None, parent="1"),
                                     act("3", "u", 3600.0, parent="2")))
  activity = UidActivity.fit([a, ev.Event("b", "t", 0.0, None, (act("1", "u", 1.0),))])
  rows = agent_numbers(a, activity)
  assert len(rows[0]) == len(NUMBER_FEATURES)
  np.testing.assert_allclose(rows, [[math.log1p(1), math.log1p(2.0), 0, math.log1p(1)],
                                    [math.log1p(2), 0, 1, 0],
                                    [math.log1p(3), math.log1p(1.0), 0, math.log1p(1)]])
  assert [s.split("，")[0] for s in agent_states(a, activity)] == ["转发层级1", "转发层级2", "转发层级3"]
  laid = step_numbers([a], 2, 2, activity)
  assert laid.shape == (1, 2, 2, len(NUMBER_FEATURES)) and laid.dtype == np.float32
  np.testing.assert_allclose(laid.reshape(4, -1)[:3], rows, rtol=1e-6)
  assert not laid[0, 1, 1].any()  # an empty slot
  events, _ = val_events  # real CED events: every action has a depth of at least 1, and times
  real = step_numbers(events[:8], 12, 16)
  from mfjax.data import step_texts
  mask = step_texts(events[:8], 12, 16)[1]
  assert (real[..., 0][mask] >= math.log1p(1) - 1e-6).all() and real[..., 1][mask].max() > 0
  with pytest.raises(ValueError, match="rows of agent numbers"):
    step_numbers([a], 2, 2, rows=[rows[:1]])


def test_a_split_is_drawn_stratified_by_label_never_its_first_n(val_events):
  """pipeline.data.sample_events: the CED files list every rumor first; a draw of n keeps each label's
  share of the file, is the same for the same seed, differs for another, and takes all for n >= len."""
  from mfjax.pipeline.data import sample_events
  events, _ = val_events
  rumors = sum(e.label == "rumor" for e in events)
  assert [e.label for e in events[:rumors]] == ["rumor"] * rumors  # the file's order: the first n are rumors
  draw = sample_events(events, 64, seed=(0, 2))
  assert len(draw) == 64 and len({e.eid for e in draw}) == 64
  assert sum(e.label == "rumor" for e in draw) == round(64 * rumors / len(events))  # 151 of 364: 27 of 64
  assert [e.eid for e in draw] == [e.eid for e in sample_events(events, 64, seed=(0, 2))]
  assert [e.eid for e in draw] != [e.eid for e in sample_events(events, 64, seed=(0, 1))]
  order = {e.eid: i for i, e in enumerate(events)}
  assert [order[e.eid] for e in draw] == sorted(order[e.eid] for e in draw)  # file order
  assert sample_events(events, 1000, seed=(0, 0)) == events
