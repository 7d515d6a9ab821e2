"""Accuracy and macro-F1 of a labeler against the hand labels of CED val comments.

Reads experiments/labels/ced_val_hand.tsv (eid, mid, labels), looks the texts up
in the CED val file, labels them with RuleLabeler, prints one JSON object.

  python tools/labeler_quality.py [--data ../shared/data/ced/val.jsonl.gz]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mfjax.categories import DIMENSIONS  # noqa: E402
from mfjax.data import load_events  # noqa: E402
from mfjax.errors import one_line_errors  # noqa: E402
from mfjax.evaluation import RuleLabeler  # noqa: E402
from mfjax.evaluation.metrics import accuracy_macro_f1  # noqa: E402

HAND = os.path.join(REPO, "experiments", "labels", "ced_val_hand.tsv")


def read_hand_labels(path: str = HAND) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"))


def evaluate(data: str, labeler=None, hand_path: str = HAND) -> dict:
  rows = read_hand_labels(hand_path)
  wanted = {(r["eid"], r["mid"]) for r in rows}
  texts = {}
  for e in load_events(data):
    for a in e.actions:
      if (e.eid, a.id) in wanted:
        texts[(e.eid, a.id)] = a.text
  missing = wanted - set(texts)
  if missing:
    raise SystemExit(f"error: {len(missing)} labelled comments are not in {data}, e.g. {sorted(missing)[:3]}")
  labeler = labeler or RuleLabeler()
  pred = labeler.label([texts[(r["eid"], r["mid"])] for r in rows])
  out = {"n": len(rows), "labeler": type(labeler).__name__}
  for d, cats in DIMENSIONS.items():
    acc, f1 = accuracy_macro_f1([r[d] for r in rows], pred[d], cats)
    out[d] = {"accuracy": round(acc, 3), "macro_f1": round(f1, 3)}
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "ced", "val.jsonl.gz"))
  args = ap.parse_args(argv)
  with one_line_errors():  # no file there, or a malformed record (named)
    out = evaluate(args.data)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
