"""How much population information can buy on a pipeline experiment's evaluation events.

Scores, as the pipeline's table does (KL(real || simulated) per event and rollout step, mean
over the four dimensions, the simulated side being as many sampled agents as the real step
has), simulators that draw each step's agents from fixed distributions (`mfjax.evaluation.bounds`):

  global    the training events' proportions at each step index (knows nothing of the event)
  label     the same from the training events with the event's label (rumor / non-rumor)
  warmup    the event's own warm-up steps, pooled (buildable from the warm-up alone)
  shrunk    the warm-up plus k agents' worth of `global`, k fitted on the training events
  agents    a per-agent logistic regression from shrunk's forecast, the step and the agent's state
            as numbers (depth, hours since the post, activity elsewhere), fitted on the training events'
            agents: what a population head that reads the agent's state reaches with no LM
  words     (--words N) agents whose agents also read their event's warm-up words: the warm-up actions'
            character n-grams (TF-IDF, reduced to N numbers by an SVD fitted on the training events)
  previous  the event's real previous step (teacher-forced history)
  event     the event's own scored steps, pooled (an oracle: its static distribution)
  step      the real step itself, resampled (an oracle: sampling noise alone)
  world     synthetic data only: the world's own equations run free from the real warm-up
            (an oracle of the world's rules: the perfect simulator)

The events, steps, labels and warm-up are the experiment's (its config and --set overrides),
`global` and `label` come from its training events only. Mean ± std over --draws.
With --run DIR, the methods of that run's results.json are printed beside the simulators
(the run must score the same events, steps and warm-up).

  python tools/population_bounds.py --config experiments/ced_weibo.py --set data.path=../shared/data/ced
  python tools/population_bounds.py --config experiments/quickstart.py --run runs/quickstart
  # more of the val split than a run scores (val is the selection split; holdout only for a final report):
  python tools/population_bounds.py --config experiments/ced_weibo.py --set data.path=../shared/data/ced \\
      --set data.eval_events=364 --set data.val_events=364 --words 32
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from mfjax import configs, pipeline, pipeline_config  # noqa: E402
from mfjax.data import UidActivity, step_numbers, step_texts  # noqa: E402
from mfjax.errors import one_line_errors, positive_int  # noqa: E402
from mfjax.evaluation import bounds  # noqa: E402
from mfjax.evaluation.report import CachedLabeler, label_ids, make_labeler, paired_difference, world_runs  # noqa: E402
from mfjax.runs import RunFolderError, read_json  # noqa: E402
from mfjax.workdir import differing_keys  # noqa: E402
from mfjax.parallel import distributed  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                              "quickstart.py")


def labelled(events, cfg, labeler):
  """Category ids {dimension: [E, T, B]} and the agent mask of events, laid out as the pipeline does."""
  texts, mask = step_texts(events, cfg.data.steps, cfg.data.agents_per_step)
  return label_ids(labeler, [t for row in texts for t in row], mask.shape, keep=True), mask


# The config keys that decide which events a run scores and how: a --run must agree on them
# (data.path may differ: the same files may sit elsewhere).
SCORED_KEYS = ("data.", "world.", "rollout.warmup", "eval.")


def run_methods(run_dir: str, cfg, data: dict) -> dict:
  """The methods of a run's results.json, refused unless it scored the same events, steps and warm-up."""
  path = os.path.join(run_dir, "results.json")
  if not os.path.exists(path):
    raise SystemExit(f"--run: {path} not found (run `python -m mfjax run` or `evaluate` there first)")
  if not os.path.exists(os.path.join(run_dir, "config.json")):
    raise SystemExit(f"--run: {run_dir} has results.json but no config.json: not a run folder of `python -m mfjax`")
  try:
    saved, results = read_json(os.path.join(run_dir, "config.json")), read_json(path)
  except RunFolderError as e:
    raise SystemExit(f"--run: {e}") from None
  diff = [k for k in differing_keys(saved, json.loads(cfg.to_json()))
          if k.startswith(SCORED_KEYS) and k != "data.path"]
  if diff:
    raise SystemExit(f"--run: {run_dir} scored other events or scored them otherwise: its config differs in {diff}; "
                     "give the config and --set overrides that run used")
  for key, value in data.items():
    if results.get("data", {}).get(key) != value:
      raise SystemExit(f"--run: {path} scored data.{key}={results.get('data', {}).get(key)!r}, these bounds "
                       f"{value!r}: give the config and --set overrides that run used")
  return results["methods"]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file[:arg] (default: the quickstart)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
  ap.add_argument("--draws", type=positive_int, default=3,
                  help="sampling draws per simulator (default: %(default)s)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--words", type=int, default=0, metavar="N",
                  help="add the `words` forecaster, reading the warm-up's words as N numbers (CED; 0: off)")
  ap.add_argument("--run", metavar="DIR", help="a run folder whose methods to print beside the simulators")
  ap.add_argument("--json", metavar="PATH", help="also write the result as JSON here (never over an existing file)")
  a = ap.parse_args(argv)
  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts
  if a.json and os.path.exists(a.json):
    ap.error(f"--json: {a.json} exists; give a new path")
  if a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):  # found now, not after the labelling
    ap.error(f"--json: the folder of {a.json} does not exist")
  try:
    cfg = configs.load_config(a.config, a.set)
    pipeline_config.check_config(cfg)
  except configs.ConfigError as e:
    ap.error(str(e))
  if a.words < 0 or (a.words and cfg.data.source != "ced"):
    ap.error(f"--words {a.words}: the numbers the warm-up's words become (0: off), on CED events only (the "
             "synthetic world's texts are its labels)")
  t0 = time.time()
  with one_line_errors():  # data.path: no files there, or a malformed record; a labeler's model folder
    data = pipeline_config.plan(cfg).data
    train, _, scored, truth, split = pipeline.split_events(data)
    labeler = CachedLabeler(make_labeler(data.labeler, data.label_data))
    real_ids, real_mask = labelled(scored, cfg, labeler)
    train_ids, train_mask = labelled(train, cfg, labeler)
    activity = UidActivity.fit(train) if data.source == "ced" else None  # as the pipeline's CED states count
    T, B = cfg.data.steps, cfg.data.agents_per_step
    numbers = (step_numbers(scored, T, B, activity), step_numbers(train, T, B, activity))
    words = None
    if a.words:  # (scored, training) events' warm-up words as numbers
      words = bounds.warmup_words(step_texts(train, T, B)[0], step_texts(scored, T, B)[0], cfg.rollout.warmup * B,
                                  a.words, a.seed)
  warmup = cfg.rollout.warmup
  print(f"[bounds] {len(scored)} {split} events x {cfg.data.steps} steps x {cfg.data.agents_per_step} agents, "
        f"warm-up {warmup}; {len(train)} training events; labelled in {time.time() - t0:.1f} s", file=sys.stderr)
  result = bounds.bounds(real_ids, real_mask, [e.label for e in scored], train_ids, train_mask,
                         [e.label for e in train], warmup=warmup, draws=a.draws, seed=a.seed,
                         simulated=world_runs(truth, warmup, a.draws, a.seed), numbers=numbers, words=words)
  data = {"events": len(scored), "steps": cfg.data.steps, "agents_per_step": cfg.data.agents_per_step,
          "warmup": warmup}
  result = {"config": a.config, "overrides": a.set, "split": split, "train_events": len(train),
            "labeler": cfg.eval.labeler, **data, **result}
  print(bounds.table(result))
  if words is not None:  # what the words add, paired over the same events and draws
    per = lambda n: np.asarray([np.nan if x is None else x for x in result["methods"][n]["kl_per_event"]])
    result["paired"] = {"words": {ref: paired_difference(per("words"), per(ref), a.seed)
                                  for ref in ("agents", "shrunk")}}
    for ref, r in result["paired"]["words"].items():
      print(f"words - {ref}, means over the {r['events']} events: {r['diff']:+.4f} "
            f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]")
  if a.run:
    result["run"] = {"dir": a.run, "methods": {m: {k: r[k] for k in ("kl_mean", "kl_mean_std", "kl")}
                                               for m, r in run_methods(a.run, cfg, data).items()}}
    print(f"\nmethods of {a.run}:")
    print(bounds.table({"methods": result["run"]["methods"]}, first="method"))
  if a.json:
    with open(a.json, "x") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
