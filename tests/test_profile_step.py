"""tools/profile_step.py: self times of nested trace events (exact, on made-up
events), and a tiny traced train step and rollout whose op rows name real HLO."""

import collections
import importlib.util
import os
from types import SimpleNamespace

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "profile_step.py")
TINY = ["--width", "64", "--layers", "2", "--vocab", "256", "--agents", "4", "--prompt", "8", "--action", "4",
        "--top", "8", "--runs", "1"]


def _tool():
  spec = importlib.util.spec_from_file_location("profile_step", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_self_time_subtracts_nested_events_only():
  ev = lambda name, start, dur: SimpleNamespace(name=name, start_ns=start, duration_ns=dur)
  # while [0, 100) holds a [10, 40) and b [50, 70); c [120, 130) follows; a second while [200, 260) holds a [210, 230)
  events = [ev("b", 50, 20), ev("while", 0, 100), ev("a", 10, 30), ev("c", 120, 10), ev("while", 200, 60),
            ev("a", 210, 20)]
  total, calls = collections.Counter(), collections.Counter()
  _tool()._self_times(events, total, calls)
  assert dict(total) == {"while": 50 + 40, "a": 30 + 20, "b": 20, "c": 10}
  assert dict(calls) == {"while": 2, "a": 2, "b": 1, "c": 1}


def test_profile_rows_name_compiled_ops(capsys):
  tool = _tool()
  printed_rows = 0
  for what, extra in (("train", []), ("simulate", []), ("simulate", ["--method", "state", "--score-real"])):
    rows = tool.main([what, *TINY, "--events", "2", "--steps", "2", *extra])
    head, ops = rows[0], rows[1:]
    assert head.get("method") == (None if what == "train" else (extra or [None, "mf"])[1])
    assert head.get("score_real") == (None if what == "train" else "--score-real" in extra)
    assert head["what"] == what and head["seconds_per_run"] > 0 and head["op_ms_per_run"] > 0 and head["ops"] > 0
    assert head["trace_dir"] is None
    assert 0 < len(ops) <= 8
    assert all(r["ms_per_run"] >= 0 and 0 <= r["share"] <= 1 for r in ops)
    assert [r["ms_per_run"] for r in ops] == sorted((r["ms_per_run"] for r in ops), reverse=True)
    assert sum(r["share"] for r in ops) <= 1 + 1e-9
    # the expensive ops are XLA ops of this program: their HLO is found in the compiled text
    assert sum(bool(r["root"]) for r in ops) >= len(ops) // 2, ops
    printed_rows += len(rows)
  assert len(capsys.readouterr().out.strip().splitlines()) == printed_rows  # one JSON line per row


def test_trace_dir_is_kept_when_asked(tmp_path):
  rows = _tool().main(["train", *TINY, "--trace-dir", str(tmp_path / "trace")])
  assert rows[0]["trace_dir"] == str(tmp_path / "trace")
  assert any(name.endswith(".xplane.pb") for _, _, files in os.walk(tmp_path / "trace") for name in files)
