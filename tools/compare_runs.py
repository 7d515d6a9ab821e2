"""Paired difference of two rollouts scored on the same events, from their runs' results.json: the
mean over events of KL(first) - KL(second), with the 95% percentile bootstrap interval over events
that `results.json["paired"]` uses within a run (`mfjax.evaluation.report.paired`).

Each side is RUN:METHOD, where METHOD is a method of that run, "<method> (drawn)" (an
attribute-conditioned method's drawn categories) or a reference simulator (`shrunk`, `global`, ...).
The two runs must have scored the same events the same way (events, steps, agents, warm-up, scored
steps and labeler are compared), e.g. two runs --trained-from different stages with the same data keys.

  python tools/compare_runs.py runs/ced_headwarm364:mf runs/ced_val364:mf
  python tools/compare_runs.py "runs/ced_headwarm364:mf (drawn)" "runs/ced_val364:mf (drawn)"
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mfjax.evaluation.report import paired_difference  # noqa: E402

SAME = ("events", "steps", "agents_per_step", "warmup", "scored_steps", "labeler")


def per_event(results: dict, name: str, where: str) -> np.ndarray:
  """[E] KL per event of a method, its drawn categories ("<method> (drawn)") or a reference simulator."""
  methods, sims = results.get("methods", {}), results.get("simulators", {}).get("methods", {})
  if name.endswith(" (drawn)") and "kl_per_event" in methods.get(name[:-len(" (drawn)")], {}).get("drawn", {}):
    return np.asarray(methods[name[:-len(" (drawn)")]]["drawn"]["kl_per_event"], np.float64)
  if name in methods:
    return np.asarray(methods[name]["kl_per_event"], np.float64)
  if name in sims:
    return np.asarray(sims[name]["kl_per_event"], np.float64)
  known = list(methods) + [f"{m} (drawn)" for m, r in methods.items() if "kl_per_event" in r.get("drawn", {})]
  known += list(sims)
  raise ValueError(f"{where}: no {name!r}; it has {known}")


def compare(first: str, second: str, seed: int = 0) -> dict:
  """{"diff", "ci95", "events", "first", "second"} for two RUN:METHOD specs."""
  sides = []
  for spec in (first, second):
    run, sep, name = spec.partition(":")
    if not sep or not name:
      raise ValueError(f"{spec!r}: give RUN:METHOD, e.g. runs/ced_weibo:mf")
    path = os.path.join(run, "results.json")
    if not os.path.exists(path):
      raise ValueError(f"{path} not found: {run} is not an evaluated run")
    with open(path) as f:
      results = json.load(f)
    sides.append((path, results, per_event(results, name, path)))
  (pa, ra, a), (pb, rb, b) = sides
  differ = [k for k in SAME if ra.get("data", {}).get(k) != rb.get("data", {}).get(k)]
  if differ or a.shape != b.shape:
    raise ValueError(f"{pa} and {pb} did not score the same events alike (data keys {differ or ['events']} differ)")
  return {"first": first, "second": second, **paired_difference(a, b, seed),
          "kl_first": float(a[np.isfinite(a)].mean()), "kl_second": float(b[np.isfinite(b)].mean())}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("first", help="RUN:METHOD")
  ap.add_argument("second", help="RUN:METHOD")
  a = ap.parse_args(argv)
  try:
    r = compare(a.first, a.second)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"{r['first']} (KL {r['kl_first']:.4f}) - {r['second']} (KL {r['kl_second']:.4f}), means over the "
        f"{r['events']} events: {r['diff']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]")


if __name__ == "__main__":
  main()
