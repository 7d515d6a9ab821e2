"""Score a finished run's rollouts again under another labeler, raw and corrected, without
touching the run: does the ranking of methods depend on the labeler?

  python tools/rescore.py --run runs/ced_weibo --labeler rules [--no-corrected] [--out FILE]

Reads the run's config.json, its tokenizer and its saved rollouts (`python -m mfjax run` made
them), labels the real and simulated actions with `--labeler` (rules | trained), scores them
as `evaluate` does (eval.corrected on by default: also the distributions corrected for that
labeler's errors; CED runs only) and writes the results to FILE (default
RUN/rescored/<labeler>.json; an existing file is never overwritten) and prints the table. The
run's own results.json is left as it is. `python tools/report_table.py FILE` renders it.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mfjax.errors import one_line_errors  # noqa: E402
from mfjax.evaluation import report  # noqa: E402
from mfjax.pipeline.command import eval_request, open_run  # noqa: E402
from mfjax.pipeline.data import prepare  # noqa: E402
from mfjax.runs import write_json  # noqa: E402
from mfjax.workdir import check_rollouts  # noqa: E402


def rescore(run: str, labeler: str, corrected: bool) -> dict:
  _, plan, stages = open_run(run, **{"eval.labeler": labeler, "eval.corrected": corrected})
  check_rollouts(run, [(r.tag, r.method, r.params) for r in plan.plain], plan.sampling.seeds)
  data = prepare(plan, stages)  # the stages' tokenizer; the eval events' texts and the references
  return report.evaluate(eval_request(plan, run, stages, data)).results


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--run", required=True, metavar="DIR", help="a finished run folder (config.json, rollouts/)")
  ap.add_argument("--labeler", required=True, choices=report.LABELERS)
  ap.add_argument("--no-corrected", dest="corrected", action="store_false",
                  help="score the raw distributions only (the correction needs a CED run)")
  ap.add_argument("--out", metavar="FILE", help="where to write the results (default RUN/rescored/<labeler>.json)")
  a = ap.parse_args(argv)
  out = a.out or os.path.join(a.run, "rescored", f"{a.labeler}.json")
  if os.path.exists(out):
    ap.error(f"--out: {out} exists; remove it or give another path (nothing is overwritten)")
  with one_line_errors():
    results = rescore(a.run, a.labeler, a.corrected)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  write_json(out, results)
  print(report.table(results))
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
