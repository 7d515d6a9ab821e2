"""A prompt's shared part computed once for a group of rows (`mfjax.model.shared_extend`): an event's topic block
(`BatchConfig.topic_len`) with a step's mean field and context before it. Every result equals the unshared
path's on the same layout: the model's outputs, cache and gradients, the sampler's draws and scores, the
losses and their gradients, the rollouts, on one device and on an 8-device mesh."""

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mf_setup
from mfjax import model as M
from mfjax import sampling
from mfjax.data.batching import BatchConfig, make_step_batch
from mfjax.data.events import Action, Event
from mfjax.data.prompts import policy_prompt
from mfjax.ibtune import ib_tune_loss, jit_train_step, make_optimizer, policy_loss, sharded_state, text_ib_tune_loss
from mfjax.ibtune.objective import teacher_forced_posteriors
from mfjax.meanfield.encoder import agent_embeddings
from mfjax.parallel import global_batch, make_mesh
from mfjax.parallel.state import policy_shardings, to_host
from mfjax.policy import action_logprobs, shared_tokens
from mfjax.rollout import simulate

TOPIC = 4  # the topic block's tokens in the mf_setup batches


def _close(got, want, what=""):
  """Equal up to float32 rounding: the difference's norm within 1e-5 of the value's (measured: about 9e-7 for the
  tiny models' logits, a few ulps of the largest; a bug moves it by a large fraction)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)
  assert err < 1e-5, f"{what}: relative error {err:.2e}"


def _same_gradients(g1, g2, name=""):
  """Gradients equal up to float32 rounding, tensor by tensor: the difference's norm within 1e-5 of the
  gradient's. The shared part runs in other shapes (its own matmuls, its gradient summed over a group's rows by
  the repeat's transpose), which moves single elements by a few ulps of the terms summed, the tensor's scale
  and not the element's own, so an element-wise tolerance would measure cancellation; a missed or doubled
  row moves the norm by a large fraction of itself."""
  def check(path, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12)
    assert err < 1e-5, f"{name} {jax.tree_util.keystr(path)}: relative error {err:.2e}"
  jax.tree_util.tree_map_with_path(check, g1, g2)


def _grouped(seed=0, G=3, R=4, Ls=7, Lr=6, vocab=256):
  """Rows in G groups of R whose first Ls tokens (left-padded, lengths per group) are alike, then Lr of their
  own (left-padded: the padding is interior, between the two parts)."""
  rng = np.random.default_rng(seed)
  s_mask = (np.arange(Ls)[None] >= rng.integers(0, 4, (G, 1))).astype(np.int32)
  s_ids = np.where(s_mask == 1, rng.integers(3, vocab, (G, Ls)), 0)
  r_mask = (np.arange(Lr)[None] >= rng.integers(0, Lr - 1, (G * R, 1))).astype(np.int32)
  r_ids = np.where(r_mask == 1, rng.integers(3, vocab, (G * R, Lr)), 0)
  ids = np.concatenate([np.repeat(s_ids, R, 0), r_ids], 1).astype(np.int32)
  mask = np.concatenate([np.repeat(s_mask, R, 0), r_mask], 1)
  return jnp.asarray(ids), jnp.asarray(mask), r_mask


@pytest.mark.parametrize("family,scan_layers,remat", [("qwen2", True, "none"), ("qwen2", False, "none"),
                                                      ("mistral", True, "full"), ("llama", False, "dots")])
def test_shared_extend_equals_the_whole_rows(family, scan_layers, remat):
  """Logits, hidden states, the cache and the gradient of the rows' own tokens equal a full forward's (and a
  full `extend`'s cache), with prefix vectors, interior padding, mistral's window and remat; the shared
  part's FLOPs are spent once per group."""
  model = M.Decoder(M.tiny(family, init_std=0.2, scan_layers=scan_layers, remat_policy=remat))
  params = M.init_params(model, jax.random.PRNGKey(0))
  G, R, Ls, Lr, K = 3, 4, 7, 6, 2
  ids, mask, r_mask = _grouped(G=G, R=R, Ls=Ls, Lr=Lr)
  prefix = jnp.repeat(jax.random.normal(jax.random.PRNGKey(1), (G, K, model.cfg.hidden_size)), R, 0)
  fwd = jax.jit(model.apply, static_argnames=("return_hidden",))
  want_logits, want_hidden = fwd({"params": params}, ids, mask, prefix_embeds_BxKxD=prefix, return_hidden=True)
  shared = jax.jit(M.shared_extend, static_argnames=("model", "shared", "group", "slots", "queries_from",
                                                     "return_logits"))
  slots = K + Ls + Lr + 3
  logits, hidden, cache = shared(model, params, ids, mask, shared=Ls, group=R, slots=slots, prefix_embeds_BxKxD=prefix,
                                 return_logits=True)
  assert logits.shape == (G * R, Lr, model.cfg.vocab_size)
  valid = r_mask == 1
  _close(np.asarray(logits)[valid], np.asarray(want_logits[:, Ls:])[valid], "logits")
  _close(np.asarray(hidden)[valid], np.asarray(want_hidden[:, Ls:])[valid], "hidden")
  # the cache holds every row's keys and values, as one `extend` of the whole rows fills it
  kv_mask = jnp.pad(jnp.concatenate([jnp.ones((G * R, K), jnp.int32), mask], 1), ((0, 0), (0, 3)))
  _, _, want_cache = jax.jit(functools.partial(model.apply, method=M.Decoder.extend))(
      {"params": params}, ids, kv_mask, M.positions_from_mask(kv_mask[:, :K + Ls + Lr]),
      M.KVCache.zeros(model.cfg, G * R, slots), jnp.int32(0), prefix_embeds_BxKxD=prefix)
  jax.tree.map(lambda a, b: _close(b, a, "cache"), want_cache, cache)
  # queries_from: the tail only
  tail, _, _ = shared(model, params, ids, mask, shared=Ls, group=R, slots=slots, prefix_embeds_BxKxD=prefix,
                      queries_from=Lr - 2, return_logits=True)
  _close(tail, logits[:, Lr - 2:], "queries_from")

  # gradients of the rows' next-token NLL (its valid positions), both ways
  target = ids[:, Ls + 1:]
  weight = (mask[:, Ls:-1] * mask[:, Ls + 1:]).astype(jnp.float32)

  def nll(p, share):
    if share:
      lg = M.shared_extend(model, p, ids, mask, shared=Ls, group=R, slots=K + Ls + Lr, prefix_embeds_BxKxD=prefix,
                           return_logits=True)[0]
    else:
      lg = model.apply({"params": p}, ids, mask, prefix_embeds_BxKxD=prefix)[:, Ls:]
    logp = jnp.take_along_axis(jax.nn.log_softmax(lg[:, :-1], -1), target[..., None], -1)[..., 0]
    return -(logp * weight).sum() / weight.sum()

  grad = jax.jit(jax.value_and_grad(nll), static_argnums=1)
  (l1, g1), (l2, g2) = grad(params, False), grad(params, True)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  _same_gradients(g1, g2)

  # fewer FLOPs (read unrolled: XLA's cost analysis counts a loop's body once)
  flat_model, flat = M.unrolled(model, params)
  flops = lambda f: jax.jit(f).lower(flat).compile().cost_analysis()["flops"]
  full = flops(lambda p: flat_model.apply({"params": p}, ids, mask, prefix_embeds_BxKxD=prefix))
  once = flops(lambda p: M.shared_extend(flat_model, p, ids, mask, shared=Ls, group=R, slots=K + Ls + Lr,
                                         prefix_embeds_BxKxD=prefix, return_logits=True)[0])
  assert once < 0.8 * full, (once, full)


def test_shared_extend_refuses_what_it_cannot_share():
  model = M.Decoder(M.tiny("qwen2", init_std=0.2))
  params = M.init_params(model, jax.random.PRNGKey(0))
  ids, mask, _ = _grouped(G=3, R=4, Ls=7, Lr=6)
  for kw in (dict(shared=13, group=4), dict(shared=0, group=4), dict(shared=7, group=5)):
    with pytest.raises(ValueError, match="shared_extend"):
      M.shared_extend(model, params, ids, mask, slots=13, **kw)
  with pytest.raises(ValueError, match="slots"):
    M.shared_extend(model, params, ids, mask, shared=7, group=4, slots=12)
  with pytest.raises(ValueError, match="shared tokens"):
    action_logprobs(model, params, ids, mask, ids[:, :2], mask[:, :2], shared=13, group=4)
  with pytest.raises(ValueError, match="shared tokens"):
    sampling.generate(model, params, ids, mask, rng=jax.random.PRNGKey(1), max_new_tokens=2, shared=13, group=4)


def test_what_a_step_computes_once():
  # the topic block, and the quoted context before it (with or without a topic block); share=False: nothing
  assert (shared_tokens(72), shared_tokens(72, 135), shared_tokens(0, 135), shared_tokens(0)) == (72, 207, 135, 0)
  assert shared_tokens(72, 135, share=False) == shared_tokens(0, 135, False) == 0


@pytest.mark.parametrize("scan_layers,unroll", [(True, True), (True, False), (False, True)])
def test_the_sampler_computes_the_shared_part_once_and_draws_the_same(scan_layers, unroll):
  """`generate` and `score_and_generate` with `shared`: the same tokens with the same keys, the same
  log-probabilities and scores; `action_logprobs` and `agent_embeddings` the same values."""
  model = M.Decoder(M.tiny("qwen2", init_std=0.2, scan_layers=scan_layers))
  params = M.init_params(model, jax.random.PRNGKey(0))
  G, R, Ls = 3, 4, 7
  ids, mask, _ = _grouped(seed=2, G=G, R=R, Ls=Ls)
  rng = np.random.default_rng(3)
  a_mask = (np.arange(5)[None] < rng.integers(1, 6, (G * R, 1))).astype(np.int32)
  a_ids = np.where(a_mask == 1, rng.integers(3, 256, a_mask.shape), 0)
  prefix = jnp.repeat(jax.random.normal(jax.random.PRNGKey(4), (G, 2, model.cfg.hidden_size)), R, 0)
  kw = dict(rng=jax.random.PRNGKey(5), max_new_tokens=6, temperature=1.0, top_k=20, top_p=0.9, eos_id=7,
            prefix_embeds=prefix, unroll_layers=unroll)
  ref = sampling.generate(model, params, ids, mask, **kw)
  out = sampling.generate(model, params, ids, mask, shared=Ls, group=R, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.mask, ref.mask)
  _close(out.logprobs, ref.logprobs, "sampled log-probs")
  ref_lp, ref = sampling.score_and_generate(model, params, ids, mask, a_ids, a_mask, **kw)
  lp, out = sampling.score_and_generate(model, params, ids, mask, a_ids, a_mask, shared=Ls, group=R, **kw)
  _close(lp, ref_lp, "scores")
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  logprobs = jax.jit(lambda n: action_logprobs(model, params, ids, mask, a_ids, a_mask, prefix_NxKxD=prefix,
                                                shared=n, group=R), static_argnums=0)
  _close(logprobs(Ls), logprobs(0), "action_logprobs")
  _close(logprobs(Ls), lp, "action_logprobs against the scores")
  lead = lambda x: jnp.asarray(x).reshape(G, R, -1)
  embed = jax.jit(lambda n: agent_embeddings(model, params, lead(ids), lead(mask), lead(a_ids), lead(a_mask),
                                             shared=n), static_argnums=0)
  want, got = embed(0), embed(Ls)
  assert got.shape == (G, R, model.cfg.hidden_size)
  _close(got, want, "agent_embeddings")


@pytest.fixture(scope="module")
def setup():
  model, encoder, params = mf_setup.make_model()
  batch = mf_setup.with_topic(mf_setup.make_batch(seed=3, e=8), TOPIC, seed=4)
  return model, encoder, params, batch


def test_losses_with_a_topic_block_equal_the_unshared(setup):
  """IB-Tune (latent and text mean field), the policy loss with contexts, and the head stage's teacher-forced
  mean field: the same values and gradients with the topic (and the context or summary before it) computed once
  per step, and with the context alone computed once (one-block prompts), as with every prompt computed whole."""
  model, encoder, params, batch = setup
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  params = {**params, "mf_lm": params["lm"]}
  losses = {
      "ib": lambda p, n, s: ib_tune_loss(model=model, encoder=encoder, params=p, batch=batch,
                                         rng=jax.random.PRNGKey(7), beta=0.01, agents=2, topic_len=n if s else 0)[0],
      "policy": lambda p, n, s: policy_loss(model=model, params=p, batch=batch, rng=jax.random.PRNGKey(7),
                                            context=mf_setup.CONTEXT, context_kinds=(1, 2), topic_len=n,
                                            share_prefix=s)[0],
      "text": lambda p, n, s: text_ib_tune_loss(model=model, spec=mf_setup.TEXT, params=p, batch=batch,
                                                rng=jax.random.PRNGKey(7), beta=0.01, topic_len=n,
                                                share_prefix=s)[0],
  }
  for name, f in losses.items():
    grad = jax.jit(jax.value_and_grad(f), static_argnums=(1, 2))
    l1, g1 = grad(params, 0, False)
    for n in ((0, TOPIC) if name != "ib" else (TOPIC,)):  # ib has no context: topic 0 shares nothing
      l2, g2 = grad(params, n, True)
      np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6, err_msg=f"{name}, topic {n}")
      _same_gradients(g1, g2, f"{name}, topic {n}")
  tf = jax.jit(lambda n: teacher_forced_posteriors(model=model, encoder=encoder, params=params, batch=batch,
                                                   topic_len=n), static_argnums=0)
  jax.tree.map(lambda a, b: _close(b, a, "teacher-forced mean field"), tf(0), tf(TOPIC))


@pytest.mark.parametrize("method", ["mf", "popular", "state", "mf_text"])
def test_rollouts_with_a_topic_block_equal_the_unshared(setup, method):
  model, encoder, params, batch = setup
  params = {**params, "mf_lm": params["lm"]}
  kw = dict(method=method, encoder=encoder, context=mf_setup.CONTEXT, rng=jax.random.PRNGKey(11), warmup=2,
            text=mf_setup.TEXT)
  ref = jax.device_get(simulate(model, params, batch, share_prefix=False, **kw))
  # the topic block with the context (or summary) before it computed once; and the context alone (one block)
  for topic in ((TOPIC, 0) if method in ("popular", "mf_text") else (TOPIC,)):
    out = jax.device_get(simulate(model, params, batch, topic_len=topic, **kw))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_array_equal(out.summary, ref.summary)
    _close(out.real_logprobs, ref.real_logprobs, f"real actions' log-probs, topic {topic}")
    _close(out.mf_kl, ref.mf_kl, "mean field's KL")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (conftest forces 8 CPU devices)")
def test_on_a_mesh_the_shared_path_equals_the_single_device_unshared_one(setup):
  """The IB-Tune train step and an `mf` rollout on a (2, 2, 2) mesh with the topic computed once equal the
  single-device step and rollout that compute it for every agent."""
  model, encoder, params, batch = setup
  tx = make_optimizer(params, trainable="lora+mf", lr=1e-2, steps=10, warmup=1)
  loss = lambda n: lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params,
                                                                 batch=batch, rng=rng, beta=0.01, topic_len=n)
  from mfjax.ibtune import TrainState
  ref_state = TrainState(jnp.int32(0), jax.tree.map(jnp.array, params), tx.init(params))
  ref, ref_m = jit_train_step(loss_fn=loss(0), tx=tx)(ref_state, {k: jnp.asarray(v) for k, v in batch.items()},
                                                       jax.random.PRNGKey(7))
  mesh = make_mesh((2, 2, 2))
  p_sh = policy_shardings(model, encoder, params, mesh)
  state, shardings = sharded_state(params, tx, mesh=mesh, param_shardings=p_sh)
  step = jit_train_step(loss_fn=loss(TOPIC), tx=tx, mesh=mesh, state_shardings=shardings)
  out, m = step(state, global_batch(batch, mesh), jax.random.PRNGKey(7))
  np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m["grad_norm"]), float(ref_m["grad_norm"]), rtol=1e-5)
  jax.tree.map(lambda a, b: _close(b, a, "params after the step"), ref.params, out.params)
  kw = dict(method="mf", encoder=encoder, rng=jax.random.PRNGKey(11), warmup=2)
  ref = jax.device_get(simulate(model, params, batch, **kw))
  got = to_host(simulate(model, params, batch, mesh=mesh, topic_len=TOPIC, **kw))
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  _close(got.real_logprobs, ref.real_logprobs, "real actions' log-probs")


def test_batches_with_a_topic_block():
  """`topic_len`: the topic's tokens (its start) in the first columns, alike for every agent of an event, empty
  slots included; each agent's own part after them, its end kept; decoded, the two parts are the prompt."""
  from mfjax.data import train_tokenizer
  topic = "某地发生地震，官方辟谣称消息不实，请大家不要转发" * 3
  actions = tuple(Action(id=str(i), agent=f"u{i}", time=float(i), text=("转发" if i % 2 else "不信，谣言吧"),
                         parent="") for i in range(7))
  events = [Event("e1", topic, 0.0, None, actions), Event("e2", "短话题", 0.0, None, actions[:3])]
  with tempfile.TemporaryDirectory() as d:
    tok = train_tokenizer([topic, "短话题"] + [a.text for a in actions] + [policy_prompt(topic, "转发层级1")] * 20, 600, d)
  cfg = BatchConfig(steps=2, agents_per_step=3, prompt_len=40, action_len=8, topic_len=12)
  batch = make_step_batch(events, tok, cfg)
  ids, mask = batch.prompt_ids, batch.prompt_mask
  for e in range(2):
    assert (ids[e, :, :, :12] == ids[e, 0, 0, :12]).all() and (mask[e, :, :, :12] == mask[e, 0, 0, :12]).all()
  head = tok.decode(ids[0, 0, 0, :12][mask[0, 0, 0, :12] == 1])
  # (byte-level tokens: the cut may fall inside a character, decoded as U+FFFD)
  assert head.startswith("话题：") and topic.startswith(head[len("话题："):].rstrip("\ufffd")) and mask[0, 0, 0, :12].all()
  n_short = len(tok("话题：短话题\n", add_special_tokens=False)["input_ids"])
  assert n_short < 12 and batch.report["topics_truncated"] == 1  # the long topic; the short one fits
  short = tok.decode(ids[1, 0, 0, :12][mask[1, 0, 0, :12] == 1])
  assert short == "话题：短话题\n" and mask[1, 0, 0, :12].sum() == n_short  # left-padded in its block
  own = tok.decode(ids[0, 0, 0, 12:][mask[0, 0, 0, 12:] == 1])
  assert own == "用户：转发层级1，发布后0.0小时\n评论："
  assert (mask[..., -1][batch.agent_mask] == 1).all()  # the cue ends every agent's prompt
  with pytest.raises(ValueError, match="topic_len"):
    BatchConfig(prompt_len=16, topic_len=16)
