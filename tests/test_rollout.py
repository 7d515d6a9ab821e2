"""Rollouts: the population context, causality, warm-up, compile-once."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_setup import CONTEXT, EOS, TEXT, T, make_batch, make_model
from mfjax.ibtune import mean_field_path
from mfjax.rollout import KINDS, quote_context, repost_counts, simulate, step_contexts
from mfjax.policy import action_logprobs, with_context
from mfjax.rollout.context import selection_scores

simulate_module = importlib.import_module("mfjax.rollout.simulate")  # the module (the package exports the function)


@pytest.fixture(scope="module")
def setup():
  model, encoder, params = make_model()
  return model, encoder, params, make_batch()


def test_quote_context_recent_and_popular():
  # history of 4 actions (A = 4 tokens): ids 10.., eos, padding
  hist = jnp.asarray([[10, 11, EOS, 0], [20, EOS, 0, 0], [30, 31, 32, EOS], [40, EOS, 0, 0]], jnp.int32)
  mask = (jnp.arange(4)[None] <= jnp.asarray([2, 1, 3, 1])[:, None]).astype(jnp.int32)
  valid = jnp.asarray([True, True, True, False])
  counts = repost_counts(jnp.asarray([-1, 0, 0, 2]), jnp.asarray([True, True, True, True]), 4)
  np.testing.assert_array_equal(counts, [2, 0, 1, 0])
  recent_ids, recent_mask = quote_context(CONTEXT, hist, mask, valid, selection_scores(KINDS["recent"], counts))
  kept = lambda ids, m: [int(i) for i, k in zip(ids, m) if k]
  assert kept(recent_ids, recent_mask) == [5, 6, 20, 7, 30, 31, 32, 7]  # header, last two valid, history order
  pop_ids, pop_mask = quote_context(CONTEXT, hist, mask, valid, selection_scores(KINDS["popular"], counts))
  assert kept(pop_ids, pop_mask) == [5, 6, 10, 11, 7, 30, 31, 32, 7]  # 2 reposts, then 1
  assert recent_ids.shape == (CONTEXT.length,)
  _, empty = quote_context(CONTEXT, hist, mask, jnp.zeros(4, bool), selection_scores(1, counts))
  assert int(empty.sum()) == 0


def test_training_contexts_see_only_earlier_steps():
  b = {k: jnp.asarray(v[0]) for k, v in make_batch().items()}
  f = jax.jit(lambda ids: step_contexts(CONTEXT, KINDS["popular"], ids, b["action_mask"], b["agent_mask"],
                                        b["parent"]))
  ids, mask = f(b["action_ids"])
  assert int(mask[0].sum()) == 0
  t = 2
  ids2, mask2 = f(b["action_ids"].at[t:].set(jnp.where(b["action_mask"][t:] > 0, 9, 0)))
  np.testing.assert_array_equal(ids2[:t + 1], ids[:t + 1])
  np.testing.assert_array_equal(mask2[:t + 1], mask[:t + 1])
  none_ids, none_mask = step_contexts(CONTEXT, KINDS["none"], b["action_ids"], b["action_mask"], b["agent_mask"],
                                      b["parent"])
  assert int(none_mask.sum()) == 0


def _run(setup, method, batch, warmup, seed=0, temperature=1.0):
  model, encoder, params, _ = setup
  params = {**params, "mf_lm": params["lm"]}  # the text mean field's writer (mf_text): the policy's LM
  return simulate(model, params, batch, method=method, rng=jax.random.PRNGKey(seed), warmup=warmup,
                  encoder=encoder, context=CONTEXT, temperature=temperature, text=TEXT)


@pytest.mark.parametrize("method", ["mf", "recent", "mf_text"])
def test_step_t_does_not_depend_on_later_actions(setup, method):
  batch = setup[3]
  ref = _run(setup, method, batch, warmup=T)  # all real: the history is the real one
  t = 1
  changed = {**batch, "action_ids": batch["action_ids"].copy()}
  changed["action_ids"][:, t + 1:] = np.where(batch["action_mask"][:, t + 1:] > 0, 9, 0)
  out = _run(setup, method, changed, warmup=T)
  for field in ("tokens", "real_logprobs", "mf_mu", "summary"):
    np.testing.assert_array_equal(getattr(out, field)[:, :t + 1], getattr(ref, field)[:, :t + 1])
  assert not np.array_equal(out.tokens[:, t + 2:], ref.tokens[:, t + 2:])  # later steps do see them


def test_warmup_reproduces_the_real_mean_field_path(setup):
  model, encoder, params, batch = setup
  W = 2
  out = _run(setup, "mf", batch, warmup=W)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  _, mu, logvar = jax.jit(lambda b: mean_field_path(model=model, encoder=encoder, params=params, batch=b,
                                                    rng=jax.random.PRNGKey(0)))(jb)
  # read at steps 0..W: built from the real steps < W in both
  np.testing.assert_allclose(out.mf_mu[:, :W + 1], mu[:, :W + 1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.mf_logvar[:, :W + 1], logvar[:, :W + 1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out.mf_mu[:, W + 1:], mu[:, W + 1:], atol=1e-4)  # after warm-up: its own samples


def test_simulate_compiles_once_per_method_family(setup):
  batch = setup[3]
  _run(setup, "recent", batch, warmup=1)
  _run(setup, "state", batch, warmup=1)
  _run(setup, "mf", batch, warmup=1)
  before = simulate_module._simulate._cache_size()
  other = make_batch(seed=5)
  for i, method in enumerate(["popular", "recent", "sft", "state", "mf"]):
    out = _run(setup, method, other, warmup=i, seed=i, temperature=0.5 + i)
  jax.block_until_ready(out.tokens)
  assert simulate_module._simulate._cache_size() == before


@pytest.mark.parametrize("method,signal_leaves", [("state", 0), ("recent", 3), ("mf", 3), ("mf_text", 2)])
def test_the_scan_carries_the_key_the_methods_signal_and_the_outputs(setup, method, signal_leaves):
  """state: nothing; recent: the history (valid, real, counts: no tokens); mf: MFState; mf_text: the
  summary; then the output buffers, written in place (the scan stacks nothing)."""
  model, encoder, params, batch = setup
  spec, kind = simulate_module.method_spec(method, max_new_tokens=batch["action_ids"].shape[-1], context=CONTEXT,
                                           text=TEXT)
  params = {"lm": params["lm"], **({"mf": params["mf"]} if method == "mf" else {}),
            **({"mf_lm": params["lm"]} if method == "mf_text" else {})}
  impl = lambda p, b: simulate_module._simulate_impl(model, encoder, p, b, jax.random.PRNGKey(0), 1, kind, 1.0,
                                                     spec=spec)
  jaxpr = jax.make_jaxpr(impl)(params, {k: jnp.asarray(v) for k, v in batch.items()})
  (scan,) = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
  outputs = len(simulate_module.RolloutOutput.__dataclass_fields__)
  assert scan.params["num_carry"] == 1 + signal_leaves + outputs  # the PRNG key, the signal's state, the outputs
  assert len(scan.outvars) == scan.params["num_carry"]


def test_recent_quotes_the_actions_the_history_took_real_then_sampled(setup):
  """The quoted history keeps no tokens: a quote reads the real action (warm-up) or the agent's
  sample (the rollout's output). Each step's real actions, scored under the context that the
  training code quotes from those taken actions, score as the rollout scored them."""
  model, _, params, batch = setup
  W = 1
  out = _run(setup, "recent", batch, warmup=W)
  E, T_, B, A = batch["action_ids"].shape
  real = (np.arange(T_) < W)[None, :, None, None]
  taken_ids = np.where(real, batch["action_ids"], np.asarray(out.tokens))
  taken_mask = np.where(real, batch["action_mask"] > 0, np.asarray(out.mask))
  lm = params["lm"]
  for e in range(E):
    ctx, ctx_mask = step_contexts(CONTEXT, KINDS["recent"], jnp.asarray(taken_ids[e]), jnp.asarray(taken_mask[e]),
                                  jnp.asarray(batch["agent_mask"][e]), jnp.asarray(batch["parent"][e]))
    for t in range(W, T_):
      ids, mask = with_context(jnp.repeat(ctx[t][None], B, 0), jnp.repeat(ctx_mask[t][None], B, 0),
                               jnp.asarray(batch["prompt_ids"][e, t]), jnp.asarray(batch["prompt_mask"][e, t]))
      lp = action_logprobs(model, lm, ids, mask, jnp.asarray(batch["action_ids"][e, t]),
                           jnp.asarray(batch["action_mask"][e, t]))
      np.testing.assert_allclose(lp, out.real_logprobs[e, t], rtol=1e-5, atol=1e-5)
  assert int(np.asarray(ctx_mask[T_ - 1]).sum()) > len(CONTEXT.header)  # the last step quotes samples


def test_rollout_outputs(setup):
  batch = setup[3]
  out = _run(setup, "state", batch, warmup=0)
  E, T_, B, A = batch["action_ids"].shape
  assert out.tokens.shape == (E, T_, B, A) and out.real_logprobs.shape == (E, T_, B, A)
  lp = np.asarray(out.real_logprobs)
  assert (lp[batch["action_mask"] == 0] == 0).all() and (lp[batch["action_mask"] == 1] < 0).all()
  # every sampled row is real up to and including its first eos, and only there
  toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
  first_eos = np.where((toks == EOS).any(-1), (toks == EOS).argmax(-1), A - 1)
  np.testing.assert_array_equal(mask, np.arange(A) <= first_eos[..., None])
  with pytest.raises(ValueError, match="unknown method"):
    _run(setup, "oracle", batch, warmup=0)


@pytest.mark.parametrize("method", ["mf", "recent", "mf_text"])
def test_forced_agents_enter_the_history_as_in_warm_up(setup, method):
  batch = setup[3]
  W = 2
  ref = _run(setup, method, batch, warmup=W)
  forced = np.zeros(batch["agent_mask"].shape, bool)
  np.testing.assert_array_equal(_run(setup, method, {**batch, "forced": forced}, warmup=W).tokens, ref.tokens)
  with pytest.raises(ValueError, match=r"batch\['forced'\] has shape \(2, 4\); it marks agents"):
    _run(setup, method, {**batch, "forced": forced[..., 0]}, warmup=W)
  forced[:, :W] = True  # every agent of the first W steps forced, no warm-up: the same rollout
  out = _run(setup, method, {**batch, "forced": forced}, warmup=0)
  for field in ("tokens", "mask", "real_logprobs", "mf_mu", "mf_logvar", "summary", "summary_mask"):
    np.testing.assert_array_equal(getattr(out, field), getattr(ref, field), err_msg=field)


@pytest.mark.parametrize("method", ["mf", "recent", "state", "mf_text"])
def test_an_intervention_changes_only_the_steps_after_it(setup, method):
  """Agents of step s forced to injected actions (after the warm-up): the
  rollout with the same key is the same up to step s, and after it differs
  (in the scores of the real actions, which the policy's input decides) only
  for the methods that read the population."""
  batch = setup[3]
  s = 1
  ref = _run(setup, method, batch, warmup=1)
  injected = {**batch, "action_ids": batch["action_ids"].copy(), "forced": np.zeros(batch["agent_mask"].shape, bool)}
  injected["action_ids"][:, s] = np.where(batch["action_mask"][:, s] > 0, 9, 0)
  injected["forced"][:, s] = batch["agent_mask"][:, s]
  out = _run(setup, method, injected, warmup=1)
  for field in ("tokens", "mf_mu"):
    np.testing.assert_array_equal(getattr(out, field)[:, :s + 1], getattr(ref, field)[:, :s + 1], err_msg=field)
  np.testing.assert_array_equal(out.summary[:, :s], ref.summary[:, :s])  # written after step s: from its actions
  later = lambda r: np.asarray(r.real_logprobs)[:, s + 1:]
  if method == "state":
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(later(out), later(ref))
  else:
    assert np.abs(later(out) - later(ref)).max() > 1e-3
  if method == "mf":
    assert not np.allclose(out.mf_mu[:, s + 1], ref.mf_mu[:, s + 1], atol=1e-4)  # m read after step s moved
