"""tools/bench_top_k.py at a tiny size: one JSON line per rows x variant, each variant
giving lax.top_k's values and ids (the chunked ones through padding and stages)."""

import importlib.util
import json
import os

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench_top_k.py")


def test_every_variant_is_timed_and_equals_lax_top_k(capsys):
  spec = importlib.util.spec_from_file_location("bench_top_k", TOOL)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  tool.main(["--rows", "4,2", "--vocab", "1100", "--k", "17", "--chunks", "32,64", "--calls", "2", "--repeats", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [(r["rows"], r["variant"]) for r in rows] == [
      (n, v) for n in (4, 2) for v in ("lax_top_k", "lax_top_k16", "chunked_32", "chunked_64", "select_top_k")]
  assert all(r["equal"] and r["ms_per_call"] > 0 and r["device"] and (r["vocab"], r["k"]) == (1100, 17) for r in rows)
