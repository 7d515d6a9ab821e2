"""tools/bench.py at a tiny size: every case prints its JSON line with the
fields docs/benchmarks.md's tables use, and the PyTorch reference of the train bench
computes the same IB-Tune loss as mfjax (same weights, m = the posterior mean)."""

import importlib.util
import json
import os

import pytest

torch = pytest.importorskip("torch", reason="the benchmark's reference side needs PyTorch (requirements-test.txt)")

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench.py")
TINY = ["--width", "64", "--layers", "2", "--vocab", "256", "--agents", "4", "--prompt", "8", "--action", "4",
        "--summary", "6", "--steps", "2", "--train-steps", "2", "--mfu-events", "2", "--repeats", "1"]


def _bench():
  spec = importlib.util.spec_from_file_location("bench", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_prints_every_case_and_the_same_loss(capsys):
  bench = _bench()
  bench.main(["all", *TINY])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  seen = {(r["bench"], r["case"], r["impl"]) for r in rows}
  for case in ("policy_1event", "policy_8events", "mf_step", "text_mf_step"):
    assert {("rollout", case, "mfjax"), ("rollout", case, "reference")} <= seen
  assert {("train", "ib_tune", "mfjax"), ("train", "ib_tune", "reference"), ("mfu", "train_step", "mfjax"),
          ("mfu", "simulate", "mfjax")} <= seen
  for r in rows:
    assert r["device"] and r["tokens_per_s"] > 0 and r["actions_per_s"] > 0
    if r["impl"] == "mfjax" and r["bench"] != "mfu":  # the paper's own algorithm on both sides has no target
      assert r["speedup"] > 0 and (r["target"] > 0 if r["case"] != "text_mf_step" else r["target"] is None)
    if r["bench"] == "mfu":
      assert 0 < r["mfu"] and r["model_gflops"] > 0
  train = {r["impl"]: r for r in rows if r["bench"] == "train"}
  # same weights, batch and m (the posterior mean): float32 differences between two frameworks only
  assert abs(train["mfjax"]["loss_step0"] - train["reference"]["loss_step0"]) < 1e-5 * train["reference"]["loss_step0"]


def test_mfjax_only_times_mfjax_alone(capsys, monkeypatch):
  bench = _bench()
  refuse = lambda *a, **k: pytest.fail("a reference ran under --mfjax-only")
  monkeypatch.setattr(bench, "reference_rollout", refuse)
  monkeypatch.setattr(bench, "reference_ib_loss", refuse)
  bench.main(["all", *TINY, "--mfjax-only", "--cases", "policy_1event"])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [(r["bench"], r["case"]) for r in rows] == [("rollout", "policy_1event"), ("train", "ib_tune"),
                                                     ("mfu", "train_step"), ("mfu", "simulate")]
  assert all(r["impl"] == "mfjax" and r["seconds"] > 0 and "speedup" not in r for r in rows)


def test_score_real_times_the_pipelines_rollout(capsys, monkeypatch):
  """--score-real: simulate also scores the real actions (as the pipeline's
  rollouts do); only with --mfjax-only, since the reference does no such step."""
  import mfjax.rollout
  bench, calls, simulate = _bench(), [], mfjax.rollout.simulate
  monkeypatch.setattr(mfjax.rollout, "simulate", lambda *a, **k: calls.append(k["score_real"]) or simulate(*a, **k))
  bench.main(["rollout", *TINY, "--mfjax-only", "--score-real", "--cases", "policy_1event"])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [(r["case"], r["score_real"]) for r in rows] == [("policy_1event", True)] and set(calls) == {True}
  with pytest.raises(SystemExit):
    bench.parse_args(["rollout", "--score-real"])
  assert "--mfjax-only" in capsys.readouterr().err


def test_bench_bfloat16_runs_both_sides_in_bfloat16(capsys):
  """--dtype bfloat16: mfjax computes in bfloat16 and the reference under torch.autocast,
  so the two losses at the initial weights agree to bfloat16 rounding, not float32's."""
  bench = _bench()
  bench.main(["train", *TINY, "--dtype", "bfloat16"])
  rows = {r["impl"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
  assert {r["dtype"] for r in rows.values()} == {"bfloat16"}
  ref, ours = rows["reference"]["loss_step0"], rows["mfjax"]["loss_step0"]
  assert abs(ours - ref) < 2e-2 * ref  # bfloat16 has 8 bits of mantissa
  bench.main(["train", *TINY])
  f32 = {r["impl"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
  assert ours != f32["mfjax"]["loss_step0"]  # the dtype really changed the computation


def test_layer_flags_train_the_same_model_another_way(capsys, monkeypatch):
  """--unroll-layers runs the train step's layers as a Python loop (no stacked weights),
  --unroll-stacked as a loop over the stacked weights' slices;
  --remat-policy recomputes what the policy does not save in the backward pass. From the
  same weights: the same loss at step 0, to float32 rounding; an unknown policy is refused."""
  bench, built = _bench(), []
  build = bench.build
  monkeypatch.setattr(bench, "build", lambda args: built.append(build(args)) or built[-1])
  losses = []
  flags = ([], ["--unroll-layers"], ["--remat-policy", "dots_with_no_batch_dims_saveable"], ["--unroll-stacked"])
  for flag in flags:
    bench.main(["train", *TINY, "--mfjax-only", *flag])
    (row,) = map(json.loads, capsys.readouterr().out.strip().splitlines())
    assert (row["unroll_layers"], row["unroll_stacked"], row["remat_policy"]) == (
        flag == flags[1], flag == flags[3], flag[1] if flag == flags[2] else "none")
    assert row["seconds"] > 0
    losses.append(row["loss_step0"])
  assert [(b[1].cfg.scan_layers, b[1].cfg.unroll_stacked, b[1].cfg.remat_policy) for b in built] == [
      (True, False, "none"), (False, False, "none"), (True, False, "dots_with_no_batch_dims_saveable"),
      (True, True, "none")]
  assert "layers" in built[0][2] and "layers_0" in built[1][2] and "layers" not in built[1][2]
  assert "layers" in built[3][2]
  assert max(losses) - min(losses) < 1e-6 * losses[0], losses
  with pytest.raises(SystemExit):
    bench.parse_args(["train", "--remat-policy", "dots_everywhere"])
  assert "unknown remat_policy 'dots_everywhere'" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # a size of 0 was a traceback deep in the model (or a divide by zero)
    bench.parse_args(["rollout", "--agents", "0"])
  assert "argument --agents: must be at least 1, got 0" in capsys.readouterr().err


def test_flop_counts_match_a_hand_count():
  bench = _bench()

  class Cfg:
    hidden_size, num_heads, num_kv_heads, head_dim, intermediate_size, num_layers, vocab_size = 4, 2, 1, 2, 8, 1, 10
  # per token: k,v 2 x 4x2 = 16 MACs; q 4x4 + o 4x4 + mlp 3 x 4x8 = 16 + 16 + 96 = 128; attention 2 x 2 x 2 = 8 per pair
  assert bench._per_token(Cfg) == (16, 128, 8)
  # one row of 3 tokens, logits at 1: 2*144*3 + 2*8*6 + 2*4*10
  assert bench.forward_flops(Cfg, 1, 3, 1) == 2 * 144 * 3 + 2 * 8 * 6 + 2 * 4 * 10
  # outputs at the last 2 only: k,v for 3 tokens, the rest for 2, query pairs 2 + 3
  assert bench.forward_flops(Cfg, 1, 3, 1, outputs=2) == 2 * (16 * 3 + 128 * 2) + 2 * 8 * 5 + 2 * 4 * 10
  # two layers: the first in full, the last's queries for 1 output
  Cfg.num_layers = 2
  assert bench.forward_flops(Cfg, 1, 3, 0, outputs=1) == 2 * 144 * 3 + 2 * 8 * 6 + 2 * (16 * 3 + 128) + 2 * 8 * 3
  # 2 tokens after 4 already cached (`before`): each query also reads the 4
  Cfg.num_layers = 1
  assert bench.forward_flops(Cfg, 1, 2, 0, before=4) == 2 * 144 * 2 + 2 * 8 * (3 + 2 * 4)
  # 3 rows of 6 tokens whose first 4 are alike: those once, then 3 rows of 2 reading them
  assert bench.shared_forward_flops(Cfg, 3, 3, 4, 6, 1) == (bench.forward_flops(Cfg, 1, 4, 0, outputs=1)
                                                             + bench.forward_flops(Cfg, 3, 2, 1, before=4))
  assert bench.shared_forward_flops(Cfg, 3, 3, 4, 6, 1) < bench.forward_flops(Cfg, 3, 6, 1)
  assert bench.shared_forward_flops(Cfg, 3, 3, 0, 6, 1) == bench.forward_flops(Cfg, 3, 6, 1)


def test_shared_times_the_topic_computed_once_against_every_agent(capsys):
  """`shared --topic N`: each case twice in one process on the same prompts, the second line with the
  speedup; the FLOPs the math needs count the topic once (fewer than without a topic)."""
  bench = _bench()
  args = [a for a in TINY] + ["--topic", "5", "--cases", "mf_step"]
  bench.main(["shared", *args])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [(r["case"], r["computed_once"]) for r in rows] == [("mf_step", False), ("mf_step", True),
                                                             ("ib_tune", False), ("ib_tune", True)]
  assert all(r["seconds"] > 0 and r["topic"] == 5 for r in rows)
  assert rows[1]["speedup"] > 0 and rows[3]["speedup"] > 0 and "speedup" not in rows[0]
  a = bench.parse_args(["train", *TINY])
  assert bench.train_step_flops(_cfg(bench), 1, 2, 4, 8, 4, 4, 5) < bench.train_step_flops(_cfg(bench), 1, 2, 4, 8, 4, 4)
  assert a.topic == 0
  for bad, says in ((["shared", *TINY, "--topic", "8"], "--topic 8"), (["train", *TINY, "--unshared"], "--unshared")):
    with pytest.raises(SystemExit):
      bench.parse_args(bad)
    assert says in capsys.readouterr().err


def _cfg(bench):
  from mfjax.model import tiny
  return tiny("qwen2", hidden_size=64, num_layers=2, vocab_size=256)
