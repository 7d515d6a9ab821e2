"""tools/compare_runs.py: the paired difference of two runs' rollouts over the same events, as
`results.json["paired"]` computes it within one run."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import compare_runs  # noqa: E402

from mfjax.evaluation import report  # noqa: E402

DATA = {"events": 5, "steps": 6, "agents_per_step": 4, "warmup": 2, "scored_steps": 20, "labeler": "rules"}


def _run(tmp_path, name, mf, drawn, shrunk, data=DATA):
  results = {"data": data, "methods": {"mf": {"kl_mean": float(np.mean(mf)), "kl_per_event": list(mf),
                                              "drawn": {"kl_per_event": list(drawn)}}},
             "simulators": {"methods": {"shrunk": {"kl_per_event": list(shrunk)}}}}
  (tmp_path / name).mkdir()
  (tmp_path / name / "results.json").write_text(json.dumps(results))
  return str(tmp_path / name)


def test_two_runs_are_paired_over_their_events_as_a_run_pairs_its_methods(tmp_path, capsys):
  rng = np.random.default_rng(0)
  mf_a, mf_b, shrunk = (rng.random(5) for _ in range(3))
  mf_a[2] = np.nan  # an event a rollout could not score is left out of the pair
  a = _run(tmp_path, "a", mf_a, mf_a + 0.1, shrunk)
  b = _run(tmp_path, "b", mf_b, mf_b, shrunk)
  r = compare_runs.compare(f"{a}:mf", f"{b}:mf")
  ok = np.isfinite(mf_a)
  assert r["events"] == 4 and r["diff"] == pytest.approx((mf_a - mf_b)[ok].mean())
  # the same interval as results.json's paired block gives a method against a reference within one run
  within = report.paired({"methods": {"mf": {"kl_per_event": list(mf_a), "kl_mean": 0.0}},
                          "simulators": {"methods": {"shrunk": {"kl_per_event": list(mf_b)}}}})["mf"]["shrunk"]
  assert r["ci95"] == pytest.approx(within["ci95"]) and r["diff"] == pytest.approx(within["diff"])
  assert compare_runs.compare(f"{a}:mf (drawn)", f"{a}:mf")["diff"] == pytest.approx(0.1)
  assert compare_runs.compare(f"{a}:shrunk", f"{b}:shrunk")["diff"] == 0.0
  compare_runs.main([f"{a}:mf", f"{b}:mf"])
  assert "the 4 events" in capsys.readouterr().out


def test_runs_that_scored_other_events_or_a_missing_method_are_errors(tmp_path):
  x = np.ones(5)
  a = _run(tmp_path, "a", x, x, x)
  other = _run(tmp_path, "other", x, x, x, data={**DATA, "warmup": 3})
  with pytest.raises(ValueError, match="did not score the same events alike.*warmup"):
    compare_runs.compare(f"{a}:mf", f"{other}:mf")
  with pytest.raises(ValueError, match=r"no 'state'; it has \['mf', 'mf \(drawn\)', 'shrunk'\]"):
    compare_runs.compare(f"{a}:state", f"{a}:mf")
  old = json.loads((tmp_path / "a" / "results.json").read_text())
  del old["methods"]["mf"]["drawn"]["kl_per_event"]  # a run evaluated before drawn categories were scored per event
  (tmp_path / "a" / "results.json").write_text(json.dumps(old))
  with pytest.raises(ValueError, match=r"no 'mf \(drawn\)'; it has \['mf', 'shrunk'\]"):
    compare_runs.compare(f"{a}:mf (drawn)", f"{a}:mf")
  with pytest.raises(ValueError, match="RUN:METHOD"):
    compare_runs.compare(a, f"{a}:mf")
  with pytest.raises(SystemExit, match="not an evaluated run"):
    compare_runs.main([f"{tmp_path / 'nothing'}:mf", f"{a}:mf"])
