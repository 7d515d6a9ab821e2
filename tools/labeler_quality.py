"""How good the labelers are, against the project's hand labels (docs/labeling.md).

  python tools/labeler_quality.py [--data ../shared/data/ced] [--out runs/labeler_quality]

Prints, and writes to OUT/results.json (docs/labeling.md's tables are made from it by
`python tools/report_table.py --update docs/labeling.md`):
- `labeler_quality.cross_validated`: on the stratified hand labels (experiments/labels/ced_hand.tsv,
  1,320 train/val comments), each labeler's accuracy, balanced accuracy and macro-F1 per dimension,
  weighted to the natural distribution of non-empty texts, with 95% bootstrap intervals over rows.
  RuleLabeler as it is; TrainedLabeler 5-fold cross-validated (a row is scored by a model fitted on
  the other folds plus the uniform val labels; its sentiment model with the `EmoticonSentiment` learned
  from the train file's unlabelled comments). `trained_natural`: TrainedLabeler fitted with each
  row weighted as in the natural distribution (compared only; not a labeler the pipeline offers).
- `labeler_quality.uniform_val`: the same on the 150 uniformly drawn val comments labelled before
  the guide (experiments/labels/ced_val_hand.tsv), the trained labeler fitted on the stratified
  labels alone: a check on other labellers' labels, unweighted.
- `labeler_agreement`: Cohen's kappa (scikit-learn) and raw agreement per dimension between two
  blind labellings (ced_hand_second.tsv: 100 rows of the stratified draw; ced_val_hand_second.tsv:
  the 150 val comments): the ceiling a labeler can be held to.
- `labeler_quality.confusion`: each labeler's weighted cross-validated P(predicted | true), which
  corrects a run's distributions (`eval.corrected`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mfjax.categories import DIMENSIONS  # noqa: E402
from mfjax.errors import one_line_errors  # noqa: E402
from mfjax.evaluation import hand_labels, quality  # noqa: E402
from mfjax.evaluation.labelers import RuleLabeler  # noqa: E402
from mfjax.runs import write_json  # noqa: E402

DATA = os.path.join(REPO, "..", "shared", "data", "ced")
PAIRS = (("ced_hand", hand_labels.STRATIFIED, hand_labels.SECOND),
         ("ced_val_hand", hand_labels.UNIFORM_VAL, "ced_val_hand_second.tsv"))


def agreement(labels_dir: str = hand_labels.LABELS_DIR) -> dict:
  """{file: {"rows", dimension: {"kappa", "agreement"}}} of each pair of blind labellings."""
  from sklearn.metrics import cohen_kappa_score
  out = {}
  for name, first, second in PAIRS:
    a = {(r["eid"], r["mid"]): r for r in hand_labels.read_tsv(os.path.join(labels_dir, first))[1]}
    b = hand_labels.read_tsv(os.path.join(labels_dir, second))[1]
    missing = [(r["eid"], r["mid"]) for r in b if (r["eid"], r["mid"]) not in a]
    if missing:
      raise ValueError(f"{second}: {len(missing)} rows are not in {first}, e.g. {missing[0]}")
    out[name] = {"rows": len(b)}
    for d in DIMENSIONS:
      x, y = [a[r["eid"], r["mid"]][d] for r in b], [r[d] for r in b]
      out[name][d] = {"kappa": round(float(cohen_kappa_score(x, y)), 4),
                      "agreement": round(sum(u == v for u, v in zip(x, y)) / len(b), 4)}
  return out


def evaluate(data: str) -> dict:
  hand = hand_labels.load(data, (hand_labels.STRATIFIED,))
  extra = hand_labels.load(data, (hand_labels.UNIFORM_VAL,))
  out = {"cross_validated": {}, "uniform_val": {}, "confusion": {},
         "rows": {"stratified": len(hand.texts), "uniform_val": len(extra.texts)}, "folds": quality.FOLDS}
  from mfjax.evaluation.trained_labeler import EmoticonSentiment, TrainedLabeler
  t0 = time.time()
  emoticons = EmoticonSentiment.from_data(data)  # learned without hand labels: one serves every fold
  print(f"[labelers] the emoticon sentiment model learned in {time.time() - t0:.0f} s", file=sys.stderr)
  for name in quality.COMPARED:
    t0 = time.time()
    pred = quality.cross_validated(hand, extra, name, emoticons=emoticons)
    out["cross_validated"][name] = quality.scores(hand.labels, pred, hand.weights)
    out["confusion"][name] = {d: m.round(4).tolist() for d, m in quality.confusions(hand.labels, pred,
                                                                                      hand.weights).items()}
    print(f"[labelers] {name}: cross-validated in {time.time() - t0:.0f} s", file=sys.stderr)
  trained = TrainedLabeler.fit(hand.texts, hand.labels, emoticons=emoticons)
  for name, labeler in (("rules", RuleLabeler()), ("trained", trained)):
    out["uniform_val"][name] = quality.scores(extra.labels, labeler.label(extra.texts), extra.weights)
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=DATA, help="the CED folder whose train/val files hold the labelled texts")
  ap.add_argument("--out", default=os.path.join("runs", "labeler_quality"), help="folder for results.json")
  args = ap.parse_args(argv)
  with one_line_errors():  # no data there, a malformed labels file (named with its line)
    results = {"labeler_quality": evaluate(args.data), "labeler_agreement": agreement()}
  os.makedirs(args.out, exist_ok=True)
  write_json(os.path.join(args.out, "results.json"), results)
  sys.path.insert(0, os.path.join(REPO, "tools"))
  import report_table
  print(report_table.render(results, ["labelers", "agreement"]))
  print(f"\nwrote {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
  main()
