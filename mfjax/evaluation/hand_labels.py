"""The project's hand labels of CED comments (`experiments/labels/`, written by following
docs/labeling.md), read with their texts from the CED data files.

  ced_hand.tsv         the stratified draw from train + val (tools/draw_label_sample.py): columns
                       split, eid, mid, stratum and the four dimensions; its header line
                       `# pool: cue=N rest=M` gives each stratum's size, so a row weighs
                       pool[stratum] / drawn[stratum] in the natural distribution of non-empty texts
  ced_val_hand.tsv     150 comments drawn uniformly from val (no stratum: every row weighs alike)
  ced_hand_second.tsv  a second, blind labelling of 100 rows of ced_hand.tsv (agreement)

Only ids and labels are stored; `load` finds the texts in `data_dir`'s train/val files by (eid, mid).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from mfjax.categories import DIMENSIONS
from mfjax.evaluation.labelers import category_ids

LABELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "experiments", "labels")
STRATIFIED = "ced_hand.tsv"
UNIFORM_VAL = "ced_val_hand.tsv"
SECOND = "ced_hand_second.tsv"
SPLITS = ("train", "val")


def read_tsv(path: str) -> tuple[list[str], list[dict]]:
  """(header comment lines, rows as dicts) of a labels file; errors name the file and line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no hand-labels file {path}")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  header = [line for line in lines if line.startswith("#")]
  body = [(i + 1, line) for i, line in enumerate(lines) if not line.startswith("#") and line.strip()]
  if not body:
    raise ValueError(f"{path}: no column header")
  names = body[0][1].split("\t")
  missing = [k for k in ("eid", "mid", *DIMENSIONS) if k not in names]
  if missing:
    raise ValueError(f"{path} line {body[0][0]}: missing columns {missing}")
  rows = []
  for lineno, line in body[1:]:
    values = line.split("\t")
    if len(values) != len(names):
      raise ValueError(f"{path} line {lineno}: expected {len(names)} tab-separated values, got {line!r}")
    row = dict(zip(names, values))
    empty = [k for k, v in row.items() if not v.strip()]
    if empty:
      raise ValueError(f"{path} line {lineno}: no value for {empty}")
    for d, cats in DIMENSIONS.items():
      if row[d] not in cats:
        raise ValueError(f"{path} line {lineno}: {d} {row[d]!r} is not one of {cats}")
    rows.append(row)
  return header, rows


def pool_sizes(header: list[str], path: str) -> dict:
  """{stratum: pool size} from the `# pool: a=N b=M` header line."""
  for line in header:
    if line.startswith("# pool:"):
      return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
  raise ValueError(f"{path}: no '# pool: stratum=N ...' header line (the strata's sizes weigh the rows)")


@dataclasses.dataclass
class HandLabels:
  """Hand-labelled texts: `texts` [N], `labels` {dimension: [N] category names}, `ids` the same as
  indices, `weights` [N] each row's weight in the natural distribution of its draw, `group` [N]
  which file (and stratum) the row came from, `keys` [N] (eid, mid)."""

  texts: list
  labels: dict
  weights: np.ndarray
  group: list
  keys: list

  @property
  def ids(self) -> dict:
    return {d: np.asarray(v) for d, v in category_ids(self.labels).items()}

  def subset(self, index) -> "HandLabels":
    index = np.asarray(index)
    return HandLabels([self.texts[i] for i in index], {d: [v[i] for i in index] for d, v in self.labels.items()},
                      self.weights[index], [self.group[i] for i in index], [self.keys[i] for i in index])


_TEXTS: dict = {}  # (data folder, keys) -> texts: the hand labels' texts are read once per process


def texts_of(data_dir: str, keys: set) -> dict:
  """{(eid, mid): text} of the wanted actions, read from `data_dir`'s train and val files."""
  cache_key = (os.path.abspath(data_dir), frozenset(keys))
  if cache_key not in _TEXTS:
    _TEXTS[cache_key] = _read_texts(data_dir, keys)
  return dict(_TEXTS[cache_key])


def _read_texts(data_dir: str, keys: set) -> dict:
  from mfjax.data import load_events  # a heavy import, only where texts are read
  out = {}
  for split in SPLITS:
    path = os.path.join(data_dir, f"{split}.jsonl.gz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"the hand labels' texts are read from {path}, which does not exist "
                              "(python tools/download_data.py --out <folder>)")
    for e in load_events(path):
      for a in e.actions:
        if (e.eid, a.id) in keys:
          out[e.eid, a.id] = a.text
  missing = keys - set(out)
  if missing:
    raise ValueError(f"{len(missing)} hand-labelled actions are not in {data_dir}, e.g. {sorted(missing)[:2]}")
  return out


def all_keys(labels_dir: str = LABELS_DIR) -> set:
  """The (eid, mid) of every hand-labelled action (one read of the data serves every file)."""
  return {(r["eid"], r["mid"]) for name in (STRATIFIED, UNIFORM_VAL) for r in read_tsv(os.path.join(labels_dir, name))[1]}


def load(data_dir: str, files=(STRATIFIED, UNIFORM_VAL), labels_dir: str = LABELS_DIR) -> HandLabels:
  """The hand labels of `files` with their texts (rows in file order, files in the order given)."""
  parsed = []
  for name in files:
    path = os.path.join(labels_dir, name)
    header, rows = read_tsv(path)
    if "stratum" in rows[0]:
      pool = pool_sizes(header, path)
      drawn = {s: sum(r["stratum"] == s for r in rows) for s in pool}
      weight = {s: pool[s] / drawn[s] for s in pool if drawn[s]}
      unknown = sorted({r["stratum"] for r in rows} - set(weight))
      if unknown:
        raise ValueError(f"{path}: strata {unknown} have no pool size in its header")
      groups = [(f"{name}:{r['stratum']}", weight[r["stratum"]]) for r in rows]
    else:
      groups = [(name, 1.0)] * len(rows)
    parsed.append((rows, groups))
  texts = texts_of(data_dir, all_keys(labels_dir))
  all_rows = [r for rows, _ in parsed for r in rows]
  all_groups = [g for _, groups in parsed for g in groups]
  return HandLabels(texts=[texts[r["eid"], r["mid"]] for r in all_rows],
                    labels={d: [r[d] for r in all_rows] for d in DIMENSIONS},
                    weights=np.asarray([w for _, w in all_groups], np.float64),
                    group=[g for g, _ in all_groups], keys=[(r["eid"], r["mid"]) for r in all_rows])
