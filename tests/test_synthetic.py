"""The synthetic mean-field world: labels recoverable, ground truth exact,
population information necessary."""

import json
import os
import sys

import numpy as np
import pytest

from mfjax.categories import DIMENSIONS
from mfjax.data import synthetic
from mfjax.data.intervention import Intervention
from mfjax.evaluation import RuleLabeler, category_ids
from mfjax.evaluation import metrics

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import world_bounds  # noqa: E402


@pytest.fixture(scope="module")
def world():
  return synthetic.generate(3000, seed=0)


def test_rule_labeler_recovers_every_attribute(world):
  events, truth = world
  texts = [a.text for e in events[:200] for a in e.actions]
  got = category_ids(RuleLabeler().label(texts))
  E, T, B = 200, truth.attributes["belief"].shape[1], truth.attributes["belief"].shape[2]
  for d in DIMENSIONS:
    np.testing.assert_array_equal(np.array(got[d]).reshape(E, T, B), truth.attributes[d][:200])


def test_ground_truth_is_the_conditional_expectation_of_each_step(world):
  """Realised minus predicted proportions average to zero at every step: the
  z-score of the mean over 3000 events stays small for every category."""
  _, truth = world
  worst = 0.0
  for d, cats in DIMENSIONS.items():
    real, _ = metrics.step_distributions(truth.attributes[d], np.ones(truth.attributes[d].shape), len(cats))
    diff = np.asarray(real) - truth.probs[d]  # [E, T, C]
    z = diff.mean(0) / (diff.std(0) / np.sqrt(diff.shape[0]) + 1e-12)
    worst = max(worst, float(np.abs(z).max()))
  assert worst < 4.5  # 4 dims x 12 steps x 2-3 categories: max |z| of ~100 normals


def test_state_only_policies_cannot_match_while_the_mean_field_can(world):
  """Events with the same label and agent-type mix diverge through herding: the
  best prediction from (label, step) alone stays far from each event's truth."""
  _, truth = world
  p = truth.probs["belief"]  # [E, T, 2]
  for label in (True, False):
    group = p[truth.rumor == label]
    best_constant = group.mean(0, keepdims=True)  # the best state-only prediction per step
    late = float(np.asarray(metrics.kl(group, best_constant))[:, -4:].mean())
    if label:
      assert late > 0.05  # rumors: chance early doubt decides where the population goes
  # the population signal explains it: doubt among earlier comments predicts the truth
  rumor = truth.rumor
  d_signal = truth.signal["doubt"][rumor][:, -1]
  d_truth = p[rumor][:, -1, 1] / truth.probs["behaviour"][rumor][:, -1, 1]
  assert np.corrcoef(d_signal, d_truth)[0, 1] > 0.9


def test_generation_is_deterministic_in_the_seed():
  a, ta = synthetic.generate(5, seed=3)
  b, tb = synthetic.generate(5, seed=3)
  c, _ = synthetic.generate(5, seed=4)
  assert a == b and a != c
  np.testing.assert_array_equal(ta.probs["belief"], tb.probs["belief"])
  assert all(len(e.actions) == 12 * 16 for e in a)
  assert {e.label for e in a} <= {"rumor", "non-rumor"}


def test_an_intervention_forces_its_agents_and_leaves_every_draw_as_it_was():
  iv = Intervention("别信谣言，扩散", step=4, agents=8)
  labels = {d: v[0] for d, v in RuleLabeler().label([iv.text]).items()}
  assert labels == {"behaviour": "comment", "belief": "doubt", "sentiment": "neutral", "intent": "promotion"}
  plain, t0 = synthetic.generate(300, seed=1)
  events, t1 = synthetic.generate(300, seed=1, intervention=iv, labels=labels)
  s, n = iv.step, iv.agents
  for d, cats in DIMENSIONS.items():
    a0, a1 = t0.attributes[d], t1.attributes[d]
    np.testing.assert_array_equal(a1[:, :s], a0[:, :s])  # the past, and the step's other agents, as they were
    np.testing.assert_array_equal(a1[:, s, :-n], a0[:, s, :-n])
    assert (a1[:, s, -n:] == cats.index(labels[d])).all()
    np.testing.assert_array_equal(t1.probs[d][:, :s], t0.probs[d][:, :s])
  # the step's exact distribution counts the forced agents as certain (a share's chance is the same for every agent)
  np.testing.assert_allclose(t1.probs["behaviour"][:, s], (t0.probs["behaviour"][:, s] + [0.0, 1.0]) / 2, rtol=1e-12)
  assert all(a.text == iv.text for e in events for a in e.actions[(s + 1) * 16 - n:(s + 1) * 16])
  texts = [a.text for e in events[:20] for a in e.actions]
  got = category_ids(RuleLabeler().label(texts))
  for d in DIMENSIONS:  # the labeler reads the world's attributes off the intervened texts too
    np.testing.assert_array_equal(np.array(got[d]).reshape(20, 12, 16), t1.attributes[d][:20])
  # the next step's signal is the doubt among all earlier comments, the injected ones included
  comment = t1.attributes["behaviour"][:, :s + 1] == DIMENSIONS["behaviour"].index("comment")
  doubt = (t1.attributes["belief"][:, :s + 1] == 1) & comment
  np.testing.assert_allclose(t1.signal["doubt"][:, s + 1], doubt.sum((1, 2)) / comment.sum((1, 2)))
  # herding: doubt spreads after the counter-rumor comments
  assert (t1.probs["belief"][:, s + 1:, 1] - t0.probs["belief"][:, s + 1:, 1]).mean() > 0.01
  with pytest.raises(ValueError, match="needs the labels"):
    synthetic.generate(2, intervention=iv)
  with pytest.raises(ValueError, match="a share is"):
    synthetic.generate(2, intervention=iv, labels={**labels, "behaviour": "share"})
  with pytest.raises(ValueError, match=r"labels\['belief'\] must be one of"):
    synthetic.generate(2, intervention=iv, labels={**labels, "belief": "maybe"})
  with pytest.raises(ValueError, match="before the last of 12 steps"):
    synthetic.generate(2, intervention=Intervention("x", step=11, agents=1), labels=labels)


def test_run_free_keeps_the_warmup_and_continues_from_the_real_history():
  """Up to the warm-up everything is the truth's, and the first free step's law is the truth's exactly
  (its history is all real); past it the world draws its own actions, deterministic in the seed."""
  config = synthetic.WorldConfig(herding=10, mood_herding=6, share_herding=6)
  _, truth = synthetic.generate(200, seed=3, config=config)
  w = 4
  free = synthetic.run_free(truth, w, seed=1)
  for d in DIMENSIONS:
    np.testing.assert_array_equal(free.attributes[d][:, :w], truth.attributes[d][:, :w])
    np.testing.assert_array_equal(free.probs[d][:, :w + 1], truth.probs[d][:, :w + 1])
  for k in synthetic.SIGNALS:
    np.testing.assert_array_equal(free.signal[k][:, :w + 1], truth.signal[k][:, :w + 1])
  differ = np.mean([free.attributes[d] != truth.attributes[d] for d in DIMENSIONS], (0, 1, 3))  # [T]
  assert (differ[w:] > 0.05).all()  # its own draws from the warm-up on
  assert not np.array_equal(free.probs["belief"][:, -1], truth.probs["belief"][:, -1])
  again = synthetic.run_free(truth, w, seed=1)
  np.testing.assert_array_equal(again.attributes["intent"], free.attributes["intent"])
  np.testing.assert_array_equal(again.probs["intent"], free.probs["intent"])
  assert free.config == truth.config and truth.attributes["belief"] is not free.attributes["belief"]
  with pytest.raises(ValueError, match="warm-up 13"):
    synthetic.run_free(truth, 13, seed=0)


def test_run_free_reads_the_history_it_made_itself():
  """Each free step's law is the world's equations on the free run's own history: restarting the
  world from the free run's first t steps gives the same law at step t, for every t."""
  config = synthetic.WorldConfig(steps=8, agents_per_step=6, herding=10, mood_herding=6, share_herding=6)
  _, truth = synthetic.generate(100, seed=4, config=config)
  free = synthetic.run_free(truth, 2, seed=5)
  for t in range(3, 8):
    restarted = synthetic.run_free(free, t, seed=99)
    for d in DIMENSIONS:
      np.testing.assert_array_equal(restarted.probs[d][:, t], free.probs[d][:, t])
    for k in synthetic.SIGNALS:
      np.testing.assert_array_equal(restarted.signal[k][:, t], free.signal[k][:, t])
  # and the free run is the world: from no warm-up, its realised proportions average to its law, as the
  # truth's do (the same z-score bound as test_ground_truth_is_the_conditional_expectation_of_each_step)
  _, big = synthetic.generate(3000, seed=6, config=config)
  free = synthetic.run_free(big, 0, seed=7)
  for d, cats in DIMENSIONS.items():
    real, _ = metrics.step_distributions(free.attributes[d], np.ones(free.attributes[d].shape), len(cats))
    diff = np.asarray(real) - free.probs[d]
    assert float(np.abs(diff.mean(0) / (diff.std(0) / np.sqrt(diff.shape[0]) + 1e-12)).max()) < 4.5


def test_world_bounds_tool_puts_the_free_world_below_every_population_blind_simulator():
  """tools/world_bounds.py: sampling noise < the exact per-event law; the world run free from the
  warm-up, with its own history, stays far below the best population-blind simulator in a herding world."""
  out = world_bounds.bounds(synthetic.WorldConfig(herding=10, mood_herding=6, share_herding=6), 200, 3, seed=5)
  assert out["floor_real"] < out["oracle"] < out["state_oracle"]
  assert out["oracle"] < out["free"] < out["state_oracle"] - 0.05


def test_world_bounds_tool_refuses_a_warmup_that_leaves_no_step_to_score(capsys):
  """A warm-up of all 12 steps scored nothing and printed NaN for every simulator."""
  with pytest.raises(SystemExit) as e:
    world_bounds.main(["--warmup", "12"])
  assert e.value.code == 2 and "argument --warmup: must be in [0, 12)" in capsys.readouterr().err
  world_bounds.main(["--events", "8", "--warmup", "11", "--agents-per-step", "4"])
  out = json.loads(capsys.readouterr().out)
  assert out["world"]["agents_per_step"] == 4 and all(np.isfinite(out[k]) for k in ("oracle", "free"))
