"""The text mean field (the paper's own): token layouts, the rollout's summaries,
and IB-Tune with a score-function gradient for the writer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_setup import EOS, PAD, TEXT, make_batch, make_model
from mfjax.ibtune import text_ib_tune_loss, trainable_labels
from mfjax.ibtune.objective import _leave_one_out
from mfjax.meanfield import text as text_mf
from mfjax.model.lora import is_lora_path
from mfjax.rollout import simulate

kept = lambda ids, mask: [int(i) for i, m in zip(ids, mask) if m]


@pytest.fixture(scope="module")
def setup():
  model, _, params = make_model()
  batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
  return model, {"lm": params["lm"], "mf_lm": params["lm"]}, batch


def test_policy_context_reads_the_summary_without_eos_and_nothing_before_one():
  ids = jnp.asarray([[20, 21, EOS], [PAD, PAD, PAD]])
  mask = jnp.asarray([[True, True, True], [False, False, False]])
  c_ids, c_mask = text_mf.policy_context(TEXT, ids, mask)
  assert c_ids.shape == (2, TEXT.context_len)
  assert kept(c_ids[0], c_mask[0]) == [5, 6, 20, 21]  # header, summary; <eos> dropped
  assert int(c_mask[1].sum()) == 0  # no summary yet: no context at all


def test_writer_prompt_holds_the_summary_and_the_valid_agents_actions():
  summary = jnp.asarray([[20, EOS, PAD]]), jnp.asarray([[True, True, False]])
  acts = jnp.asarray([[[30, 31, EOS, PAD], [40, EOS, PAD, PAD], [50, 51, 52, EOS]]])
  act_mask = jnp.asarray([[[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]])
  ids, mask = text_mf.writer_prompt(TEXT, *summary, acts, act_mask, jnp.asarray([[True, False, True]]))
  assert ids.shape == (1, TEXT.writer_len) and int(mask[0, -1]) == 1  # ends in a real token: the writer continues it
  # WRITER_HEADER, summary, ACTIONS_HEADER, agent 0 SEP, agent 2 SEP (agent 1 is padding), WRITER_END
  assert kept(ids[0], mask[0]) == [8, 20, 10, 11, 30, 31, 7, 50, 51, 52, 7, 12]
  empty = text_mf.empty_summary(TEXT, (1,))
  ids, mask = text_mf.writer_prompt(TEXT, *empty, acts, act_mask, jnp.asarray([[False, False, False]]))
  assert kept(ids[0], mask[0]) == [8, 10, 11, 12]


def test_rollout_summaries_are_the_writer_along_the_history(setup):
  """Greedy (temperature 0): the summary after each warm-up step is what the
  writer writes, one step at a time, from the previous one and the real actions;
  a step without agents keeps the summary it had."""
  model, params, batch = setup
  # a different writer than the policy, so that a mix-up of the two shows
  writer = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.3 if is_lora_path(p) else x, params["lm"])
  params = {**params, "mf_lm": writer}
  batch = {**batch, "agent_mask": batch["agent_mask"].at[:, 2].set(False)}  # step 2 of every event: no agent
  T = batch["agent_mask"].shape[1]
  out = simulate(model, params, batch, method="mf_text", rng=jax.random.PRNGKey(0), warmup=T, temperature=0.0,
                 text=TEXT)
  summary = text_mf.empty_summary(TEXT, (batch["agent_mask"].shape[0],))
  for t in range(T):
    prompt = text_mf.writer_prompt(TEXT, *summary, batch["action_ids"][:, t], batch["action_mask"][:, t],
                                   batch["agent_mask"][:, t])
    written = text_mf.write(model, writer, TEXT, *prompt, rng=jax.random.PRNGKey(9), temperature=0.0)
    summary = text_mf.next_summary(TEXT, written, *summary, batch["agent_mask"][:, t])
    np.testing.assert_array_equal(out.summary[:, t], summary[0], err_msg=f"step {t}")
    np.testing.assert_array_equal(out.summary_mask[:, t], summary[1], err_msg=f"step {t}")
  np.testing.assert_array_equal(out.summary[:, 2], out.summary[:, 1])
  # the policy reads them: the real actions' scores are the context-free policy's at step 0 alone (up to float32
  # summation order: the masked context still lengthens the input)
  plain = simulate(model, {"lm": params["lm"]}, batch, method="state", rng=jax.random.PRNGKey(0), warmup=T,
                   temperature=0.0)
  np.testing.assert_allclose(out.real_logprobs[:, 0], plain.real_logprobs[:, 0], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out.real_logprobs[:, 1]) - np.asarray(plain.real_logprobs[:, 1])).max() > 1e-3
  with pytest.raises(ValueError, match="needs a TextMFSpec"):
    simulate(model, params, batch, method="mf_text", rng=jax.random.PRNGKey(0), warmup=1)
  with pytest.raises(ValueError, match=r"needs params\['mf_lm'\]"):
    simulate(model, {"lm": params["lm"]}, batch, method="mf_text", rng=jax.random.PRNGKey(0), warmup=1, text=TEXT)


def _loss(model, params, batch, beta, rng=0):
  return text_ib_tune_loss(model=model, spec=TEXT, params=params, batch=batch, rng=jax.random.PRNGKey(rng),
                           beta=beta)


def _lora_norm(tree):
  return float(jnp.sqrt(sum((x ** 2).sum() for p, x in jax.tree_util.tree_leaves_with_path(tree) if is_lora_path(p))))


def test_text_ib_tune_value_and_gradients(setup):
  model, params, batch = setup
  grad = jax.jit(jax.grad(lambda p, beta: _loss(model, p, batch, beta)[0]))
  aux = jax.jit(lambda p, beta: _loss(model, p, batch, beta)[1])(params, 0.5)
  assert float(aux["loss"]) == pytest.approx(float(aux["relevance"] + 0.5 * aux["compression"]), rel=1e-6)
  assert float(aux["compression_bits"]) == pytest.approx(float(aux["compression"]) / np.log(2), rel=1e-6)
  assert 1 <= float(aux["summary_tokens"]) <= TEXT.summary_len
  g0, g1 = grad(params, 0.0), grad(params, 1.0)
  assert _lora_norm(g0["lm"]) > 0 and _lora_norm(g0["mf_lm"]) > 0  # the signal reaches the writer
  # the policy's gradient is the relevance's alone; beta moves only the writer's (through its reward)
  for a, b in zip(jax.tree.leaves(g0["lm"]), jax.tree.leaves(g1["lm"])):
    np.testing.assert_array_equal(a, b)
  assert _lora_norm(jax.tree.map(lambda a, b: a - b, g0["mf_lm"], g1["mf_lm"])) > 1e-6


def test_the_writers_gradient_step_lowers_what_its_reward_penalises(setup):
  """A score-function gradient is an unbiased estimate of the expected reward's
  gradient: with the compression dominating the reward (large beta), a small
  step of the writer against it lowers the expected compression (estimated
  over the same 8 draws before and after), and a step the other way raises it."""
  model, params, batch = setup
  beta, keys = 100.0, range(8)
  terms = jax.jit(lambda p, k: _loss(model, p, batch, beta, rng=k)[1]["compression"])
  grad = jax.jit(lambda p, k: jax.grad(lambda q: _loss(model, q, batch, beta, rng=k)[0])(p)["mf_lm"])
  mean = lambda f: sum(f(k) for k in keys) / len(keys)
  g = jax.tree.map(lambda *x: sum(x) / len(keys), *[grad(params, k) for k in keys])
  moved = lambda step: {**params, "mf_lm": jax.tree_util.tree_map_with_path(
      lambda p, x, d: x - step / _lora_norm(g) * d if is_lora_path(p) else x, params["mf_lm"], g)}
  before = float(mean(lambda k: terms(params, k)))
  down, up = (float(mean(lambda k: terms(moved(step), k))) for step in (0.1, -0.1))
  assert down < before < up, (down, before, up)


def test_the_prior_is_the_base_lm_and_never_trains(setup):
  model, params, batch = setup
  base = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if is_lora_path(p) else x, params["lm"])
  # jitted: op by op, the sampling loops take twice as long
  without = jax.jit(lambda p: _loss(model, p, batch, 0.1)[1])(params)
  (_, with_prior), g = jax.jit(jax.value_and_grad(lambda p: _loss(model, p, batch, 0.1), has_aux=True))(
      {**params, "prior": base})
  for k in ("compression", "relevance", "loss"):
    assert float(with_prior[k]) == pytest.approx(float(without[k]), rel=1e-5), k
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g["prior"]))
  labels = trainable_labels({**params, "prior": base}, "full")
  assert set(jax.tree.leaves(labels["prior"])) == {"frozen"} and set(jax.tree.leaves(labels["mf_lm"])) == {"train"}


def test_leave_one_out_baseline_by_hand():
  x = jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
  valid = jnp.asarray([[True, True], [True, False], [True, True]])
  np.testing.assert_allclose(_leave_one_out(x, valid), [[4.0, 9.0], [3.0, 5.5], [2.0, 2.0]])
