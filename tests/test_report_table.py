"""tools/report_table.py: a run's results.json as Markdown tables, and docs pages whose
marked tables are regenerated from runs (all pages made before any is written)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import report_table  # noqa: E402

DIMS = ("behaviour", "belief", "sentiment", "intent")


def _method(kl_mean, base):
  return {"kl_mean": kl_mean, "kl_mean_std": 0.0071, "js_mean": 0.0823, "dtw_mean": 5.504, "nll": 1.0903,
          "kl": {d: base + i / 10 for i, d in enumerate(DIMS)}}


RESULTS = {
    "methods": {"state": _method(0.33174, 0.1), "mf": _method(0.20491, 0.05)},
    "simulators": {"draws": 3, "methods": {"shrunk": _method(0.187, 0.02), "step": _method(0.043, 0.01)}},
    "reference": {"kl_real_vs_truth_mean": 0.04312},
    "paired": {"state": {"shrunk": {"diff": 0.1447, "ci95": [0.131, 0.158], "events": 64},
                         "state": {"diff": 0.0, "ci95": [0.0, 0.0], "events": 64}},
               "mf": {"shrunk": {"diff": 0.0075, "ci95": [-0.0012, 0.0161], "events": 64},
                      "state": {"diff": -0.1372, "ci95": [-0.151, -0.122], "events": 64}}},
    "ib_sweep": [{"beta": 0.0, "val_relevance": 0.9512, "val_compression_bits": None, "kl_mean": 0.21,
                  "kl_mean_std": 0.01},
                 {"beta": 1e-4, "val_relevance": 0.9468, "val_compression_bits": 75.402, "kl_mean": 0.2049,
                  "kl_mean_std": 0.0097}],
}


def _cells(table: str, first: str) -> list[str]:
  """The cells of the Markdown row that starts with `first`."""
  row = next(line for line in table.splitlines() if line.startswith(f"| {first} |"))
  return [c.strip() for c in row.strip("|").split("|")]


def _write_run(folder, results):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump(results, f)


def test_tables_carry_the_results_numbers():
  md = report_table.render(RESULTS)
  assert [line for line in md.splitlines() if line.startswith("### ")] == ["### methods", "### simulators",
                                                                          "### paired", "### sweep"]
  assert _cells(md, "mf") == ["mf", "0.205", "0.007", "0.082", "5.50", "1.090", "0.050", "0.150", "0.250", "0.350"]
  assert _cells(md, "state")[1] == "0.332"
  assert _cells(md, "step*")[2:4] == ["0.043", "0.007"] and _cells(md, "shrunk")[0] == "shrunk"  # oracles starred
  assert "Mean ± std over 3 draws" in md and "KL 0.043." in md
  paired = md[md.index("### paired"):md.index("### sweep")]
  assert "same 64 events" in paired and _cells(paired, "method")[1:] == ["vs shrunk", "vs state"]
  assert _cells(paired, "mf")[1:] == ["+0.007 [-0.001, +0.016]", "-0.137 [-0.151, -0.122]"]
  assert _cells(md, "0")[1:3] == ["0.9512", "n/a"] and _cells(md, "0.0001")[2:4] == ["75.40", "0.205"]


def test_a_part_the_results_lack_is_an_error_naming_it(capsys, tmp_path):
  _write_run(tmp_path / "run", RESULTS)
  with pytest.raises(SystemExit, match="error: .*/run has no intervention results"):
    report_table.main([str(tmp_path / "run"), "--part", "intervention"])
  with pytest.raises(SystemExit, match="unknown part 'methodz'"):
    report_table.main([str(tmp_path / "run"), "--part", "methodz"])
  report_table.main([str(tmp_path / "run"), "--part", "methods"])
  out = capsys.readouterr().out
  assert out.startswith("### methods") and "simulators" not in out


def test_update_regenerates_marked_blocks_and_writes_nothing_when_one_fails(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  _write_run("runs/quick", RESULTS)
  good = ("# Page\n\nText above.\n\n<!-- report: runs/quick methods -->\n| old | table |\n<!-- /report -->\n\n"
          "Text between.\n\n<!-- report: runs/quick/results.json sweep -->\n<!-- /report -->\nText below.\n")
  bad = "# Other\n\n<!-- report: runs/missing methods -->\nkept\n<!-- /report -->\n"
  (tmp_path / "good.md").write_text(good)
  (tmp_path / "bad.md").write_text(bad)
  with pytest.raises(SystemExit, match="error: bad.md:3: runs/missing/results.json does not exist"):
    report_table.main(["--update", "good.md", "bad.md"])
  assert (tmp_path / "good.md").read_text() == good and (tmp_path / "bad.md").read_text() == bad

  report_table.main(["--update", "good.md"])
  new = (tmp_path / "good.md").read_text()
  assert "| old | table |" not in new and _cells(new, "mf")[1] == "0.205" and _cells(new, "0.0001")[3] == "0.205"
  assert new.startswith("# Page\n\nText above.\n\n<!-- report: runs/quick methods -->\n| method |")
  assert "<!-- /report -->\n\nText between." in new and new.endswith("<!-- /report -->\nText below.\n")
  report_table.main(["--update", "good.md"])  # regenerating again changes nothing
  assert (tmp_path / "good.md").read_text() == new


@pytest.mark.parametrize("page, message", [
    ("<!-- report: runs/quick methods -->\n| a |\n", "page.md:1: the report block has no closing"),
    ("x\n<!-- report runs/quick -->\n<!-- /report -->\n", "page.md:2: a report marker reads"),
    ("<!-- report: runs/none methods -->\n<!-- /report -->\n", "page.md:1: runs/none/results.json does not exist"),
])
def test_a_bad_marker_is_an_error_naming_page_and_line(tmp_path, monkeypatch, page, message):
  monkeypatch.chdir(tmp_path)
  _write_run("runs/quick", RESULTS)
  (tmp_path / "page.md").write_text(page)
  with pytest.raises(SystemExit, match=message):
    report_table.main(["--update", "page.md"])
  assert (tmp_path / "page.md").read_text() == page


def test_corrected_horizon_and_labeler_tables():
  per_dim = {d: 0.1 * (i + 1) for i, d in enumerate(DIMS)}
  results = {**RESULTS,
             "corrected": {"source": "trained: cv", "methods": {"mf": {"kl_mean": 0.31, "kl": per_dim}},
                           "simulators": {"step": {"kl_mean": 0.05, "kl": per_dim}}},
             "horizon": {"h": [1, 2, 3], "persistence": "warmup",
                         "methods": {"mf": {"kl": [0.2, 0.25, 0.3], "skill": [0.1, 0.0, -0.2],
                                            "skill_ci95": [[0.05, 0.15], [-0.1, 0.1], [-0.3, -0.1]]}}}}
  md = report_table.render(results, ["corrected", "horizon"])
  assert _cells(md, "mf")[:3] == ["mf", "0.205", "0.310"] and _cells(md, "step*")[1:3] == ["0.043", "0.050"]
  assert "(trained: cv)" in md
  hz = md[md.index("### horizon"):]
  assert _cells(hz, "method") == ["method", "KL h=1", "KL h=3", "skill h=1", "skill h=3"]
  assert _cells(hz, "mf")[1:] == ["0.200", "0.300", "+0.100 [+0.050, +0.150]", "-0.200 [-0.300, -0.100]"]
  score = {k: {"value": 0.8, "ci95": [0.7, 0.9]} for k in ("accuracy", "balanced_accuracy", "macro_f1")}
  quality = {"labeler_quality": {"folds": 5, "rows": {"stratified": 1320, "uniform_val": 150},
                                 "cross_validated": {"rules": {d: score for d in DIMS}},
                                 "uniform_val": {"rules": {d: score for d in DIMS}}},
             "labeler_agreement": {"ced_hand": {"rows": 100, **{d: {"kappa": 0.9, "agreement": 0.95} for d in DIMS}}}}
  md = report_table.render(quality)
  assert [line for line in md.splitlines() if line.startswith("### ")] == ["### labelers", "### agreement"]
  assert "5 folds) on the 1320 stratified" in md
  assert _cells(md, "rules")[1:3] == ["behaviour", "0.800 [0.700, 0.900]"]
  assert _cells(md, "ced_hand")[1:3] == ["100", "0.900 (0.95)"]


def test_rates_table_marks_what_is_off_the_training_events_rates():
  within = {"rate": 0.45, "diff": 0.01, "ci95": [-0.01, 0.03], "ci_family": [-0.02, 0.04]}
  off = {"rate": 0.40, "diff": -0.06, "ci95": [-0.08, -0.04], "ci_family": [-0.09, -0.03]}
  near = {"rate": 0.42, "diff": -0.03, "ci95": [-0.05, -0.01], "ci_family": [-0.06, 0.00]}
  per = lambda share: {d: {name: (share if (d, name) == ("behaviour", "share") else within) for name in names}
                       for d, names in report_table.calibration.DIMENSIONS.items()}
  rates = {"training": {d: {name: 0.46 for name in names} for d, names in report_table.calibration.DIMENSIONS.items()},
           "real": per(within), "methods": {"state": per(off), "mf": per(near)},
           "calibrated": {"state": False, "mf": True}}
  md = report_table.render({**RESULTS, "rates": rates}, ["rates"])
  assert _cells(md, "category") == ["category", "training", "real", "state", "mf"]
  assert _cells(md, "behaviour share")[1:] == ["0.460", "0.450", "0.400**", "0.420*"]
  assert _cells(md, "belief doubt")[1:] == ["0.460", "0.450", "0.450", "0.450"]
  assert "every category: `state` no, `mf` yes." in md
