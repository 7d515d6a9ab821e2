"""Draw the CED comments to hand-label: a stratified sample of non-empty texts from train and val.

Pool: every action with a non-empty text in the train and val files (never holdout), minus the
comments already in experiments/labels/ced_val_hand.tsv. Two strata, so that rare classes get
enough rows: `cue` holds the texts that contain a doubt or question cue (CUES: rumour, fake, true?,
source, ...; a broad net, not a labeler), `rest` the others. Each stratum is drawn uniformly with a
seeded shuffle; a row's weight in the natural distribution of the pool is
pool[stratum] / drawn[stratum] (tools/labeler_quality.py reweights with it).

  python tools/draw_label_sample.py --texts /tmp/label_work/texts.tsv     # the draw, with texts
  python tools/draw_label_sample.py --check experiments/labels/ced_hand.tsv

The first writes the draw's ids, strata and texts (plus the first 80 characters of the event's
source post, as context for the labeller) to a work file outside the repository: texts are never
committed. --check verifies that a labels file holds exactly this draw (same seed and sizes) and
that its header's pool sizes are today's.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mfjax.data import load_events  # noqa: E402
from mfjax.errors import one_line_errors  # noqa: E402
from mfjax.evaluation.hand_labels import read_tsv  # noqa: E402
from mfjax.evaluation.labelers import CUES  # noqa: E402

DATA = os.path.join(REPO, "..", "shared", "data", "ced")
OLD_HAND = os.path.join(REPO, "experiments", "labels", "ced_val_hand.tsv")
SPLITS = ("train", "val")
SEED = 2027
SIZES = {"cue": 620, "rest": 700}


def stratum(text: str) -> str:
  return "cue" if CUES.search(text) else "rest"


def draw(data: str = DATA, seed: int = SEED, sizes: dict = SIZES) -> tuple[dict, list[dict]]:
  """(pool size per stratum, drawn rows {split, eid, mid, stratum, text, topic}), in draw order."""
  exclude = {(r["eid"], r["mid"]) for r in read_tsv(OLD_HAND)[1]}
  pools: dict[str, list[dict]] = {s: [] for s in sizes}
  for split in SPLITS:
    for e in load_events(os.path.join(data, f"{split}.jsonl.gz")):
      topic = re.sub(r"\s+", " ", e.topic or "")[:80]
      for a in e.actions:
        if a.text and (e.eid, a.id) not in exclude:
          pools[stratum(a.text)].append(dict(split=split, eid=e.eid, mid=a.id, text=a.text, topic=topic))
  rows = []
  for name, n in sizes.items():
    pool = sorted(pools[name], key=lambda r: (r["eid"], r["mid"]))
    random.Random(f"{seed}-{name}").shuffle(pool)
    rows += [dict(r, stratum=name) for r in pool[:n]]
  return {s: len(p) for s, p in pools.items()}, rows


def pool_header(pool: dict) -> str:
  return "# pool: " + " ".join(f"{s}={n}" for s, n in pool.items())


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=DATA, help="folder holding train.jsonl.gz and val.jsonl.gz")
  ap.add_argument("--texts", help="write the draw with its texts here (a work file, outside the repository)")
  ap.add_argument("--check", help="a labels file: verify it holds exactly this draw")
  args = ap.parse_args(argv)
  if not (args.texts or args.check):
    ap.error("give --texts and/or --check")
  with one_line_errors():
    pool, rows = draw(args.data)
    print(f"pool of non-empty texts: {pool}; drawn {SIZES} (seed {SEED})")
    if args.texts:
      if os.path.exists(args.texts):
        raise SystemExit(f"error: {args.texts} exists; remove it first (it may hold a labeller's work)")
      os.makedirs(os.path.dirname(os.path.abspath(args.texts)), exist_ok=True)
      with open(args.texts, "w", encoding="utf-8") as f:
        f.write(pool_header(pool) + "\n")
        f.write("row\tsplit\teid\tmid\tstratum\ttopic\ttext\n")
        for i, r in enumerate(rows):
          clean = {k: re.sub(r"[\t\r\n]+", " ", str(v)) for k, v in r.items()}
          f.write(f"{i}\t{clean['split']}\t{clean['eid']}\t{clean['mid']}\t{clean['stratum']}\t{clean['topic']}\t"
                  f"{clean['text']}\n")
      print(f"wrote {len(rows)} rows to {args.texts}")
    if args.check:
      header, labelled = read_tsv(args.check)
      want = [(r["split"], r["eid"], r["mid"], r["stratum"]) for r in rows]
      have = [(r["split"], r["eid"], r["mid"], r["stratum"]) for r in labelled]
      if have != want:
        raise SystemExit(f"error: {args.check} does not hold this draw ({len(have)} rows against {len(want)})")
      if pool_header(pool) not in header:
        raise SystemExit(f"error: {args.check} has no header line {pool_header(pool)!r}")
      print(f"{args.check}: the draw and its pool sizes match")


if __name__ == "__main__":
  main()
