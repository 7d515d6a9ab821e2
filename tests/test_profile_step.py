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


def test_gpu_kernel_names_find_their_hlo():
  """GPU kernels are named after their op with `.` as `_` (`__N` for a further kernel of
  one op); a library kernel (cuBLAS's nvjet_...) is found by its `hlo_op` stat, which an
  event inside a command buffer does not give."""
  tool = _tool()
  hlo = "\n".join([
      "%fused_add.3 (p0: f32[4]) -> f32[4] {",
      "  ROOT %add.1 = f32[4]{0} add(f32[4]{0} %p0, f32[4]{0} %p0)",
      "}", "",
      "ENTRY %main.9 (x: f32[4]) -> f32[4] {",
      "  %loop_add_fusion.17 = f32[4]{0} fusion(f32[4]{0} %x), kind=kLoop, calls=%fused_add.3",
      "  %sort.6.1 = f32[4]{0} sort(f32[4]{0} %x), dimensions={0}",
      "  %custom-call.2 = (f32[4,4]{1,0}, s8[0]{0}) custom-call(f32[4]{0} %x), custom_call_target=\"__cublas$gemm\"",
      "  ROOT %r = f32[4]{0} add(f32[4]{0} %x, f32[4]{0} %x)",
      "}"])
  text = tool._mangled(tool.roots(hlo))
  assert tool.hlo_of(text, "loop_add_fusion_17").startswith("f32[4]{0} add(")  # the fused computation's root
  assert tool.hlo_of(text, "sort_6_1").startswith("f32[4]{0} sort(")
  assert tool.hlo_of(text, "sort_6_1__2").startswith("f32[4]{0} sort(")
  assert "__cublas$gemm" in tool.hlo_of(text, "nvjet_sm90_tst_128x160", "custom-call.2")
  assert tool.hlo_of(text, "nvjet_sm90_tst_128x160", "") == ""
  assert tool.hlo_of(text, "r") == "f32[4]{0} add(f32[4]{0} %x, f32[4]{0} %x)"
  ev = lambda name, start, op: SimpleNamespace(name=name, start_ns=start, duration_ns=5,
                                               stats=[("hlo_op", op), ("correlation_id", 1)])
  total, calls, ops = collections.Counter(), collections.Counter(), {}
  tool._self_times([ev("nvjet_a", 0, "command_buffer_3"), ev("nvjet_a", 10, "custom-call.2"),
                    ev("sort_6_1", 20, "command_buffer_3")], total, calls, ops)
  assert ops == {"nvjet_a": "custom-call.2"} and dict(calls) == {"nvjet_a": 2, "sort_6_1": 1}


def test_profile_rows_name_compiled_ops(capsys):
  tool = _tool()
  printed_rows = 0
  for what, extra in (("train", ["--unroll-layers"]), ("simulate", []),
                      ("simulate", ["--method", "state", "--score-real"])):
    rows = tool.main([what, *TINY, "--events", "2", "--steps", "2", *extra])
    head, ops = rows[0], rows[1:]
    assert head.get("unroll_layers") == (True if what == "train" else None)
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
