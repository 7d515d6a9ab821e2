"""A run's results as Markdown tables, and docs pages whose tables are regenerated from runs.

  python tools/report_table.py runs/quickstart                 # every table results.json has
  python tools/report_table.py runs/quickstart --part methods  # one of them
  python tools/report_table.py --update docs/experiments/quickstart.md

The parts: `methods` (KL(real || simulated) per method, mean ± std over rollout seeds,
and its JS, DTW, NLL per token and per-dimension KL), `simulators` (the reference
simulators that use no model, oracles starred), `paired` (each method against `shrunk`
and the best method without a mean field over the same events: the mean difference and
its 95% bootstrap interval), `intervention` (each method's change in
the category each dimension's plot shows, with minus without), `sweep` (the IB sweep:
beta, validation NLL and bits of compression against KL), `corrected` (KL on distributions
corrected for the labeler's errors, with eval.corrected), `labelers` and `agreement` (the
labelers against the hand labels: tools/labeler_quality.py's results), `horizon` (forecast skill
against persistence, the warm-up held fixed, at the first and last step after the warm-up), `drift`
(eval.drift: the mean KL of each method and reference simulator over the first and last step windows,
and their ratio, for long rollouts), `rates` (each category's share of the actions after the warm-up, per
method, against the training events' and the real ones: is a method calibrated?).

`--update PAGE` rewrites every block of PAGE marked as

  <!-- report: RUN PART -->
  ...
  <!-- /report -->

with the table PART of RUN's results.json (RUN: a run folder or a results.json, relative
to the current folder: run it from the repository root). Every block of every page is
made before any page is written, so a missing run or a bad marker (named by page and
line) leaves every page as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mfjax.categories import DIMENSIONS  # noqa: E402
from mfjax.evaluation import calibration  # noqa: E402
from mfjax.errors import UserError, one_line_errors  # noqa: E402
from mfjax.evaluation.bounds import ORACLES  # noqa: E402
from mfjax.evaluation.plots import SHOWN  # noqa: E402

# What each reference simulator draws a step's agents from (mfjax/evaluation/bounds.py says more)
SIMULATORS = {
    "global": "the training events' proportions at the same step",
    "label": "the same, over the training events with the event's label",
    "warmup": "the event's own warm-up steps, pooled",
    "shrunk": "the warm-up pulled towards `global` (pseudo-agents fitted on training events)",
    "previous": "the event's real previous step",
    "event": "the event's own scored steps, pooled",
    "step": "the real step itself, resampled (sampling noise alone)",
    "world": "the synthetic world's own equations, run free from the warm-up",
}
PARTS = ("methods", "simulators", "paired", "horizon", "drift", "rates", "intervention", "sweep", "corrected",
         "labelers", "agreement")
_OPEN = re.compile(r"^<!-- report: (\S+) (\S+) -->\s*$")
_CLOSE = "<!-- /report -->"


class ReportError(UserError):
  """A run without results, a part it does not have, or a page's marker that cannot be read."""


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def _table(header, rows) -> str:
  return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


def _dims(kl: dict) -> list[str]:
  return [f"{kl[d]:.3f}" for d in DIMENSIONS]


def methods(results: dict) -> str:
  rows = [[m, f"{r['kl_mean']:.3f}", f"{r['kl_mean_std']:.3f}", f"{r['js_mean']:.3f}", f"{r['dtw_mean']:.2f}",
           f"{r['nll']:.3f}", *_dims(r["kl"])] for m, r in results["methods"].items()]
  return _table(["method", "KL mean", "± std", "JS", "DTW", "NLL/token", *(f"KL {d}" for d in DIMENSIONS)], rows)


def simulators(results: dict) -> str:
  sims = results["simulators"]
  rows = [[f"{name}*" if name in ORACLES else name, SIMULATORS.get(name, ""), f"{r['kl_mean']:.3f}",
           f"{r['kl_mean_std']:.3f}", *_dims(r["kl"])] for name, r in sims["methods"].items()]
  table = _table(["simulator", "draws each step's agents from", "KL mean", "± std", *DIMENSIONS], rows)
  notes = [f"Mean ± std over {sims['draws']} draws; * an oracle."]
  if "reference" in results:
    notes.append(f"Sampling-noise floor (the real agents against their exact distribution): "
                 f"KL {results['reference']['kl_real_vs_truth_mean']:.3f}.")
  return table + "\n\n" + " ".join(notes)


def intervention(results: dict) -> str:
  iv = results["intervention"]
  header = ["method", *(f"{d}: {SHOWN[d]}" for d in DIMENSIONS)]
  rows = [[m, *(f"{r['effect'][d][SHOWN[d]]:+.4f} ± {r['effect_std'][d][SHOWN[d]]:.3f}" for d in DIMENSIONS)]
          for m, r in iv["methods"].items()]
  if "world" in iv:
    rows.append(["world (exact)", *(f"{iv['world']['effect'][d][SHOWN[d]]:+.4f}" for d in DIMENSIONS)])
  steps = iv["scored_steps"]
  span = f"steps {steps[0]}-{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
  return (f"{iv['agents']} agents write {iv['text']!r} at step {iv['step']}; the change in {span}, with minus "
          "without (mean ± std over seeds):\n\n" + _table(header, rows))


def paired(results: dict) -> str:
  refs = list(next(iter(results["paired"].values())))
  rows = [[m, *(f"{r[ref]['diff']:+.3f} [{r[ref]['ci95'][0]:+.3f}, {r[ref]['ci95'][1]:+.3f}]" for ref in refs)]
          for m, r in results["paired"].items()]
  events = next(iter(next(iter(results["paired"].values())).values()))["events"]
  return (f"KL(method) - KL(reference) over the same {events} events: the mean and its 95% bootstrap interval "
          "(below 0: closer to the real population than the reference).\n\n"
          + _table(["method", *(f"vs {ref}" for ref in refs)], rows))


def sweep(results: dict) -> str:
  def num(v, spec):
    return "n/a" if v is None else format(v, spec)
  pop = any(r.get("val_population") is not None for r in results["ib_sweep"])  # the head's columns, with one
  rows = [[f"{r['beta']:g}", *([num(r.get("population_weight"), "g")] if pop else []),
           num(r["val_relevance"], ".4f"), *([num(r.get("val_population"), ".4f")] if pop else []),
           num(r["val_compression_bits"], ".2f"), f"{r['kl_mean']:.3f}", f"{r['kl_mean_std']:.3f}"]
          for r in results["ib_sweep"]]
  return _table(["beta", *(["population weight"] if pop else []), "val NLL", *(["val population CE"] if pop else []),
                 "bits", "KL mean", "± std"], rows)


def _ci(v: dict) -> str:
  return f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"


def labelers(results: dict) -> str:
  q = results["labeler_quality"]
  header = ["labeler", "dimension", "accuracy", "balanced accuracy", "macro-F1"]

  def rows(block):
    return [[name, d, *(_ci(s[d][k]) for k in ("accuracy", "balanced_accuracy", "macro_f1"))]
            for name, s in block.items() for d in DIMENSIONS]
  return (f"Cross-validated ({q['folds']} folds) on the {q['rows']['stratified']} stratified hand labels, weighted "
          "to the natural distribution of non-empty texts (95% bootstrap intervals over rows):\n\n"
          + _table(header, rows(q["cross_validated"]))
          + f"\n\nOn the {q['rows']['uniform_val']} uniformly drawn val comments labelled before the guide (the "
          "trained labeler fitted on the stratified labels alone; unweighted):\n\n" + _table(header, rows(q["uniform_val"])))


def agreement(results: dict) -> str:
  a = results["labeler_agreement"]
  rows = [[name, str(v["rows"]), *(f"{v[d]['kappa']:.3f} ({v[d]['agreement']:.2f})" for d in DIMENSIONS)]
          for name, v in a.items()]
  return "Cohen's kappa (raw agreement) of two blind labellings:\n\n" + _table(["file", "rows", *DIMENSIONS], rows)


def corrected(results: dict) -> str:
  c = results["corrected"]
  rows = [[m, f"{results['methods'][m]['kl_mean']:.3f}", f"{r['kl_mean']:.3f}", *_dims(r["kl"])]
          for m, r in c["methods"].items()]
  rows += [[f"{name}*" if name in ORACLES else name, f"{results['simulators']['methods'][name]['kl_mean']:.3f}",
            f"{r['kl_mean']:.3f}", *_dims(r["kl"])] for name, r in c.get("simulators", {}).items()]
  return (f"KL on distributions corrected for the labeler's errors ({c['source']}), beside the raw KL:\n\n"
          + _table(["method", "KL raw", "KL corrected", *(f"corrected {d}" for d in DIMENSIONS)], rows))


def horizon(results: dict) -> str:
  hz = results["horizon"]
  ends = sorted({0, len(hz["h"]) - 1})
  header = ["method", *(f"KL h={hz['h'][i]}" for i in ends), *(f"skill h={hz['h'][i]}" for i in ends)]
  rows = [[name, *(f"{r['kl'][i]:.3f}" for i in ends),
           *(f"{r['skill'][i]:+.3f} [{r['skill_ci95'][i][0]:+.3f}, {r['skill_ci95'][i][1]:+.3f}]" for i in ends)]
          for name, r in hz["methods"].items()]
  return (f"Forecast skill against persistence (`{hz['persistence']}`): 1 - KL / KL({hz['persistence']}) at h steps "
          "after the warm-up, with its 95% bootstrap interval over events (paired: the same events for every "
          "row; above 0: better than persistence).\n\n" + _table(header, rows))


def drift(results: dict) -> str:
  dr = results["drift"]
  spans = [f"{a}-{b}" for a, b in dr["windows"]]
  dims = list(DIMENSIONS)
  rows = []
  for name, r in dr["methods"].items():
    star = f"{name}*" if name in ORACLES and name not in results["methods"] else name
    shift = [f"{r['kl_dim'][d][0]:.3f} → {r['kl_dim'][d][-1]:.3f}" if "kl_dim" in r else "" for d in dims]
    rows.append([star, *(f"{x:.3f}" for x in r["kl"]),
                 f"{r['ratio']:.3f} [{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]", *shift])
  return (f"Drift: the mean KL over steps {spans[0]} and {spans[-1]} (1-based), and the last window's against the "
          f"first, with its 95% bootstrap interval over {dr['events']} events; per dimension, a method's KL in the "
          "first window → the last.\n\n"
          + _table(["method", *(f"KL steps {x}" for x in spans), "ratio", *dims], rows))


def rates(results: dict) -> str:
  header, rows = calibration.rate_rows(results["rates"])
  return (f"{calibration.NOTE} Within noise of the training events' on every category: "
          f"{calibration.verdicts(results['rates'], '`')}.\n\n"
          + _table(header, rows))


_KEYS = {"methods": "methods", "simulators": "simulators", "paired": "paired", "intervention": "intervention",
         "sweep": "ib_sweep", "corrected": "corrected", "labelers": "labeler_quality",
         "agreement": "labeler_agreement", "horizon": "horizon", "drift": "drift", "rates": "rates"}
_MAKE = {"methods": methods, "simulators": simulators, "paired": paired, "intervention": intervention,
         "sweep": sweep, "corrected": corrected, "labelers": labelers, "agreement": agreement,
         "horizon": horizon, "drift": drift, "rates": rates}


def load(run: str) -> dict:
  path = run if run.endswith(".json") else os.path.join(run, "results.json")
  if not os.path.exists(path):
    raise ReportError(f"{path} does not exist: run `python -m mfjax run` (or evaluate) for that run first")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ReportError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None


def part(results: dict, name: str, source: str) -> str:
  if name not in _MAKE:
    raise ReportError(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
  if _KEYS[name] not in results:
    raise ReportError(f"{source} has no {name} results (its results.json has no {_KEYS[name]!r})")
  return _MAKE[name](results)


def render(results: dict, parts=None, source: str = "results") -> str:
  """Every table of `parts` (default: each one the results have), with a heading each."""
  names = parts or [p for p in PARTS if _KEYS[p] in results]
  return "\n\n".join(f"### {name}\n\n{part(results, name, source)}" for name in names)


def update(text: str, page: str) -> str:
  """`text` with each marked block's table made anew (see the module docstring)."""
  lines, out, i = text.split("\n"), [], 0
  while i < len(lines):
    out.append(lines[i])
    if lines[i].startswith("<!-- report") and not lines[i].startswith(_CLOSE):
      m = _OPEN.match(lines[i])
      if not m:
        raise ReportError(f"{page}:{i + 1}: a report marker reads `<!-- report: RUN PART -->`, not {lines[i]!r}")
      end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == _CLOSE), None)
      if end is None:
        raise ReportError(f"{page}:{i + 1}: the report block has no closing `{_CLOSE}`")
      run, name = m.groups()
      try:
        out.append(part(load(run), name, run))
      except ReportError as e:
        raise ReportError(f"{page}:{i + 1}: {e}") from None
      out.append(_CLOSE)
      i = end
    i += 1
  return "\n".join(out)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("run", nargs="?", help="a run folder (or its results.json) to print the tables of")
  ap.add_argument("--part", default="", help=f"comma-separated, of {', '.join(PARTS)} (default: every one it has)")
  ap.add_argument("--update", nargs="+", metavar="PAGE", default=[],
                  help="regenerate the marked tables of these Markdown pages instead")
  args = ap.parse_args(argv)
  if bool(args.run) == bool(args.update):
    ap.error("give a run to print, or --update PAGE ... (not both)")
  with one_line_errors():
    if args.run:
      parts = [p.strip() for p in args.part.split(",") if p.strip()]
      print(render(load(args.run), parts, source=args.run))
      return
    pages = {}
    for page in args.update:
      if not os.path.exists(page):
        raise ReportError(f"{page} does not exist")
      with open(page, encoding="utf-8") as f:
        text = f.read()
      pages[page] = (text, update(text, page))
    for page, (old, new) in pages.items():  # written only once every page's tables are made
      if new != old:
        with open(page, "w", encoding="utf-8") as f:
          f.write(new)
      print(f"{page}: {'regenerated' if new != old else 'unchanged'}")


if __name__ == "__main__":
  main()
