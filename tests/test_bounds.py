"""The population bounds (`mfjax.evaluation.bounds`, `tools/population_bounds.py`): the step
layout, each simulator's distribution by hand, the score against the pipeline's own metric,
the pseudo-count fit, and the tool on the synthetic world and on real CED events."""

import gzip
import json
import os
import sys

import numpy as np
import pytest

from mfjax import configs
from mfjax.categories import DIMENSIONS
from mfjax.data import Action, Event, step_texts
from mfjax.evaluation import bounds, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import population_bounds  # noqa: E402


def _event(eid, texts, label=None):
  return Event(eid, "topic", 0.0, label, tuple(Action(f"{eid}{i}", f"u{i}", float(i), t) for i, t in enumerate(texts)))


def test_step_texts_lays_out_the_first_steps_times_agents_actions():
  events = [_event("a", ["x", "", "y"]), _event("b", [str(i) for i in range(9)])]
  texts, mask = step_texts(events, steps=2, agents=3)
  assert texts == [["x", "", "y", "", "", ""], ["0", "1", "2", "3", "4", "5"]]
  np.testing.assert_array_equal(mask, [[[1, 1, 1], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]])
  assert mask.dtype == bool and mask.shape == (2, 2, 3)


def test_counts_per_step():
  ids = np.array([[[0, 2, 2, 1], [1, 1, 0, 0]]])
  mask = np.array([[[1, 1, 1, 0], [1, 1, 0, 0]]], bool)
  np.testing.assert_array_equal(bounds.counts(ids, mask, 3), [[[1, 0, 2], [0, 2, 0]]])


def test_predictors_by_hand():
  # 2 scored events x 3 steps x 2 categories (counts), warm-up 1; 3 training events
  real = np.array([[[3, 1], [0, 4], [2, 2]],
                   [[0, 2], [1, 1], [0, 0]]], float)  # event 1 has no agents at step 2
  train = np.array([[[1, 1], [2, 0], [0, 2]],
                    [[0, 2], [0, 2], [1, 1]],
                    [[2, 0], [2, 0], [2, 0]]], float)
  scored = np.array([[0, 1, 1], [0, 1, 0]], bool)
  qs, k = bounds.predictors(real, train, ["r", "n"], ["r", "n", "r"], 1, scored)
  per_step = np.array([[3, 3], [4, 2], [3, 3]]) / 6
  np.testing.assert_allclose(qs["global"], np.broadcast_to(per_step, (2, 3, 2)))
  r = np.array([[3, 1], [4, 0], [2, 2]]) / 4
  n = np.array([[0, 2], [0, 2], [1, 1]]) / 2
  np.testing.assert_allclose(qs["label"], np.stack([r, n]))
  np.testing.assert_allclose(qs["warmup"], [[[.75, .25]] * 3, [[0, 1]] * 3])
  np.testing.assert_allclose(qs["previous"], [[per_step[0], [.75, .25], [0, 1]], [per_step[0], [0, 1], [.5, .5]]])
  np.testing.assert_allclose(qs["event"], [[[2 / 8, 6 / 8]] * 3, [[.5, .5]] * 3])
  # a step without agents falls back to the training events' proportions at that step
  np.testing.assert_allclose(qs["step"], [[[.75, .25], [0, 1], [.5, .5]], [[0, 1], [.5, .5], per_step[2]]])
  assert k in bounds.PSEUDOCOUNTS
  warm = real[:, :1].sum(1, keepdims=True)
  np.testing.assert_allclose(qs["shrunk"], (warm + k * per_step[None]) / (warm.sum(-1, keepdims=True) + k))
  for q in qs.values():
    np.testing.assert_allclose(q.sum(-1), 1.0)
  # global and label read the training events only
  qs2, _ = bounds.predictors(real[::-1].copy(), train, ["r", "n"], ["r", "n", "r"], 1, scored)
  np.testing.assert_array_equal(qs2["global"], qs["global"])
  np.testing.assert_array_equal(qs2["label"], qs["label"])
  # a label no training event has gets the global proportions
  qs3, _ = bounds.predictors(real, train, ["x", "n"], ["r", "n", "r"], 1, scored)
  np.testing.assert_allclose(qs3["label"][0], per_step)


def test_pseudocount_follows_how_much_the_warmup_tells():
  rng = np.random.default_rng(0)
  N, T, C = 400, 6, 3
  # each event keeps its own distribution over all its steps: the warm-up tells almost all, k stays small
  # (a few pseudo-agents still pay for the categories 400 warm-up agents of a skewed event miss)
  p = rng.dirichlet(np.ones(C) * 0.3, N)
  steady = np.stack([rng.multinomial(200, p) for _ in range(T)], 1).astype(float)
  assert bounds.fit_pseudocount(steady, bounds._normalise(steady.sum(0), 1 / C), 2) <= 1
  # the warm-up is drawn apart from the later steps, which all share one distribution: the largest k wins
  noise = np.concatenate([np.stack([rng.multinomial(16, p) for _ in range(2)], 1),
                          rng.multinomial(16, [.2, .3, .5], (N, T - 2))], 1).astype(float)
  assert bounds.fit_pseudocount(noise, bounds._normalise(noise.sum(0), 1 / C), 2) == bounds.PSEUDOCOUNTS[-1]


def test_sampled_kls_are_the_pipelines_kl_of_the_sampled_agents():
  rng = np.random.default_rng(1)
  E, T, B, C = 5, 4, 16, 3
  real_ids = rng.integers(0, C, (E, T, B))
  mask = rng.random((E, T, B)) < 0.8
  mask[0, 3] = False  # a step without agents, left out by the weights
  real = bounds.counts(real_ids, mask, C)
  q = rng.dirichlet(np.ones(C), (E, T))
  weights = (np.arange(T)[None] >= 1) & mask.any(-1)
  got = (bounds.sampled_kls(real, q, np.random.default_rng(7)) * weights).sum() / weights.sum()
  # the same draws as agents' category ids, scored by the pipeline's metric
  sim = np.random.default_rng(7).multinomial(real.sum(-1).astype(np.int64), q)
  sim_ids = np.zeros((E, T, B), np.int64)
  for e in range(E):
    for t in range(T):
      valid = np.flatnonzero(mask[e, t])
      sim_ids[e, t, valid] = np.repeat(np.arange(C), sim[e, t])
  want = metrics.compare({"belief": real_ids % 2, "intent": real_ids}, {"belief": sim_ids % 2, "intent": sim_ids},
                         mask, mask, step_weights=weights)["kl"]["intent"]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # the same agents given as ids (a simulator that runs) score the same through `kls`
  np.testing.assert_allclose((bounds.kls(real, bounds.counts(sim_ids, mask, C)) * weights).sum() / weights.sum(),
                             want, rtol=1e-6)
  # a simulator that knows every step's one category exactly scores the smoothing's 0
  one = np.eye(C)[real_ids[..., 0]] * real.sum(-1, keepdims=True)
  kls = bounds.sampled_kls(one, one + (one.sum(-1, keepdims=True) == 0), rng)
  assert (kls * weights).sum() / weights.sum() == pytest.approx(0.0, abs=1e-7)


def _ids_of(counts_ExTxC):
  """Category ids [E, T, max agents] and mask of counts."""
  E, T, C = counts_ExTxC.shape
  n = counts_ExTxC.sum(-1).astype(int)
  ids, mask = np.zeros((E, T, n.max()), np.int64), np.zeros((E, T, n.max()), bool)
  for e in range(E):
    for t in range(T):
      ids[e, t, :n[e, t]] = np.repeat(np.arange(C), counts_ExTxC[e, t].astype(int))
      mask[e, t, :n[e, t]] = True
  return ids, mask


def test_bounds_order_the_oracles_on_a_world_whose_events_differ():
  # every event keeps one distribution over its steps, far from the others': knowing the event is worth a lot
  rng = np.random.default_rng(2)
  p = rng.dirichlet(np.ones(2) * 0.2, 60)
  c = np.stack([rng.multinomial(16, p) for _ in range(6)], 1).astype(float)
  ids, mask = _ids_of(c)
  real = {d: np.minimum(ids, len(cats) - 1) for d, cats in DIMENSIONS.items()}
  out = bounds.bounds({d: v[:20] for d, v in real.items()}, mask[:20], ["a"] * 20,
                      {d: v[20:] for d, v in real.items()}, mask[20:], ["a"] * 40, warmup=2, draws=2)
  kl = {name: r["kl_mean"] for name, r in out["methods"].items()}
  assert set(kl) == set(bounds.PREDICTORS) and out["scored_steps"] == 20 * 4
  assert kl["step"] < kl["event"] < kl["global"] and kl["shrunk"] < kl["global"] / 2
  assert out["shrunk_pseudocounts"]["belief"] <= 1
  for r in out["methods"].values():  # per step: unscored steps None, and the events' mean weighs back to kl_mean
    assert r["kl_per_step"][:2] == [None, None]
    np.testing.assert_allclose(np.mean(r["kl_per_step"][2:]), r["kl_mean"], rtol=1e-6)
  with pytest.raises(ValueError, match="warm-up 6 covers all 6 steps"):
    bounds.bounds(real, mask, ["a"] * 60, real, mask, ["a"] * 60, warmup=6)
  # a simulator that runs (as the synthetic world's `run_free`), given as ids per draw: one that reproduces the
  # real steps scores the smoothing's 0, one that swaps the events around scores like knowing nothing
  scored = {d: v[:20] for d, v in real.items()}
  swapped = {d: np.roll(v, 1, axis=0) for d, v in scored.items()}
  runs = {"copy": [scored, scored], "swapped": [swapped, swapped]}
  sims = bounds.bounds(scored, mask[:20], ["a"] * 20, {d: v[20:] for d, v in real.items()}, mask[20:], ["a"] * 40,
                       warmup=2, draws=2, simulated=runs)["methods"]
  assert list(sims) == [*bounds.PREDICTORS, "copy", "swapped"]
  assert sims["copy"]["kl_mean"] == pytest.approx(0.0, abs=1e-7) and sims["copy"]["kl_mean_std"] == 0
  assert sims["swapped"]["kl_mean"] > kl["event"] and sims["step"]["kl_mean"] == kl["step"]  # the others unmoved
  with pytest.raises(ValueError, match="has 1 runs for 2 draws"):
    bounds.bounds(scored, mask[:20], ["a"] * 20, scored, mask[:20], ["a"] * 20, warmup=2, draws=2,
                  simulated={"copy": [scored]})


def test_the_agents_forecaster_reads_who_acts_where_the_warm_up_cannot():
  """`agents`: where each agent's category follows its state (a number) and the steps mix the states
  differently, the per-agent forecaster knows each step's population from its agents and beats `shrunk`,
  which knows only the warm-up; its q is a distribution, `shrunk`'s before the warm-up's end."""
  rng = np.random.default_rng(4)
  E, T, B = 80, 6, 16
  x = (rng.uniform(size=(E, T, B)) < rng.uniform(0.05, 0.95, (E, T, 1))).astype(float)  # a state per agent
  ids = np.where(rng.uniform(size=(E, T, B)) < 0.9, x, 1 - x).astype(int)  # its category follows the state
  mask = np.ones((E, T, B), bool)
  numbers = np.stack([x, rng.normal(size=x.shape)], -1)  # the state and a number that tells nothing
  real = {d: np.minimum(ids, len(cats) - 1) for d, cats in DIMENSIONS.items()}
  split = lambda v: (v[:30], v[30:])
  out = bounds.bounds(*(lambda a, b: (a, mask[:30], ["a"] * 30, b, mask[30:], ["a"] * 50))(
      {d: v[:30] for d, v in real.items()}, {d: v[30:] for d, v in real.items()}),
      warmup=2, draws=2, numbers=split(numbers))["methods"]
  assert list(out) == [*bounds.PREDICTORS, "agents"]
  assert out["agents"]["kl_mean"] < 0.5 * out["shrunk"]["kl_mean"]
  counts = bounds.counts(real["belief"], mask, 2)
  per_step = bounds.training_proportions(counts[30:])[1]
  shrunk = bounds.shrunk_forecast(counts[:30], counts[30:], 2, per_step)[0]
  q = bounds.agent_forecast(real["belief"][:30], mask[:30], numbers[:30], real["belief"][30:], mask[30:],
                            numbers[30:], shrunk, bounds.shrunk_forecast(counts[30:], counts[30:], 2, per_step)[0], 2)
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-9)
  np.testing.assert_array_equal(q[:, :2], np.broadcast_to(shrunk, q.shape)[:, :2])
  with pytest.raises(ValueError, match="no training agent after the warm-up"):
    bounds.agent_forecast(real["belief"][:30], mask[:30], numbers[:30], real["belief"][30:], mask[30:] & False,
                          numbers[30:], shrunk, shrunk, 2)


def test_the_words_forecaster_reads_what_the_warm_up_says_beyond_its_classes():
  """`words`: where an event's later course follows a trait that its warm-up's classes do not show but its
  warm-up's words do, the forecaster that reads the words beats `agents`; the features read the warm-up's
  texts alone, fitted on the training events."""
  rng = np.random.default_rng(5)
  E, T, B, W = 80, 6, 16, 2
  z = rng.integers(0, 2, E)  # the event's trait
  ids = np.where(np.arange(T)[None, :, None] < W, rng.integers(0, 2, (E, T, B)),  # the warm-up: a coin
                 np.where(rng.uniform(size=(E, T, B)) < 0.9, z[:, None, None], 1 - z[:, None, None]))
  filler = list("天地人和风雨山水火土")
  texts = [[("甲" if z[e] else "乙") + "".join(rng.choice(filler, 3)) if i < W * B else "丙丁"
            for i in range(T * B)] for e in range(E)]
  mask = np.ones((E, T, B), bool)
  numbers = rng.normal(size=(E, T, B, 1))  # tells nothing
  real = {d: np.minimum(ids, len(cats) - 1) for d, cats in DIMENSIONS.items()}
  words = bounds.warmup_words(texts[30:], texts[:30], W * B, dims=2)
  assert words[0].shape == (30, 2) and words[1].shape == (50, 2)
  out = bounds.bounds({d: v[:30] for d, v in real.items()}, mask[:30], ["a"] * 30,
                      {d: v[30:] for d, v in real.items()}, mask[30:], ["a"] * 50, warmup=W, draws=2,
                      numbers=(numbers[:30], numbers[30:]), words=words)["methods"]
  assert list(out) == [*bounds.PREDICTORS, "agents", "words"]
  assert out["words"]["kl_mean"] < 0.5 * out["agents"]["kl_mean"]
  # words that tell nothing (constant) forecast as `agents` does, and are drawn with its keys: the same KL
  blank = bounds.bounds({d: v[:30] for d, v in real.items()}, mask[:30], ["a"] * 30,
                        {d: v[30:] for d, v in real.items()}, mask[30:], ["a"] * 50, warmup=W, draws=2,
                        numbers=(numbers[:30], numbers[30:]), words=(np.ones((30, 2)), np.ones((50, 2))))["methods"]
  np.testing.assert_allclose(blank["words"]["kl_per_event"], blank["agents"]["kl_per_event"], rtol=1e-9)
  later = [row[:W * B] + ["甲乙"] * (T - W) * B for row in texts]  # what comes after the warm-up is never read
  for got, want in zip(bounds.warmup_words(later[30:], later[:30], W * B, dims=2), words):
    np.testing.assert_allclose(got, want)
  with pytest.raises(ValueError, match="too few for 500 dimensions"):
    bounds.warmup_words(texts[30:], texts[:30], W * B, dims=500)
  with pytest.raises(ValueError, match="give the agents' numbers too"):
    bounds.bounds({d: v[:30] for d, v in real.items()}, mask[:30], ["a"] * 30, {d: v[30:] for d, v in real.items()},
                  mask[30:], ["a"] * 50, warmup=W, words=words)


def test_tool_on_the_synthetic_world_and_against_a_run(tmp_path, capsys):
  out = tmp_path / "b.json"
  population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"),
                          "--draws", "2", "--json", str(out)])
  printed = capsys.readouterr().out
  result = json.loads(out.read_text())
  assert list(result["methods"]) == [*bounds.PREDICTORS, "agents", "world"] and result["split"] == "synthetic-test"
  rows = {line.split()[0] for line in printed.splitlines()[1:] if line.strip() and not line.startswith("(")}
  assert rows == {f"{n}*" if n in bounds.ORACLES else n for n in result["methods"]}  # oracles starred, as in a run
  with pytest.raises(SystemExit):  # never over an existing file
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--json", str(out)])
  assert "exists" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # a folder that is not there: found before the labelling
    population_bounds.main(["--json", str(tmp_path / "nowhere" / "b.json")])
  assert "--json: the folder of" in capsys.readouterr().err
  run = tmp_path / "run"
  run.mkdir()
  smoke = configs.load_config(os.path.join(REPO, "experiments", "quickstart.py:smoke"))
  (run / "config.json").write_text(smoke.to_json())
  data = {k: result[k] for k in ("events", "steps", "agents_per_step", "warmup")}
  (run / "results.json").write_text(json.dumps({"data": {**data, "warmup": data["warmup"] + 1}, "methods": {}}))
  with pytest.raises(SystemExit, match="scored data.warmup="):
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--run", str(run)])
  (run / "results.json").write_text('{"data": ')
  with pytest.raises(SystemExit, match="results.json:1: not valid JSON"):
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--run", str(run)])
  m = {"kl_mean": 0.5, "kl_mean_std": 0.01, "kl": {d: 0.5 for d in DIMENSIONS}, "nll": 1.0}
  (run / "results.json").write_text(json.dumps({"data": data, "methods": {"mf": m}}))
  population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--run", str(run)])
  assert "methods of" in capsys.readouterr().out
  # a run on another world with the same shapes is refused too, naming the key
  with pytest.raises(SystemExit, match=r"config differs in \['data.seed'\]"):
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--run", str(run),
                            "--set", "data.seed=9"])
  with pytest.raises(SystemExit):
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--set", "dat.x=1"])
  assert "unknown config key 'dat.x'" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # the world's texts are its labels: no words to read
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "quickstart.py:smoke"), "--words", "8"])
  assert "--words 8: " in capsys.readouterr().err


def test_tool_on_a_malformed_event_file_names_its_line(tmp_path):
  for split in ("train", "val"):
    with gzip.open(tmp_path / f"{split}.jsonl.gz", "wt") as f:
      f.write("\n{oops\n")
  with pytest.raises(SystemExit, match=r"train.jsonl.gz:2: invalid JSON"):
    population_bounds.main(["--config", os.path.join(REPO, "experiments", "ced_weibo.py"),
                            "--set", f"data.path={tmp_path}"])


def test_tool_on_real_ced_events(ced_dir, tmp_path, capsys):
  out = tmp_path / "ced.json"
  population_bounds.main(["--config", os.path.join(REPO, "experiments", "ced_weibo.py"),
                          "--set", f"data.path={ced_dir}", "--set", "data.train_events=200", "--set",
                          "data.val_events=64", "--set", "data.eval_events=64", "--draws", "2", "--json", str(out),
                          "--words", "8"])
  result = json.loads(out.read_text())
  assert result["split"] == "val" and result["events"] == 64 and result["train_events"] == 200
  assert list(result["methods"]) == [*bounds.PREDICTORS, "agents", "words"]  # no world to run free on real events
  assert set(result["paired"]["words"]) == {"agents", "shrunk"} and "words - agents, means over the 63 events: " in (
      capsys.readouterr().out)
  kl = {name: r["kl_mean"] for name, r in result["methods"].items()}
  # the oracles: the step itself, then the event's own distribution, well below what knows nothing of the event
  assert kl["step"] < kl["event"] < min(kl["global"], kl["label"]) - 0.05
  assert all(np.isfinite(list(kl.values())))


def test_causal_shrunk_reads_only_the_first_steps_before_each_step():
  """What an anchored head reads at step t: the classes of steps s < min(t, steps) plus k agents of step t's
  training proportions (`mfjax.meanfield.encoder.anchor_counts`' counts), never t's own or later ones."""
  rng = np.random.default_rng(0)
  c = rng.integers(0, 4, (3, 5, 3)).astype(float)
  per_step = rng.dirichlet(np.ones(3), 4)  # 4 rows for 5 steps: the last step reads the last row
  got = bounds.causal_shrunk(c, per_step, 2, 3.0)
  for t in range(5):
    before = c[:, :min(t, 2)].sum(1)
    prior = per_step[min(t, 3)]
    np.testing.assert_allclose(got[:, t], (before + 3.0 * prior) / (before.sum(-1, keepdims=True) + 3.0))


def test_the_agent_anchor_follows_who_acts_and_never_reads_past_its_steps():
  """`AgentAnchor` (mf.anchor='agents'): fitted on training agents whose joint class follows a number of their
  state, each agent's anchor puts its mass on the class its number says; changing the classes of steps at or
  past `steps` (a rollout's or a forecast's future, -1 placeholders included) leaves every anchor as it was."""
  rng = np.random.default_rng(1)
  N, T, B, C = 60, 5, 8, 4
  x = rng.uniform(size=(N, T, B)) < 0.5
  y = np.where(rng.uniform(size=(N, T, B)) < 0.9, np.where(x, 2, 1), 0)
  mask = np.ones((N, T, B), bool)
  mask[:5, -1] = False
  numbers = np.stack([x.astype(float), rng.normal(size=x.shape)], -1)
  anchor = bounds.AgentAnchor.fit(np.where(mask, y, -1), mask, numbers, steps=2, classes=C)
  lp = anchor.logprobs(y, mask, numbers)
  assert lp.shape == (N, T, B, C) and lp.dtype == np.float32
  np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)
  p = np.exp(lp)
  assert (p[..., 2][x] > 0.7).mean() > 0.95 and (p[..., 1][~x] > 0.7).mean() > 0.95
  later = y.copy()
  later[:, 2:] = rng.integers(-1, C, later[:, 2:].shape)
  np.testing.assert_array_equal(anchor.logprobs(later, mask, numbers), lp)
  earlier = y.copy()
  earlier[:, 0] = (earlier[:, 0] + 1) % C
  assert not np.array_equal(anchor.logprobs(earlier, mask, numbers)[:, 1:], lp[:, 1:])  # steps 1.. read step 0
  np.testing.assert_array_equal(anchor.logprobs(earlier, mask, numbers)[:, 0], lp[:, 0])  # step 0 reads none
  with pytest.raises(ValueError, match="steps=0 must be >= 1"):
    bounds.AgentAnchor.fit(y, mask, numbers, steps=0, classes=C)
  with pytest.raises(ValueError, match="every training action is unlabelled"):
    bounds.AgentAnchor.fit(np.full_like(y, -1), mask, numbers, steps=2, classes=C)
  # blind (the rollout method 'blind'): the regression on the step and the state alone. It follows the state as
  # the anchor does, reads no class, and averaged over the training agents of a step it gives that step's training
  # proportions (a logistic regression with the step one-hot is calibrated on what it was fitted on)
  with pytest.raises(ValueError, match="fitted without its blind regression"):
    anchor.blind(numbers)
  anchor = bounds.AgentAnchor.fit(np.where(mask, y, -1), mask, numbers, steps=2, classes=C, blind=True)
  np.testing.assert_array_equal(anchor.logprobs(y, mask, numbers), lp)  # the same anchor, and its blind one
  blind = anchor.blind(numbers)
  assert blind.shape == lp.shape and blind.dtype == np.float32
  assert (np.exp(blind)[..., 2][x] > 0.7).mean() > 0.95 and (np.exp(blind)[..., 1][~x] > 0.7).mean() > 0.95
  per_step = np.stack([np.exp(blind)[:, t][mask[:, t]].mean(0) for t in range(T)])
  np.testing.assert_allclose(per_step, anchor.per_step, atol=2e-3)
  z = rng.normal(size=N) < 0  # an event-level trait the classes carry and the state does not
  y2 = np.where(z[:, None, None], 3, y)
  with_trait = bounds.AgentAnchor.fit(y2, mask, numbers, steps=2, classes=C, blind=True)
  assert not np.allclose(with_trait.logprobs(y2, mask, numbers)[:, 2:], with_trait.blind(numbers)[:, 2:], atol=0.1)


def test_an_anchor_that_reads_words_reads_only_the_steps_before_each_step():
  """`AgentAnchor` with `words` (mf.anchor_words): where an event's later classes follow a trait that only its
  first steps' words show, the anchor that reads them puts more mass on the true class after those steps than
  the one that does not; at step t it reads the words of the steps before min(t, steps) alone (changing step
  1's texts moves steps 2.. and leaves steps 0 and 1; changing later texts moves nothing); without the texts
  it is an error."""
  rng = np.random.default_rng(2)
  N, T, B, C, S = 60, 5, 8, 3, 2
  z = rng.integers(0, 2, N)
  y = np.where(np.arange(T)[None, :, None] < S, rng.integers(0, 2, (N, T, B)),
               np.where(rng.uniform(size=(N, T, B)) < 0.9, z[:, None, None], 1 - z[:, None, None]))
  filler = list("天地人和风雨山水火土")
  texts = [[("甲" if z[n] else "乙") + "".join(rng.choice(filler, 3)) for _ in range(T * B)] for n in range(N)]
  mask = np.ones((N, T, B), bool)
  numbers = rng.normal(size=(N, T, B, 1))
  plain = bounds.AgentAnchor.fit(y, mask, numbers, steps=S, classes=C, blind=True)
  anchor = bounds.AgentAnchor.fit(y, mask, numbers, steps=S, classes=C, texts=texts, words=4, blind=True)
  lp = anchor.logprobs(y, mask, numbers, texts)
  truth = lambda lp: np.take_along_axis(np.exp(lp), y[..., None], -1)[:, S:].mean()
  assert truth(lp) > truth(plain.logprobs(y, mask, numbers)) + 0.2
  moved = [row[:B] + ["丙丁"] * B + row[2 * B:] for row in texts]  # step 1's texts
  got = anchor.logprobs(y, mask, numbers, moved)
  np.testing.assert_array_equal(got[:, :2], lp[:, :2])
  assert not np.allclose(got[:, 2:], lp[:, 2:])
  later = [row[:S * B] + ["丙丁"] * (T - S) * B for row in texts]
  np.testing.assert_array_equal(anchor.logprobs(y, mask, numbers, later), lp)
  with pytest.raises(ValueError, match="give their texts"):
    anchor.logprobs(y, mask, numbers)
  blind = anchor.blind(numbers)  # no class and no text: the trait that only the words showed is gone
  assert truth(blind) < truth(lp) - 0.2
  np.testing.assert_array_equal(blind, plain.blind(numbers))  # the words' regression is the classes' one
  with pytest.raises(ValueError, match="needs the training events' texts"):
    bounds.AgentAnchor.fit(y, mask, numbers, steps=S, classes=C, words=4)
