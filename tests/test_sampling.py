"""The jitted KV-cache sampler: filters, eos, determinism, compile-once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfjax import model as M
from mfjax import sampling
from mfjax.policy import action_logprobs


@pytest.fixture(scope="module")
def tiny():
  model = M.Decoder(M.tiny("qwen2", init_std=0.2))
  return model, M.init_params(model, jax.random.PRNGKey(0))


def _prompts(seed=0):
  rng = np.random.default_rng(seed)
  mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], np.int32)
  return np.where(mask == 1, rng.integers(3, 256, mask.shape), 0), mask


def test_generate_compiles_once_per_shape(tiny):
  model, params = tiny
  tokens, mask = _prompts()
  kw = dict(max_new_tokens=7, top_k=5, top_p=0.9)
  sampling.generate(model, params, tokens, mask, rng=jax.random.PRNGKey(0), temperature=1.0, **kw)
  before = sampling._generate._cache_size()
  other_tokens, other_mask = _prompts(seed=1)
  for i in range(3):  # new values, rng, temperature, eos: same shapes -> no new compile
    out = sampling.generate(model, params, other_tokens, other_mask, rng=jax.random.PRNGKey(i),
                            temperature=0.5 + i, eos_id=i + 3, **kw)
    out.tokens.block_until_ready()
  assert sampling._generate._cache_size() == before


def test_rows_stop_after_eos(tiny):
  model, params = tiny
  tokens, mask = _prompts()
  free = sampling.generate(model, params, tokens, mask, rng=jax.random.PRNGKey(0), max_new_tokens=10,
                           temperature=0.0)
  eos = int(free.tokens[0, 3])  # row 0 will emit this at step 3 (or earlier)
  out = sampling.generate(model, params, tokens, mask, rng=jax.random.PRNGKey(0), max_new_tokens=10,
                          temperature=0.0, eos_id=eos, pad_id=0)
  ft, ot, om, olp = (np.asarray(x) for x in (free.tokens, out.tokens, out.mask, out.logprobs))
  for row in range(3):
    hits = np.nonzero(ft[row] == eos)[0]
    stop = hits[0] if len(hits) else 10
    np.testing.assert_array_equal(ot[row, :stop + 1], ft[row, :stop + 1])
    assert om[row, :stop + 1].all() and not om[row, stop + 1:].any()
    assert (ot[row, stop + 1:] == 0).all() and (olp[row, stop + 1:] == 0).all()
  assert not om[0, 4:].any()


def test_sampling_is_deterministic_per_rng_and_top_k1_is_greedy(tiny):
  model, params = tiny
  tokens, mask = _prompts()
  run = lambda seed, **kw: np.asarray(sampling.generate(
      model, params, tokens, mask, rng=jax.random.PRNGKey(seed), max_new_tokens=12, **kw).tokens)
  np.testing.assert_array_equal(run(1, temperature=1.0), run(1, temperature=1.0))
  assert (run(1, temperature=1.5) != run(2, temperature=1.5)).any()
  greedy = run(0, temperature=0.0)
  np.testing.assert_array_equal(run(3, temperature=1.0, top_k=1), greedy)
  np.testing.assert_array_equal(run(4, temperature=1.0, top_p=1e-6), greedy)


def _numpy_keep(x, top_k, top_p):
  """Which logits of one row top-k then top-p keep (HF's warpers' rule, ties at the k-th kept)."""
  keep = np.ones(x.size, bool)
  if top_k:
    keep &= x >= np.sort(x)[::-1][top_k - 1]
  if top_p < 1:
    xs = np.where(keep, x, -np.inf)
    order = np.argsort(-xs)
    p = np.exp(xs[order] - xs[order].max())
    p /= p.sum()
    above = np.cumsum(p) - p
    nucleus = np.zeros(x.size, bool)
    nucleus[order[above < top_p]] = True
    keep &= nucleus
  return keep


def test_filter_logits_matches_a_numpy_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 40)).astype(np.float32) * 3
  for top_k, top_p in [(0, 1.0), (7, 1.0), (0, 0.8), (10, 0.5)]:
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), temperature=0.7, top_k=top_k, top_p=top_p))
    x = logits / 0.7
    for row in range(5):
      keep = _numpy_keep(x[row], top_k, top_p)
      np.testing.assert_array_equal(np.isfinite(got[row]), keep)
      np.testing.assert_allclose(got[row][keep], x[row][keep], rtol=1e-6)


@pytest.mark.parametrize("V,k,chunk", [(8192, 50, 512), (1100, 17, 32), (2048, 50, 128), (300, 20, 64), (256, 20, 32)])
def test_top_k_chunked_equals_lax_top_k(V, k, chunk):
  """The GPU's top-k (the top k of each chunk of a row, in stages, then of what is left)
  gives lax.top_k's values and ids exactly: on random rows, rows full of ties, a row of
  5 finite values and one whose only finite values are its last 3 (so that the -inf ids
  lax.top_k picks, the lowest, come from the first chunk). 1100 and 300 are not
  multiples of the chunk (padded); 1100/32 runs four stages, 300/64 (<= 4 chunks) none."""
  rng = np.random.default_rng(V + k)
  noise = rng.normal(size=(3, V)).astype(np.float32)
  ties = rng.integers(0, 6, size=(3, V)).astype(np.float32)
  sparse = np.full((2, V), -np.inf, np.float32)
  sparse[0, rng.choice(V, 5, replace=False)] = 1.0
  sparse[1, V - 3:] = rng.normal(size=3)
  x = jnp.asarray(np.concatenate([noise, ties, sparse]))
  want_v, want_i = jax.lax.top_k(x, k)
  got_v, got_i = jax.jit(sampling.top_k_chunked, static_argnames=("k", "chunk"))(x, k=k, chunk=chunk)
  np.testing.assert_array_equal(got_v, want_v)
  np.testing.assert_array_equal(got_i, want_i)
  assert np.isneginf(np.asarray(want_v)[-1, 3:]).all()  # the -inf tail's ids were checked too


def test_gpu_programs_take_top_k_in_chunks(tiny, monkeypatch):
  """XLA's GPU top-k kernel takes k <= 16 and sorts each whole row for a larger k: the
  sampler lowered for CUDA takes its top-k 20 over rows of the chunk (here 32 of the tiny
  model's 256 logits) and then over the 100 candidates left, never over a whole row of
  logits; the CPU program keeps one top-k over the vocabulary."""
  import re
  monkeypatch.setattr(sampling, "GPU_TOP_K_CHUNK", 32)
  model, params = tiny
  tokens, mask = _prompts()
  args = (model, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.PRNGKey(0), jnp.float32(1.0),
          jnp.int32(-1), jnp.int32(0), None, None, None)
  traced = sampling._generate.trace(*args, max_new_tokens=3, top_k=20, top_p=0.9, unroll=True)
  rows = {platform: set(re.findall(r"top_k\(.*k = 20\) : tensor<([0-9x]+)xf32>", traced.lower(
      lowering_platforms=(platform,)).as_text())) for platform in ("cuda", "cpu")}
  assert rows["cpu"] == {"3x256"}, rows
  assert rows["cuda"] == {"3x8x32", "3x5x32", "3x100"}, rows


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (12, 0.9)])
def test_first_token_frequencies_follow_the_model(tiny, top_k, top_p):
  """16384 samples of one prompt: each token's frequency is within 4.5 standard
  errors of softmax(logits / T) renormalised over what top-k and top-p keep
  (observed max |z| ~2; T off by 0.3, or a top-k of 50, gives |z| > 18), and
  no token outside the kept set is drawn (top-k draws among its k candidates)."""
  model, params = tiny
  B, T = 16384, 1.3
  prompt = np.tile(np.array([[5, 17, 99, 4]], np.int32), (B, 1))
  out = sampling.generate(model, params, prompt, np.ones_like(prompt), rng=jax.random.PRNGKey(7),
                          max_new_tokens=1, temperature=T, top_k=top_k, top_p=top_p)
  logits = jax.jit(model.apply)({"params": params}, prompt[:1])[0, -1]
  x = np.asarray(logits, np.float64) / T
  keep = _numpy_keep(x, top_k, top_p)
  probs = np.where(keep, np.exp(x - x.max()), 0.0)
  probs /= probs.sum()
  freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=probs.size) / B
  assert freq[~keep].sum() == 0
  seen = probs > 0.005
  z = (freq - probs)[seen] / np.sqrt(probs * (1 - probs) / B)[seen]
  assert seen.sum() > min(20, keep.sum() - 2) and np.abs(z).max() < 4.5, (keep.sum(), z)
  np.testing.assert_allclose(np.asarray(out.logprobs[:, 0]),
                             np.asarray(jax.nn.log_softmax(logits))[np.asarray(out.tokens[:, 0])], atol=1e-5)


@pytest.mark.parametrize("scan_layers,unroll,scored,new", [(True, True, 5, 5), (True, False, 3, 6),
                                                           (False, True, 6, 3)])
def test_score_and_generate_equals_scoring_then_generating(scan_layers, unroll, scored, new):
  """One pass scoring given continuations and filling the sampler's cache gives
  `action_logprobs`' scores and `generate`'s samples (same rng), with a prefix,
  left-padded prompts, padded continuations, and more or fewer new tokens than
  scored ones."""
  model = M.Decoder(M.tiny("qwen2", init_std=0.2, scan_layers=scan_layers))
  params = M.init_params(model, jax.random.PRNGKey(0))
  tokens, mask = _prompts()
  rng = np.random.default_rng(3)
  score_mask = (np.arange(scored)[None] < np.array([[scored], [2], [1]])).astype(np.int32)
  score_ids = np.where(score_mask == 1, rng.integers(3, 256, score_mask.shape), 0)
  prefix = jax.random.normal(jax.random.PRNGKey(4), (3, 2, model.cfg.hidden_size))
  kw = dict(rng=jax.random.PRNGKey(5), max_new_tokens=new, temperature=1.0, top_k=20, top_p=0.9, eos_id=7,
            prefix_embeds=prefix, unroll_layers=unroll)
  lp, out = sampling.score_and_generate(model, params, tokens, mask, score_ids, score_mask, **kw)
  want = action_logprobs(model, params, tokens, mask, score_ids, score_mask, prefix_NxKxD=prefix)
  assert lp.shape == (3, scored) and (np.asarray(lp)[score_mask == 0] == 0).all()
  np.testing.assert_allclose(lp, want, rtol=1e-6, atol=1e-5)
  ref = sampling.generate(model, params, tokens, mask, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.mask, ref.mask)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, rtol=1e-6, atol=1e-5)
  with pytest.raises(ValueError, match="score_ids"):
    sampling.score_and_generate(model, params, tokens, mask, score_ids[:2], score_mask[:2], **kw)


def test_bad_arguments_are_errors(tiny):
  model, params = tiny
  tokens, mask = _prompts()
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.generate(model, params, tokens, mask, rng=jax.random.PRNGKey(0), max_new_tokens=0)
  with pytest.raises(ValueError, match="differ in shape"):
    sampling.generate(model, params, tokens, mask[:, 1:], rng=jax.random.PRNGKey(0), max_new_tokens=2)


def _byte_vocab(vocab: int, seed: int = 0):
  """Bytes of a made-up byte-level vocabulary: ids 0-2 special, then ASCII letters, lone lead and
  continuation bytes, and whole Chinese characters (some cut in two)."""
  rng = np.random.default_rng(seed)
  pieces = [None, None, None]
  chars = [c.encode() for c in "中文微博谣言转发评论"]
  while len(pieces) < vocab:
    kind = rng.choice(4, p=[0.7, 0.02, 0.02, 0.26])
    pieces.append(bytes([rng.integers(0x61, 0x7B)]) if kind == 0 else
                  bytes([rng.choice([0xC3, 0xE4, 0xE5, 0xE6, 0xE8, 0xF0])]) if kind == 1 else
                  bytes([rng.integers(0x80, 0xC0)]) if kind == 2 else
                  chars[rng.integers(len(chars))][:rng.choice([1, 2, 3, 3, 3, 3])])
  return pieces


def _decodes(pieces, tokens, mask, eos):
  out = []
  for row, keep in zip(np.asarray(tokens), np.asarray(mask)):
    data = b"".join(pieces[t] or b"" for t, k in zip(row, keep) if k and t != eos)  # special: skipped
    try:
      data.decode("utf-8")
      out.append(True)
    except UnicodeDecodeError:
      out.append(False)
  return np.array(out)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (8, 0.9)])
def test_valid_utf8_samples_decode_and_a_valid_draw_is_the_same_draw(tiny, top_k, top_p):
  model, params = tiny
  pieces = _byte_vocab(model.cfg.vocab_size)
  utf8 = sampling.ValidUtf8(pieces)
  rng = np.random.default_rng(3)
  mask = np.ones((64, 6), np.int32)
  tokens = rng.integers(3, model.cfg.vocab_size, mask.shape)
  kw = dict(rng=jax.random.PRNGKey(1), max_new_tokens=9, eos_id=2, pad_id=0, top_k=top_k, top_p=top_p)
  free = sampling.generate(model, params, tokens, mask, **kw)
  valid = sampling.generate(model, params, tokens, mask, utf8=utf8, **kw)
  assert _decodes(pieces, valid.tokens, valid.mask, 2).all()  # every row, eos or cut at the last slot
  ok = _decodes(pieces, free.tokens, free.mask, 2)
  assert 0 < ok.sum() < len(ok)  # unconstrained, this vocabulary breaks some rows and not others
  # a special token other than eos is never drawn under the constraint (it stands for no text)
  special = ((np.asarray(free.tokens) < 2) & np.asarray(free.mask)).any(-1)
  assert not ((np.asarray(valid.tokens) < 2) & np.asarray(valid.mask)).any()
  ok &= ~special
  if top_k == 0:  # with the full distribution a row that was valid is drawn the same (same keys)
    assert ok.sum() > 5
    np.testing.assert_array_equal(np.asarray(valid.tokens)[ok], np.asarray(free.tokens)[ok])
    np.testing.assert_array_equal(np.asarray(valid.logprobs)[ok], np.asarray(free.logprobs)[ok])
  # score_and_generate samples under the same constraint
  scored, both = sampling.score_and_generate(model, params, tokens, mask, tokens[:, :3], mask[:, :3], utf8=utf8, **kw)
  np.testing.assert_array_equal(both.tokens, valid.tokens)


def test_the_utf8_automaton_refuses_what_python_refuses():
  # every 1-3 byte sequence: the table's verdict (from the start, ending between characters) is Python's
  pieces = [bytes([b]) for b in range(256)]
  table = sampling.ValidUtf8(pieces).table
  rng = np.random.default_rng(0)
  for _ in range(3000):
    seq = bytes(rng.integers(0, 256, rng.integers(1, 5)))
    state = 0
    for b in seq:
      state = table[b, state] if state >= 0 else -1
    try:
      seq.decode("utf-8")
      assert state == 0, seq
    except UnicodeDecodeError:
      assert state != 0, seq
