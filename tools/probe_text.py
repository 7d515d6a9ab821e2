"""What a run's sampled actions look like to its labeler, beside the real ones: why a method's category
rates are off where they are.

For the real actions of the run's eval events and each method's rollouts (every seed), over the
scored steps (after the warm-up), it prints:

  share          the share of actions the labeler reads as a share
  length         the comments' median length in characters
  by length      for comments of 1-5, 6-11, 12-23 and 24+ characters: their share of the comments and
                 each comment category's rate among them (negative, neutral, positive, doubt, question,
                 promotion): are a method's rates off because it writes shorter or longer comments, or
                 at the same length?
  entropy        the labeler's mean entropy (nats) over the comments of its belief, sentiment and intent
                 probabilities (a labeler with probabilities: the trained one): text the labeler reads
                 less surely than the real comments is blurred, and a blurred comment falls towards the
                 classes the labeler gives by default

  python tools/probe_text.py --run runs/ced_channel64 --json runs/ced_channel64/probe_text.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

from mfjax.categories import DIMENSIONS  # noqa: E402
from mfjax.errors import one_line_errors  # noqa: E402
from mfjax.evaluation.report import CachedLabeler, decode_actions, label_ids, make_labeler  # noqa: E402
from mfjax.pipeline.command import open_run  # noqa: E402
from mfjax.pipeline.data import split_events, step_texts, trained_tokenizer  # noqa: E402
from mfjax.workdir import check_rollouts, load_rollout  # noqa: E402

BANDS = ((1, 6), (6, 12), (12, 24), (24, None))  # comment lengths in characters, [lo, hi)
RATES = (("sentiment", "negative"), ("sentiment", "neutral"), ("sentiment", "positive"), ("belief", "doubt"),
         ("intent", "question"), ("intent", "promotion"))
COMMENT_DIMENSIONS = ("belief", "sentiment", "intent")


def band_name(lo: int, hi) -> str:
  return f"{lo}+" if hi is None else f"{lo}-{hi - 1}"


def profile(texts: list, ids: dict, labeler=None) -> dict:
  """The summary above of actions `texts` with their category ids {dimension: [N]} (DIMENSIONS' order);
  `labeler`: a labeler whose `models[dimension].predict_proba` gives the comments' entropy (else none)."""
  texts = ["" if t is None else str(t) for t in texts]
  comment = np.asarray(ids["behaviour"]) == DIMENSIONS["behaviour"].index("comment")
  length = np.array([len(t) for t in texts], np.int64)
  out = {"actions": len(texts), "share": float(1 - comment.mean()) if texts else float("nan"),
         "comments": int(comment.sum()),
         "length_median": float(np.median(length[comment])) if comment.any() else float("nan"), "bands": {}}
  for lo, hi in BANDS:
    m = comment & (length >= lo) & (length < (hi if hi is not None else np.iinfo(np.int64).max))
    row = {"of_comments": float(m.sum() / max(comment.sum(), 1)), "n": int(m.sum())}
    for d, c in RATES:
      row[c] = float((np.asarray(ids[d])[m] == DIMENSIONS[d].index(c)).mean()) if m.any() else float("nan")
    out["bands"][band_name(lo, hi)] = row
  models = getattr(labeler, "models", None)
  if models is not None and comment.any():
    chosen = [texts[i] for i in np.flatnonzero(comment)]
    out["entropy"] = {}
    for d in COMMENT_DIMENSIONS:
      p = np.asarray(models[d].predict_proba(chosen), np.float64)
      out["entropy"][d] = float(-(p * np.log(np.clip(p, 1e-300, 1.0))).sum(1).mean())
  return out


def probe(run: str) -> dict:
  _, plan, stages = open_run(run)
  rollouts = [(r.tag, r.method, r.params) for r in plan.plain]
  check_rollouts(run, rollouts, plan.sampling.seeds)
  _, _, test, _, _ = split_events(plan.data)
  b = plan.data.eval_batch
  texts, mask = step_texts(test, b.steps, b.agents_per_step)
  scored = mask & (np.arange(mask.shape[1]) >= plan.sampling.warmup)[None, :, None]
  labeler = CachedLabeler(make_labeler(plan.data.labeler, plan.data.label_data))
  tok = trained_tokenizer(plan, stages)
  flat = np.array([t for row in texts for t in row], object).reshape(mask.shape)
  real = label_ids(labeler, list(flat.reshape(-1)), mask.shape, keep=True)
  inner = labeler.labeler
  out = {"run": run, "labeler": getattr(inner, "version", plan.data.labeler), "events": int(mask.shape[0]),
         "seeds": plan.sampling.seeds, "profiles": {"real": profile(list(flat[scored]), {d: v[scored] for d, v in
                                                                                   real.items()}, inner)}}
  for tag, _, _ in rollouts:
    sampled, ids = [], {d: [] for d in DIMENSIONS}
    for seed in range(plan.sampling.seeds):
      r = load_rollout(run, tag, seed)
      tx = np.array(decode_actions(tok, r["tokens"], r["mask"]), object).reshape(mask.shape)
      got = label_ids(labeler, list(tx.reshape(-1)), mask.shape)
      sampled += list(tx[scored])
      for d in DIMENSIONS:
        ids[d].append(got[d][scored])
    out["profiles"][tag] = profile(sampled, {d: np.concatenate(v) for d, v in ids.items()}, inner)
  return out


def table(result: dict) -> str:
  names = list(result["profiles"])
  P = result["profiles"]
  lines = [f"{result['events']} eval events of {result['run']}, scored steps, {result['seeds']} seeds; labeler "
           f"{result['labeler']}", "", "| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names),
           "| share | " + " | ".join(f"{P[n]['share']:.3f}" for n in names) + " |",
           "| comments' median length | " + " | ".join(f"{P[n]['length_median']:.0f}" for n in names) + " |"]
  for band in P["real"]["bands"]:
    lines.append(f"| comments of {band} characters | " + " | ".join(
        f"{P[n]['bands'][band]['of_comments']:.3f}" for n in names) + " |")
    for _, c in RATES:
      lines.append(f"| ... {c} | " + " | ".join(f"{P[n]['bands'][band][c]:.3f}" for n in names) + " |")
  if "entropy" in P["real"]:
    for d in COMMENT_DIMENSIONS:
      lines.append(f"| labeler's entropy, {d} | " + " | ".join(f"{P[n]['entropy'][d]:.3f}" for n in names) + " |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--run", required=True, metavar="DIR", help="a run folder with rollouts")
  ap.add_argument("--json", metavar="PATH", help="also write the result as JSON here (never over an existing file)")
  a = ap.parse_args(argv)
  if a.json and os.path.exists(a.json):
    ap.error(f"--json: {a.json} exists; give a new path")
  with one_line_errors():
    result = probe(a.run)
  print(table(result))
  if a.json:
    with open(a.json, "x") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
