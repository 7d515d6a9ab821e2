"""Properties of the decoder that hold by construction (no reference needed)."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mfjax import model as M
from mfjax import sampling
from mfjax.model import lora as lora_lib
from mfjax.parallel import axes


@functools.lru_cache(maxsize=None)
def _make_cached(family, seed, kw):
  cfg = M.tiny(family, init_std=0.2, **dict(kw))
  model = M.Decoder(cfg)
  return model, M.init_params(model, jax.random.PRNGKey(seed))


def _make(family="qwen2", seed=0, **kw):
  """A tiny random model and its params (cached: params are immutable)."""
  return _make_cached(family, seed, tuple(sorted(kw.items())))


def _apply(model, params, *args, **kw):
  """Jitted forward (eager op-by-op dispatch is slow on CPU)."""
  return jax.jit(model.apply, static_argnames=("method", "return_hidden"))({"params": params}, *args, **kw)


def _tokens(B=3, L=9, seed=0, vocab=256):
  return jnp.asarray(np.random.default_rng(seed).integers(3, vocab, (B, L)), jnp.int32)


@pytest.mark.parametrize("family,unroll", [(f, True) for f in M.FAMILIES] + [("qwen3", False)])
def test_kv_cache_decode_equals_full_recomputation(family, unroll):
  """Decoding through the cache (per-layer buffers when unrolled, stacked when
  scanned) gives the log-probs of a full forward over the same tokens."""
  model, params = _make(family)
  prompt = _tokens(B=2, L=5)
  mask = jnp.array([[1] * 5, [0, 0, 1, 1, 1]], jnp.int32)
  out = sampling.generate(model, params, prompt, mask, rng=jax.random.PRNGKey(1), max_new_tokens=12,
                          temperature=1.0, unroll_layers=unroll)
  full = jnp.concatenate([prompt, out.tokens], axis=1)
  full_mask = jnp.concatenate([mask, jnp.ones_like(out.tokens)], axis=1)
  logp = jax.nn.log_softmax(_apply(model, params, full, full_mask), axis=-1)
  # log p(token_t | everything before) recomputed from scratch without a cache
  want = jnp.take_along_axis(logp[:, 4:-1], out.tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(want), atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", M.FAMILIES)
def test_scanned_equals_unrolled(family):
  scanned, params = _make(family, scan_layers=True)
  unrolled = M.Decoder(scanned.cfg.replace(scan_layers=False))
  flat = M.unstack_layers(params, scanned.cfg.num_layers)
  tokens = _tokens()
  a = _apply(scanned, params, tokens)
  b = _apply(unrolled, flat, tokens)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  restacked = M.stack_layers(flat, scanned.cfg.num_layers)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, restacked)


@pytest.mark.parametrize("family,remat", [("qwen2", "none"), ("mistral", "full"),
                                          ("qwen3", "dots_with_no_batch_dims_saveable")])
def test_unroll_stacked_equals_the_scan(family, remat):
  """`unroll_stacked` runs the stacked parameters layer by layer: the same
  logits (prefix vectors, left padding, with and without `queries_from`), the
  same loss and gradients (in the same stacked layout), the same KV cache; and
  its program holds no loop over the layers."""
  scanned, params = _make(family, scan_layers=True, remat_policy=remat)
  loop = M.Decoder(scanned.cfg.replace(unroll_stacked=True))
  B, L, K, q = 3, 9, 2, 5
  tokens = _tokens(B=B, L=L, seed=7)
  mask = jnp.ones((B, L), jnp.int32).at[2, :4].set(0)
  prefix = _apply(scanned, params, _tokens(B=B, L=K, seed=8), method=M.Decoder.embed)
  fwd = jax.jit(lambda m, p, qf: m.apply({"params": p}, tokens, mask, prefix_embeds_BxKxD=prefix, queries_from=qf),
                static_argnums=(0, 2))

  def nll(p, m, qf):
    logp = jax.nn.log_softmax(fwd(m, p, qf)[:, q - qf:-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, q + 1:, None], axis=-1))

  for qf in (0, q):
    np.testing.assert_allclose(np.asarray(fwd(loop, params, qf)), np.asarray(fwd(scanned, params, qf)),
                               atol=1e-5, rtol=0)
  # the gradient through the last layer's own path (queries_from) and the others' loop
  grad = jax.jit(jax.value_and_grad(nll), static_argnums=(1, 2))
  (l1, g1), (l2, g2) = grad(params, scanned, q), grad(params, loop, q)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  assert jax.tree.structure(g1) == jax.tree.structure(g2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5), g1, g2)
  assert "stablehlo.while" not in grad.lower(params, loop, q).as_text()
  assert "stablehlo.while" in grad.lower(params, scanned, q).as_text()

  S = K + L + 1
  kv_mask = jnp.concatenate([jnp.ones((B, K), jnp.int32), mask, jnp.ones((B, 1), jnp.int32)], axis=1)
  positions = M.positions_from_mask(kv_mask[:, :K + L])
  ext = lambda m: _apply(m, params, tokens, kv_mask, positions, M.KVCache.zeros(m.cfg, B, S), jnp.int32(0),
                         prefix_embeds_BxKxD=prefix, method=M.Decoder.extend)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0),
               ext(scanned), ext(loop))


def test_kv_cache_forms_agree():
  """One prefill + one decode step: a scanned stack with a stacked cache, an
  unrolled one with per-layer buffers (`KVCache.zeros` of its config) and an
  unrolled one with a stacked cache give the same logits and cache contents;
  a scanned stack refuses per-layer buffers."""
  scanned, params = _make("qwen2", scan_layers=True)
  unrolled = M.Decoder(scanned.cfg.replace(scan_layers=False))
  flat = M.unstack_layers(params, scanned.cfg.num_layers)
  B, P, S = 2, 5, 8
  prompt, mask = _tokens(B=B, L=P), jnp.ones((B, S), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(S), (B, S))

  def run(model, p, cache):
    extend = lambda tok, pos, c, i: _apply(model, p, tok, mask, pos, c, jnp.int32(i), method=M.Decoder.extend)
    logits0, _, cache = extend(prompt, positions[:, :P], cache, 0)
    logits1, _, cache = extend(prompt[:, -1:], positions[:, P:P + 1], cache, P)
    stacked = lambda x: np.asarray(jnp.stack(x) if isinstance(x, tuple) else x)
    return np.asarray(logits0), np.asarray(logits1), stacked(cache.k), stacked(cache.v)

  per_layer = M.KVCache.zeros(unrolled.cfg, B, S)
  assert isinstance(per_layer.k, tuple) and len(per_layer.k) == scanned.cfg.num_layers
  want = run(scanned, params, M.KVCache.zeros(scanned.cfg, B, S))
  assert np.abs(want[2][:, :, :, :P + 1]).min() > 0 and not want[2][:, :, :, P + 1:].any()  # slots 0..P written
  for got in (run(unrolled, flat, per_layer), run(unrolled, flat, M.KVCache.zeros(scanned.cfg, B, S))):
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="stacked KVCache"):
    run(scanned, params, per_layer)


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("policy", ["full", "dots", "dots_with_no_batch_dims_saveable"])
def test_remat_equals_plain(scan_layers, policy):
  plain, params = _make("llama", scan_layers=scan_layers)
  remat = M.Decoder(plain.cfg.replace(remat_policy=policy))
  tokens = _tokens()

  def loss(p, m):
    logp = jax.nn.log_softmax(_apply(m, p, tokens), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1))

  l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, plain)))(params)
  l2, g2 = jax.jit(jax.value_and_grad(lambda p: loss(p, remat)))(params)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5), g1, g2)


@pytest.mark.parametrize("family,scan_layers,remat", [("qwen2", True, "none"), ("qwen2", False, "none"),
                                                      ("mistral", True, "full"), ("llama", False, "dots")])
def test_queries_from_equals_the_tail_of_a_full_forward(family, scan_layers, remat):
  """`queries_from` q: outputs, gradients and cache equal those of a full
  forward's tokens q.. (with prefix vectors and left padding; mistral's sliding
  window; remat), and the last layer really runs on fewer positions."""
  model, params = _make(family, scan_layers=scan_layers, remat_policy=remat)
  B, L, K = 3, 9, 2
  tokens = _tokens(B=B, L=L, seed=4)
  mask = jnp.ones((B, L), jnp.int32).at[1, :3].set(0)
  prefix = _apply(model, params, _tokens(B=B, L=K, seed=5), method=M.Decoder.embed)
  fwd = jax.jit(model.apply, static_argnames=("return_hidden", "queries_from"))
  full_logits, full_hidden = fwd({"params": params}, tokens, mask, prefix_embeds_BxKxD=prefix, return_hidden=True)

  def nll(p, q):
    logits = fwd({"params": p}, tokens, mask, prefix_embeds_BxKxD=prefix, queries_from=q)
    logits = logits if q else logits[:, 5:]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 6:, None], axis=-1))

  for q in (1, 5, L - 1):
    logits, hidden = fwd({"params": params}, tokens, mask, prefix_embeds_BxKxD=prefix, return_hidden=True,
                         queries_from=q)
    assert logits.shape == (B, L - q, model.cfg.vocab_size) and hidden.shape == (B, L - q, model.cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full_logits[:, q:]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(full_hidden[:, q:]), atol=1e-5, rtol=0)
  l1, g1 = jax.jit(jax.value_and_grad(nll), static_argnums=1)(params, 0)
  l2, g2 = jax.jit(jax.value_and_grad(nll), static_argnums=1)(params, 5)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5), g1, g2)

  # extend: the cache gets every position's keys and values either way
  slots = K + L + 2
  kv_mask = jnp.concatenate([jnp.ones((B, K), jnp.int32), mask, jnp.ones((B, 2), jnp.int32)], axis=1)
  positions = M.positions_from_mask(kv_mask[:, :K + L])
  ext = jax.jit(functools.partial(model.apply, method=M.Decoder.extend), static_argnames=("queries_from",))
  cache = M.KVCache.zeros(model.cfg, B, slots)
  want_logits, _, want_cache = ext({"params": params}, tokens, kv_mask, positions, cache, jnp.int32(0),
                                   prefix_embeds_BxKxD=prefix)
  logits, _, got_cache = ext({"params": params}, tokens, kv_mask, positions, cache, jnp.int32(0),
                             prefix_embeds_BxKxD=prefix, queries_from=L - 1)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits[:, -1:]), atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0),
               want_cache, got_cache)

  # fewer FLOPs (read unrolled: XLA's cost analysis counts a loop's body once)
  unrolled, flat = M.unrolled(model, params)
  flops = lambda q: jax.jit(unrolled.apply, static_argnames="queries_from").lower(
      {"params": flat}, tokens, mask, prefix_embeds_BxKxD=prefix, queries_from=q).compile().cost_analysis()["flops"]
  assert flops(L - 1) < 0.8 * flops(0)
  with pytest.raises(ValueError, match="queries_from"):
    fwd({"params": params}, tokens, mask, queries_from=L)


def test_unknown_remat_policy_is_an_error():
  with pytest.raises(ValueError, match="remat_policy"):
    _make(remat_policy="sometimes")


@pytest.mark.parametrize("family", M.FAMILIES)
def test_prefix_embeddings_equal_extra_tokens(family):
  """K prefix vectors == K extra tokens whose embeddings are those vectors."""
  model, params = _make(family)
  extra = _tokens(B=3, L=4, seed=1)
  tokens = _tokens(B=3, L=7, seed=2)
  mask = jnp.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1], [1] * 5 + [0, 0]], jnp.int32)
  prefix = _apply(model, params, extra, method=M.Decoder.embed)
  with_prefix, h1 = _apply(model, params, tokens, mask, prefix_embeds_BxKxD=prefix, return_hidden=True)
  as_tokens, h2 = _apply(model, params, jnp.concatenate([extra, tokens], 1),
                              jnp.concatenate([jnp.ones_like(extra), mask], 1), return_hidden=True)
  assert with_prefix.shape == (3, 7, model.cfg.vocab_size) and h1.shape == (3, 7, model.cfg.hidden_size)
  valid = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(with_prefix)[valid], np.asarray(as_tokens[:, 4:])[valid], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(h1)[valid], np.asarray(h2[:, 4:])[valid], atol=1e-5, rtol=0)


def test_prefix_embeddings_in_generate_equal_extra_tokens():
  model, params = _make("qwen3")
  extra = _tokens(B=2, L=3, seed=3)
  prompt = _tokens(B=2, L=5, seed=4)
  mask = jnp.array([[1] * 5, [0, 0, 1, 1, 1]], jnp.int32)
  prefix = _apply(model, params, extra, method=M.Decoder.embed)
  a = sampling.generate(model, params, prompt, mask, rng=jax.random.PRNGKey(0), max_new_tokens=8, temperature=0.0,
                        prefix_embeds=prefix)
  # same sequence as tokens: [extra, pads, prompt] (the mask hides the pads)
  b = sampling.generate(model, params, jnp.concatenate([extra, prompt], 1),
                        jnp.concatenate([jnp.ones_like(extra), mask], 1), rng=jax.random.PRNGKey(0),
                        max_new_tokens=8, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)


def test_left_padding_does_not_change_a_row():
  model, params = _make("mistral")
  tokens = _tokens(B=1, L=6)
  alone = _apply(model, params, tokens)
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], 1)
  mask = jnp.array([[0, 0, 0] + [1] * 6], jnp.int32)
  np.testing.assert_allclose(np.asarray(_apply(model, params, padded, mask)[:, 3:]), np.asarray(alone),
                             atol=1e-5, rtol=0)


def test_step_t_does_not_see_later_tokens():
  model, params = _make("qwen2")
  tokens = _tokens(B=1, L=8)
  changed = tokens.at[0, 5:].set(7)
  a = _apply(model, params, tokens)
  b = _apply(model, params, changed)
  np.testing.assert_array_equal(np.asarray(a[:, :5]), np.asarray(b[:, :5]))
  assert not np.allclose(np.asarray(a[:, 5:]), np.asarray(b[:, 5:]))


@pytest.mark.parametrize("preset,count", [("qwen2-1.5b", 1_543_714_304), ("qwen2.5-7b", 7_615_616_512),
                                          ("llama3-8b", 8_030_261_248)])
def test_full_size_parameter_counts_by_eval_shape(preset, count):
  assert M.count_params(M.Decoder(M.PRESETS[preset]())) == count


def test_every_parameter_has_logical_axis_names():
  model = M.Decoder(M.tiny("qwen3", lora=M.LoraConfig(rank=4, targets=M.LORA_TARGETS)))
  specs = M.param_specs(model)
  shapes = jax.eval_shape(lambda: M.init_params(model, jax.random.PRNGKey(0)))
  leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
  shape_of = dict((tuple(k.key for k in p), s.shape) for p, s in jax.tree_util.tree_flatten_with_path(shapes)[0])
  assert len(leaves) == len(shape_of)
  for path, spec in leaves:
    key = tuple(k.key for k in path)
    assert len(spec) == len(shape_of[key]), key
    assert all(name in axes.PARAMS for name in spec), (key, spec)
    if key[0] == "layers":
      assert spec[0] == axes.LAYERS
  assert specs["layers"]["attn"]["q"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "heads", "kv")
  assert specs["layers"]["mlp"]["down"]["lora"]["a"] == jax.sharding.PartitionSpec("layers", "mlp", "lora_rank")


# ----------------------------------------------------------------------------- LoRA

LORA = M.LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_fresh_lora_equals_base_and_merge_folds_adapters(scan_layers):
  base, params = _make("qwen2", scan_layers=scan_layers)
  model, lp = lora_lib.add_lora(base, params, LORA, jax.random.PRNGKey(1))
  tokens = _tokens()
  fresh, plain = np.asarray(_apply(model, lp, tokens)), np.asarray(_apply(base, params, tokens))
  if jax.default_backend() == "cpu":
    np.testing.assert_array_equal(fresh, plain)  # xW + 0 is exact when both use the same kernels
  else:  # a GPU may pick another matmul kernel for the fused graph: float32 rounding only (seen: 4e-6)
    np.testing.assert_allclose(fresh, plain, atol=1e-5, rtol=0)
  # give B nonzero values, then merging must reproduce the adapted model
  lp = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
      if lora_lib.is_lora_path(p) else x, lp)
  adapted = _apply(model, lp, tokens)
  assert np.abs(np.asarray(adapted) - np.asarray(_apply(base, params, tokens))).max() > 1e-2
  merged_model, merged = lora_lib.merge_lora(model, lp)
  assert merged_model.cfg.lora is None
  assert not any(lora_lib.is_lora_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(merged)[0])
  # float32 reassociation only: x(W + sAB) vs xW + s(xA)B over 2 layers, logits O(1)
  np.testing.assert_allclose(np.asarray(_apply(merged_model, merged, tokens)), np.asarray(adapted),
                             atol=1e-4, rtol=0)


def test_optax_mask_trains_adapters_only():
  base, params = _make("llama")
  model, lp = lora_lib.add_lora(base, params, LORA, jax.random.PRNGKey(1))
  tx = lora_lib.only_lora(optax.adam(1e-2))
  opt_state = tx.init(lp)
  tokens = _tokens()

  @jax.jit
  def step(p, s):
    def loss(p):
      logp = jax.nn.log_softmax(_apply(model, p, tokens), axis=-1)
      return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1))
    l, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l

  p = lp
  losses = []
  for _ in range(5):
    p, opt_state, l = step(p, opt_state)
    losses.append(float(l))
  assert losses[-1] < losses[0]
  mask = lora_lib.lora_mask(p)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), lp, p)
  for m, c in zip(jax.tree.leaves(mask), jax.tree.leaves(changed)):
    assert m == c  # every adapter moved, no base weight did


def test_lora_config_is_validated():
  with pytest.raises(ValueError, match="unknown LoRA target"):
    M.LoraConfig(targets=("q", "qkv"))
  base, params = _make()
  model, lp = lora_lib.add_lora(base, params, LORA, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="already has LoRA"):
    lora_lib.add_lora(model, lp, LORA, jax.random.PRNGKey(0))


def _dot_operand_dtypes(jaxpr):
  """dtypes of the operands of every dot_general, recursing into sub-jaxprs."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(tuple(str(v.aval.dtype) for v in eqn.invars) + (str(eqn.outvars[0].aval.dtype),))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _dot_operand_dtypes(sub)
  return out


def test_dtype_policy_bf16_compute_float32_softmax_and_logits():
  f32, params = _make("qwen3")
  bf16 = M.Decoder(f32.cfg.replace(dtype="bfloat16"))
  tokens = _tokens()
  dots = _dot_operand_dtypes(jax.make_jaxpr(lambda p: bf16.apply({"params": p}, tokens))(params).jaxpr)
  # the scanned layer body (traced once): 7 projections + 2 attention contractions; then the head
  assert len(dots) == 9 + 1
  assert all(d[:2] == ("bfloat16", "bfloat16") for d in dots)  # params are stored float32, cast for matmuls
  assert dots[-1][2] == "float32"  # logits accumulate in float32
  assert sum(d[2] == "float32" for d in dots) == 2  # and the attention scores
  out = _apply(bf16, params, tokens)
  assert out.dtype == jnp.float32
  ref = np.asarray(_apply(f32, params, tokens))
  # bf16 has 8 mantissa bits: expect ~1% relative error on O(1) logits, not more
  assert np.abs(np.asarray(out) - ref).max() < 0.05 * np.abs(ref).max()
