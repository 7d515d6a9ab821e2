"""`python -m mfjax forecast`: an event's layout (observed steps, the future agents' states), the
bad-input errors, and forecasts of a hand-written live event from a tiny trained run (a CED val
event is forecast from the CED smoke run in test_pipeline)."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from mfjax.__main__ import main
from mfjax.categories import DIMENSIONS
from mfjax.data import agent_numbers, agent_states, train_tokenizer, write_jsonl
from mfjax.data.events import Action, Event
from mfjax.pipeline.forecast import ForecastError, forecast_layout, forecast_numbers, pick_event
from test_pipeline import QUICK, TINY

B = 4


def _event(n: int, eid: str = "live", words=("真的吗？", "转发", "太可怕了", "")) -> Event:
  actions = tuple(Action(id=f"m{i}", agent=f"u{i}", time=1000.0 + 60 * i, text=words[i % len(words)],
                         parent=f"m{i - 1}" if i % 3 == 2 else "", profile={"type": "AB"[i % 2]}) for i in range(n))
  return Event(eid=eid, topic="网传某地发生地震", time=1000.0, label=None, actions=actions)


def test_the_future_agents_take_the_last_observed_steps_states_or_the_real_ones():
  event = _event(22)  # 5 full steps of 4 agents and 2 actions of a sixth
  laid, states, K = forecast_layout(event, agents=B, observed=None, horizon=3, future_states="last", activity=None)
  assert K == 5 and len(laid.actions) == len(states) == (5 + 3) * B
  assert laid.actions[:K * B] == event.actions[:K * B]  # the observed steps as they are
  assert states[:K * B] == agent_states(dataclasses.replace(event, actions=event.actions[:K * B]))
  assert states[K * B:] == states[(K - 1) * B:K * B] * 3  # every future step: the last observed step's agents
  assert all(a.text == "" and a.parent == "" for a in laid.actions[K * B:])
  assert len({a.id for a in laid.actions}) == len(laid.actions)
  # a head that reads the states as numbers (mf.state_numbers) reads them as the state lines lay them out
  rows = forecast_numbers(laid, K, B, "last", None)
  seen = dataclasses.replace(event, actions=event.actions[:K * B])
  assert len(rows) == len(states) and rows[:K * B] == agent_numbers(seen)
  assert rows[K * B:] == rows[(K - 1) * B:K * B] * 3
  laid, states, K = forecast_layout(event, agents=B, observed=2, horizon=3, future_states="real", activity=None)
  assert K == 2 and laid.actions == event.actions[:5 * B] and states == agent_states(laid)
  assert forecast_numbers(laid, K, B, "real", None) == agent_numbers(laid)


@pytest.mark.parametrize("n, observed, horizon, states, message", [
    (3, None, 2, "last", "event live: 3 action\\(s\\), fewer than one step of 4 agents"),
    (12, 4, 2, "last", "--observed 4: event live has 12 actions, 3 full step\\(s\\) of 4 agents"),
    (14, 2, 3, "real", "has 14 actions, 1 future step\\(s\\) of 4 after the 2 observed, not the 3 forecast; "
                       "use --future-states last or --horizon 1"),
    (12, None, 2, "next", "--future-states 'next'")])
def test_an_event_a_forecast_cannot_use_is_an_error_naming_it(n, observed, horizon, states, message):
  with pytest.raises(ForecastError, match=message):
    forecast_layout(_event(n), agents=B, observed=observed, horizon=horizon, future_states=states, activity=None)


def test_the_event_is_picked_by_eid_or_as_the_files_only_one(tmp_path):
  path = str(tmp_path / "two.jsonl")
  write_jsonl([_event(8, "a"), _event(8, "b")], path)
  assert pick_event(path, "b").eid == "b"
  with pytest.raises(ForecastError, match=r"--eid c: no such event in .*two.jsonl \(2 events: a, b\)"):
    pick_event(path, "c")
  with pytest.raises(ForecastError, match=r"two.jsonl holds 2 events \(a, b\): name one with --eid"):
    pick_event(path, None)
  one = str(tmp_path / "one.jsonl")
  write_jsonl([_event(8, "a")], one)
  assert pick_event(one, None).eid == "a"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A trained quickstart run at the pipeline tests' tiny sizes (4 agents a step), `state` and `mf` only."""
  wd = tmp_path_factory.mktemp("forecast") / "run"
  args = ["train", "--config", QUICK, "--workdir", str(wd)]
  for s in TINY + ["rollout.methods=state,mf"]:
    args += ["--set", s]
  main(args)
  return wd


def _forecast(run, events, out, *extra):
  main(["forecast", "--trained-from", str(run), "--events", str(events), "--out", str(out), *extra])
  with open(os.path.join(out, "forecast.json")) as f:
    return json.load(f)


def test_a_live_event_is_forecast_from_its_observed_steps(tiny_run, tmp_path, capsys):
  live = tmp_path / "live.jsonl"
  write_jsonl([_event(12)], str(live))  # three full steps, nothing after them
  fc = _forecast(tiny_run, live, tmp_path / "fc", "--horizon", "2", "--seeds", "3")
  out = capsys.readouterr().out
  assert "[forecast] event live (12 actions): 3 observed step(s) of 4 agents, 2 forecast with 3 seeds" in out
  assert fc["event"]["observed_steps"] == 3 and fc["horizon"] == 2 and fc["seeds"] == 3
  assert fc["future_states"] == "last" and set(fc["methods"]) == {"state", "mf"}
  assert set(fc["references"]) == {"persistence", "shrunk", "global"} and "kl_to_real" not in fc
  assert all(row is None for d in DIMENSIONS for row in fc["real"][d])  # no continuation in the file
  for series in [*fc["methods"].values(), *fc["references"].values()]:
    for d, cats in DIMENSIONS.items():
      mean, lo, hi = (np.asarray(series[d][k]) for k in ("mean", "p10", "p90"))
      assert mean.shape == (2, len(cats)) and np.allclose(mean.sum(-1), 1)
      assert (lo <= mean + 1e-9).all() and (mean <= hi + 1e-9).all()
  observed = np.asarray(fc["observed"]["behaviour"])  # "转发" and "" are shares: 2 of every 4 agents
  np.testing.assert_allclose(observed, [[0.5, 0.5]] * 3)
  np.testing.assert_allclose(fc["references"]["persistence"]["behaviour"]["distribution"], [0.5, 0.5])
  shrunk = np.asarray(fc["references"]["shrunk"]["behaviour"]["distribution"])  # between the event and training
  pooled = np.asarray(fc["references"]["global"]["behaviour"]["distribution"])
  assert min(0.5, pooled[0]) - 1e-9 <= shrunk[0] <= max(0.5, pooled[0]) + 1e-9
  for d in DIMENSIONS:
    assert os.path.getsize(tmp_path / "fc" / "plots" / f"forecast_{d}.png") > 0

  # the same keys: `state` reads no population, so other observed words leave its forecast as it was, token
  # for token; `mf` reads them through its mean field
  other = tmp_path / "other.jsonl"
  write_jsonl([_event(12, words=("谣言！别信", "假的吧？", "呵呵", "不信"))], str(other))
  _forecast(tiny_run, other, tmp_path / "fc2", "--horizon", "2", "--seeds", "3")
  texts = [json.load(open(tmp_path / f / "samples.json")) for f in ("fc", "fc2")]
  assert np.shape(texts[0]["mf"]) == (3, 2, B)  # [seed][future step][agent]
  assert texts[1]["state"] == texts[0]["state"] and texts[1]["mf"] != texts[0]["mf"]

  # an existing forecast is never overwritten; a name the run does not roll out is refused
  with pytest.raises(SystemExit, match="fc/forecast.json exists; remove it or give another folder"):
    _forecast(tiny_run, live, tmp_path / "fc", "--horizon", "2")
  with pytest.raises(SystemExit, match=r"--methods sft: the run in .* rolls out \('state', 'mf'\)"):
    _forecast(tiny_run, live, tmp_path / "fc3", "--horizon", "2", "--methods", "sft")
  with pytest.raises(SystemExit, match="event live: 3 action"):
    write_jsonl([_event(3)], str(tmp_path / "short.jsonl"))
    _forecast(tiny_run, tmp_path / "short.jsonl", tmp_path / "fc3", "--horizon", "2")
  assert not os.path.exists(tmp_path / "fc3")


def test_a_recorded_event_is_scored_against_its_continuation(tiny_run, tmp_path):
  recorded = tmp_path / "recorded.jsonl"
  write_jsonl([_event(18)], str(recorded))  # 2 observed steps, then 2 real ones and 2 actions of a third
  fc = _forecast(tiny_run, recorded, tmp_path / "fc", "--observed", "2", "--horizon", "3", "--seeds", "2",
                 "--methods", "mf")
  assert fc["event"]["observed_steps"] == 2 and set(fc["methods"]) == {"mf"}
  # the real continuation where the file has it: 2 full steps, then a step of 2 agents (a comment, a share)
  np.testing.assert_allclose(fc["real"]["behaviour"], [[0.5, 0.5]] * 3)
  assert set(fc["kl_to_real"]) == {"mf", "persistence", "shrunk", "global"}
  assert all(len(v) == 3 and all(x >= 0 for x in v) for v in fc["kl_to_real"].values())
  # the agents who really came next, where the file holds every one of them
  real = _forecast(tiny_run, recorded, tmp_path / "fc_real", "--observed", "2", "--horizon", "2", "--seeds", "2",
                   "--future-states", "real", "--methods", "mf")
  assert real["future_states"] == "real" and len(real["kl_to_real"]["mf"]) == 2
  with pytest.raises(SystemExit, match="--future-states real: event live has 18 actions, 2 future step"):
    _forecast(tiny_run, recorded, tmp_path / "fc4", "--observed", "2", "--horizon", "3", "--future-states", "real")


def test_a_run_whose_tokenizer_does_not_fit_its_stages_is_refused(tiny_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  shutil.rmtree(run / "tokenizer")
  train_tokenizer(["另一个分词器的文本 %d" % i for i in range(200)], 300, str(run / "tokenizer"))
  write_jsonl([_event(8)], str(tmp_path / "live.jsonl"))
  # said from the checkpoint's metadata, before any read starts (a restore that failed part-way left orbax's
  # reads unawaited, warned about in whichever test ran next)
  with pytest.raises(SystemExit, match=r"--trained-from .*: the model its tokenizer makes \(\d+ tokens\) does not "
                                       r"fit its trained stages: .*other shapes: \['lm'\]\['embedder'\]\['embedding'\]"):
    _forecast(run, tmp_path / "live.jsonl", tmp_path / "fc", "--horizon", "1")
  assert not os.path.exists(tmp_path / "fc")


def test_the_forecast_fits_the_anchor_the_run_prepared(ced_dir, tmp_path):
  """A forecast refits the run's agents anchor from the training events (`fitted_anchor`); with the words
  (mf.anchor_words) it gives the eval events the anchor `prepare` gave them."""
  from mfjax import configs, pipeline_config
  from mfjax.data import UidActivity, step_numbers, step_texts
  from mfjax.evaluation.report import CachedLabeler, make_labeler
  from mfjax.pipeline import split_events
  from mfjax.pipeline.data import fitted_anchor, label_categories, prepare
  cfg = configs.load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                         "ced_weibo.py:smoke"), [f"data.path={ced_dir}", "mf.anchor_words=4"])
  plan = pipeline_config.plan(cfg)
  data = prepare(plan, str(tmp_path))
  train, _, scored, _, _ = split_events(plan.data)
  activity = UidActivity.fit(train)
  labeler = CachedLabeler(make_labeler(plan.data.labeler, plan.data.label_data))
  anchor = fitted_anchor(plan.data, train, labeler, activity)
  assert anchor.words is not None and anchor.words.actions == plan.data.agent_anchor * cfg.data.agents_per_step
  ev, layout = data.eval, plan.data.eval_batch
  got = anchor.logprobs(label_categories(labeler, ev), ev.agent_mask,
                        step_numbers(scored, layout.steps, layout.agents_per_step, activity),
                        step_texts(scored, layout.steps, layout.agents_per_step)[0])
  np.testing.assert_allclose(got, ev.anchor, rtol=1e-5, atol=1e-6)
