"""Throughput benchmarks of mfjax against what the MF-LLM paper's code does.

  python tools/bench.py rollout   # simulate vs HF generate in a Python loop (+ text mean field)
  python tools/bench.py train     # IB-Tune train step vs the same loss in PyTorch/transformers
  python tools/bench.py mfu       # model FLOP/s of the train step and simulate / peak jnp.dot FLOP/s
  python tools/bench.py all
  python tools/bench.py rollout --mfjax-only    # mfjax alone, no reference (to compare two commits)
  python tools/bench.py rollout --mfjax-only --score-real   # as the pipeline's rollouts: real actions scored too
  python tools/bench.py rollout --topic 96   # prompts of a 96-token topic (the event's) + 32 tokens per agent
  python tools/bench.py shared --topic 96    # mfjax alone: the topic computed once per step against every agent

Both sides use the same random Qwen2 (width 512, 8 layers, vocab 8192; the
weights are written by transformers and loaded by mfjax), B=16 agents per
step, prompts of 128 and actions of 32 tokens, one process on the same device
(a GPU when JAX and torch both see one), in the same numerics (`--dtype`):
float32 (the default; on a GPU both sides at full float32 matmul precision,
no TF32), or bfloat16 (rollouts: bfloat16 weights on both sides; training:
float32 weights with bfloat16 matmuls, `torch.autocast` on the reference). Prints one JSON object per
line: bench, case, impl (mfjax | reference), actions_per_s, tokens_per_s,
seconds, mfu where measured, device; the mfjax line of a case carries
`speedup` (its throughput over the reference's) and the issue's `target`.

The reference (the paper's way): per step, transformers `generate` for the B
agents of one event (sampling: top-k 50, top-p 0.95, repetition penalty 1.1),
then, with the text mean field, one more `generate` of a 200-token summary of
the step's actions and the previous summary; a Python loop over steps, one
event after another (timed after one 2-token warm-up `generate`, as mfjax is
timed after its compile). mfjax: `simulate`, one jitted `lax.scan` over steps for
all events at once (top-k 50, top-p 0.95; no repetition penalty), the latent
mean field updated in the same scan; `score_real=False`, since the reference
does not score the real actions either. Case `text_mf_step` times the paper's
own algorithm on both sides: mfjax's text mean field (`mf_text`: the writer, here
the policy's weights, writes a summary of the same length from the previous one
and the step's actions inside the scan, and the policy reads it, which the
reference's policy does not) against the reference's step with its text summary.

Training: the IB-Tune loss (teacher-forced mean field over T steps, every agent
scored, beta 1e-3, the LM fully trained, encoder embeddings without LM
gradient) and an AdamW step; the reference computes the same loss with
transformers and a PyTorch copy of the encoder (same weights: the losses at
the initial weights with m = the posterior mean are printed side by side). Tokens/s count the scored action tokens.

MFU counts only the FLOPs the math needs (matmuls of every linear layer,
causal attention, the LM head where logits are used, the last layer's
queries and MLP where its outputs are used; backward = 2x forward)
and divides by the peak FLOP/s of a large `jnp.dot` in the same process and
dtype (2048^3 on a CPU, 8192^3 on an accelerator).

With `--topic N`, the first N of each prompt's tokens are its event's topic, the same for all its agents;
mfjax computes them once for a step's agents, with the mean field's vectors before them
(`mfjax.model.shared_extend`, the pipeline's `data.topic_len`), unless `--unshared`; the reference reads the
same prompts as before. The FLOPs the math needs then count the topic once per step. `shared` times mfjax's
rollout cases and train step on the same prompts both ways in one process and prints each pair's ratio.

For an accelerator's numbers in one run: `tools/gpu_check.sh` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mfjax.errors import positive_int  # noqa: E402
from mfjax.parallel import distributed  # noqa: E402

TARGETS = {("rollout", "policy_1event"): 1.2, ("rollout", "policy_8events"): 3.0, ("rollout", "mf_step"): 10.0,
           ("rollout", "text_mf_step"): None,  # the paper's algorithm on both sides: no target in the issue
           ("train", "ib_tune"): 2.0, ("mfu", "train_step"): 0.5, ("mfu", "simulate"): 0.5}
SAMPLING = dict(top_k=50, top_p=0.95)


# ----------------------------------------------------------------------------- timing and FLOPs


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def peak_flops(n: int = 0, repeats: int = 10, dtype: str = "float32") -> float:
  """FLOP/s of an n x n x n matmul in `dtype` (the best of `repeats`; n=0: 2048
  on a CPU, 8192 on an accelerator, which 2048 does not fill)."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  return 2 * n ** 3 / min(timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))


def _per_token(cfg) -> tuple[int, int, int]:
  """Multiply-adds of one layer: (of its key and value projections per token,
  of its other linear maps per token: q, o and the MLP, of attention per
  (query, key) pair)."""
  D, H, Nkv, Dh, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  return D * 2 * Nkv * Dh, D * H * Dh + H * Dh * D + 3 * D * F, 2 * H * Dh


def forward_flops(cfg, rows: int, length: int, head_positions: int, outputs: Optional[int] = None,
                  before: int = 0) -> float:
  """A causal forward of `rows` sequences of `length` positions, logits at
  `head_positions` of each. Only the last `outputs` positions' final hidden
  states are used (default: all): the last layer needs the keys and values of
  every position, but its queries, output projection and MLP for those alone.
  `before`: keys and values of that many earlier positions, already computed, that every query also reads."""
  kv, rest, attn = _per_token(cfg)
  Y, n = cfg.num_layers, length if outputs is None else outputs
  pairs = lambda q: q * length - q * (q - 1) / 2 + q * before  # (query, key) pairs of the last q queries
  macs = Y * kv * length + (Y - 1) * (rest * length + attn * pairs(length)) + rest * n + attn * pairs(n)
  return rows * 2 * (macs + cfg.hidden_size * cfg.vocab_size * head_positions)


def shared_forward_flops(cfg, rows: int, group: int, shared: int, length: int, head_positions: int,
                         outputs: Optional[int] = None) -> float:
  """`forward_flops` of rows whose first `shared` positions are alike in each `group` of them, computed once
  per group (0 shared: the plain forward)."""
  if not shared:
    return forward_flops(cfg, rows, length, head_positions, outputs)
  return (forward_flops(cfg, rows // group, shared, 0, outputs=1)
          + forward_flops(cfg, rows, length - shared, head_positions, outputs, before=shared))


def generate_flops(cfg, rows: int, prompt: int, new: int, group: int = 1, shared: int = 0) -> float:
  """Prefill of `prompt` positions (logits of the last; the first `shared` once per `group` rows) and new-1
  cached decode steps."""
  kv, rest, attn = _per_token(cfg)
  Y = cfg.num_layers
  prefill = shared_forward_flops(cfg, rows, group, shared, prompt, 1, outputs=1)
  ctx = sum(prompt + i + 1 for i in range(new - 1))
  decode = rows * ((new - 1) * 2 * (Y * (kv + rest) + cfg.hidden_size * cfg.vocab_size) + 2 * Y * attn * ctx)
  return prefill + decode


def train_step_flops(cfg, E, T, B, P, A, K, topic: int = 0) -> float:
  """IB-Tune step: agent embeddings (forward, no head, no backward; outputs at
  the A action positions) + the policy on every agent with K prefix vectors
  (forward + backward = 3x forward; outputs at the A positions that predict an
  action token); the first `topic` prompt tokens (and the prefix vectors before them) once per step."""
  N = E * T * B
  return (shared_forward_flops(cfg, N, B, topic, P + A, 0, outputs=A)
          + 3 * shared_forward_flops(cfg, N, B, K + topic if topic else 0, K + P + A, A, outputs=A))


def simulate_flops(cfg, E, T, B, P, A, K, mf: bool, topic: int = 0) -> float:
  """Per step: sampling A tokens and (mf) the agent embeddings (the real actions are not scored); the first
  `topic` prompt tokens (and the prefix vectors before them) once per event and step."""
  k = K if mf else 0
  per_step = generate_flops(cfg, E * B, k + P, A, group=B, shared=k + topic if topic else 0)
  if mf:
    per_step += shared_forward_flops(cfg, E * B, B, topic, P + A, 0, outputs=A)
  return T * per_step


# ----------------------------------------------------------------------------- models and data


def hf_config(args):
  import transformers
  heads = args.width // 64
  return transformers.Qwen2Config(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=3 * args.width,
                                  num_hidden_layers=args.layers, num_attention_heads=heads,
                                  num_key_value_heads=max(heads // 4, 1), max_position_embeddings=4096,
                                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=None, pad_token_id=0)


def build(args):
  """(torch model on its device, mfjax model, mfjax params, torch device) with the
  same weights, stored in float32; the model computes in `args.dtype`."""
  import torch
  import transformers

  from mfjax.model import hf
  dev = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  if args.dtype == "float32" and jax.default_backend() != "cpu":
    # the same math on both sides: torch's float32 matmuls are full precision (no TF32) by default
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  torch.manual_seed(0)
  ref = transformers.Qwen2ForCausalLM(hf_config(args)).eval()
  with tempfile.TemporaryDirectory() as tmp:
    ref.save_pretrained(tmp)
    model, params = hf.load_pretrained(tmp, dtype=args.dtype, param_dtype="float32")
  model, params = layered(model, params, args)
  return ref.to(dev), model, params, dev


def layered(model, params, args):
  """(model, params) as `--unroll-layers`, `--unroll-stacked` and `--remat-policy` ask (the same weights)."""
  from mfjax.model import Decoder, unrolled
  model = Decoder(model.cfg.replace(remat_policy=args.remat_policy, unroll_stacked=args.unroll_stacked))
  return unrolled(model, params) if args.unroll_layers else (model, params)


def cast(params, dtype: str):
  """mfjax's sampling weights: `dtype` copies (float32: the originals)."""
  return params if dtype == "float32" else jax.tree.map(lambda x: x.astype(dtype), params)


def rollout_weights(ref, params, dtype: str):
  """The weights both sides sample with: `dtype` copies (float32: the originals)."""
  import torch
  if dtype == "float32":
    return ref, params
  return copy.deepcopy(ref).to(getattr(torch, dtype)), cast(params, dtype)


def autocast(dev: str, dtype: str):
  """The reference's mixed precision for training (float32: none)."""
  import torch
  return contextlib.nullcontext() if dtype == "float32" else torch.autocast(dev, dtype=getattr(torch, dtype))


def make_encoder(model, K: int, init_logvar: float = -4.0):
  from mfjax.meanfield import MeanFieldConfig, MeanFieldEncoder, init_encoder
  D = model.cfg.hidden_size
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=K, width=D, feature_size=256, hidden_size=512,
                                             init_logvar=init_logvar))
  return encoder, init_encoder(encoder, jax.random.PRNGKey(1), D)


def events(args, E: int, T: int, seed: int = 0) -> dict:
  """E events of T steps x B agents, every prompt and action full length (no padding); with `--topic`, the
  prompts' first tokens are the event's, alike for its agents."""
  rng = np.random.default_rng(seed)
  B, P, A, V = args.agents, args.prompt, args.action, args.vocab
  prompts = rng.integers(3, V, (E, T, B, P)).astype(np.int32)
  prompts[..., :args.topic] = rng.integers(3, V, (E, 1, 1, args.topic))
  return {"prompt_ids": prompts,
          "prompt_mask": np.ones((E, T, B, P), np.int32),
          "action_ids": rng.integers(3, V, (E, T, B, A)).astype(np.int32),
          "action_mask": np.ones((E, T, B, A), np.int32), "agent_mask": np.ones((E, T, B), bool),
          "parent": -np.ones((E, T, B), np.int32)}


def _device_kind() -> str:
  return str(jax.devices()[0].device_kind)


def _common(args, bench: str, case: str, **extra) -> dict:
  return {"bench": bench, "case": case, **extra, "dtype": args.dtype, "device": _device_kind()}


def emit(row: dict) -> None:
  print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- rollout


def reference_rollout(ref, dev, batch, args, *, text_mf: bool) -> float:
  """Seconds for the paper's loop over `batch`'s events and steps (see module docstring)."""
  import torch
  E, T = batch["agent_mask"].shape[:2]
  A, S = args.action, args.summary
  gen = dict(do_sample=True, repetition_penalty=1.1, pad_token_id=0, eos_token_id=None, **SAMPLING)
  with torch.no_grad():  # warm-up outside the timing (library loading, kernel selection), as mfjax's compile is
    ids = torch.as_tensor(batch["prompt_ids"][0, 0], dtype=torch.long, device=dev)
    ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2, **gen)
  t0 = time.perf_counter()
  with torch.no_grad():
    for e in range(E):
      summary = torch.zeros((1, 0), dtype=torch.long, device=dev)
      for t in range(T):
        ids = torch.as_tensor(batch["prompt_ids"][e, t], dtype=torch.long, device=dev)
        out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=A, min_new_tokens=A,
                           **gen)
        if text_mf:
          ctx = torch.cat([summary, out[:, ids.shape[1]:].reshape(1, -1)], 1)
          s = ref.generate(input_ids=ctx, attention_mask=torch.ones_like(ctx), max_new_tokens=S, min_new_tokens=S,
                           **gen)
          summary = s[:, ctx.shape[1]:]
  return time.perf_counter() - t0


def text_spec(args):
  """The text mean field's layout for the benchmark's shapes: a summary as long as the reference's (no <eos>)."""
  from mfjax.meanfield import TextMFSpec
  return TextMFSpec(summary_header=(3, 4), writer_header=(5,), actions_header=(6, 7), writer_end=(8,), sep=(9,),
                    eos_id=-1, pad_id=0, summary_len=args.summary, action_len=args.action, agents=args.agents)


def mfjax_rollout(model, params, batch, *, method, encoder, repeats: int, score_real: bool = False, text=None,
                  topic: int = 0, share: bool = True) -> tuple[float, float]:
  """(median seconds of `simulate` over `batch`, compile seconds); `topic`: its topic_len; share=False: every
  agent's prompt computed whole (the topic and the text mean field's summary for every agent)."""
  from mfjax.rollout import simulate
  run = lambda: simulate(model, params, batch, method=method, encoder=encoder, rng=jax.random.PRNGKey(0), warmup=0,
                         temperature=1.0, score_real=score_real, text=text, topic_len=topic, share_prefix=share,
                         **SAMPLING).tokens.block_until_ready()
  first = timed(run)
  secs = float(np.median([timed(run) for _ in range(repeats)]))
  return secs, first - secs


def bench_rollout(args, built) -> None:
  ref, model, params, dev = built
  ref, params = rollout_weights(ref, params, args.dtype)
  encoder, mf = make_encoder(model, args.slots)
  T, B, A = args.steps, args.agents, args.action
  cases = [("policy_1event", 1, "state", False), ("policy_8events", 8, "state", False), ("mf_step", 1, "mf", True),
           ("text_mf_step", 1, "mf_text", True)]
  for case, E, method, text_mf in cases:
    if args.cases and case not in args.cases.split(","):
      continue
    batch = events(args, E, T)
    p = {"lm": params, "mf": mf} if method == "mf" else {"lm": params, "mf_lm": params}
    secs, compile_s = mfjax_rollout(model, p, batch, method=method, encoder=encoder, repeats=args.repeats,
                                    score_real=args.score_real, text=text_spec(args), topic=_topic_len(args),
                                    share=not args.unshared)
    n = E * T * B
    common = _common(args, "rollout", case, events=E, steps=T, agents=B, topic=args.topic, unshared=args.unshared)
    row = {**common, "impl": "mfjax", "method": method, "seconds": secs, "compile_s": compile_s,
           "actions_per_s": n / secs, "tokens_per_s": n * A / secs, "score_real": args.score_real}
    if args.mfjax_only:
      emit(row)
      continue
    ref_s = reference_rollout(ref, dev, batch, args, text_mf=text_mf)
    emit({**common, "impl": "reference", "seconds": ref_s, "actions_per_s": n / ref_s, "tokens_per_s": n * A / ref_s,
          "text_mf_summary_tokens": args.summary if text_mf else 0, "torch_device": dev})
    emit({**row, "speedup": ref_s / secs, "target": TARGETS[("rollout", case)]})


# ----------------------------------------------------------------------------- train


def torch_encoder(mf_params, dev):
  """The mean-field encoder (MeanFieldEncoder, mean aggregation) in PyTorch with the same weights."""
  import torch
  import torch.nn.functional as Fn

  W = {}
  for path, x in jax.tree_util.tree_flatten_with_path(mf_params)[0]:
    W["/".join(str(getattr(k, "key", k)) for k in path)] = torch.tensor(np.asarray(x), device=dev,
                                                                         requires_grad=True)
  dense = lambda name, x: x @ W[f"{name}/kernel"] + W[f"{name}/bias"] if f"{name}/bias" in W else x @ W[
      f"{name}/kernel"]
  gelu = lambda x: Fn.gelu(x, approximate="tanh")

  def features(pooled):
    return dense("feature_out", gelu(dense("feature_in", pooled)))

  def gru(h, x):
    r = torch.sigmoid(dense("cell/ir", x) + dense("cell/hr", h))
    z = torch.sigmoid(dense("cell/iz", x) + dense("cell/hz", h))
    n = torch.tanh(dense("cell/in", x) + r * dense("cell/hn", h))
    return (1 - z) * n + z * h

  def update(state, feats, mask):
    h, mean, count = state
    w = mask.float()
    n = w.sum(-1)
    summary = (feats * w[..., None]).sum(-2) / n.clamp(min=1)[..., None]
    total = count + n
    mean_new = (mean * count[..., None] + summary * n[..., None]) / total.clamp(min=1)[..., None]
    h_new = gru(h, torch.cat([summary, mean_new], -1))
    keep = (n > 0)[..., None]
    return torch.where(keep, h_new, h), torch.where(keep, mean_new, mean), total

  def posterior(state, K, D):
    h, mean, count = state
    x = gelu(dense("head", torch.cat([h, mean, torch.log1p(count)[..., None]], -1)))
    mu = dense("mu_out", x).reshape(*x.shape[:-1], K, D)
    logvar = dense("logvar_out", x).reshape(*x.shape[:-1], K, D).clamp(-12.0, 4.0)
    return mu, logvar

  return W, features, update, posterior


def reference_ib_loss(ref, enc, batch, *, K, beta, hidden_size, feature_size, state_size, noise: bool = True):
  """IB-Tune loss with transformers + the PyTorch encoder (same math as mfjax.ibtune.ib_tune_loss)."""
  import torch
  _, features, update, posterior = enc
  dev = next(ref.parameters()).device
  b = {k: torch.as_tensor(v, device=dev) for k, v in batch.items()}
  E, T, B, P = b["prompt_ids"].shape
  A = b["action_ids"].shape[-1]
  ids = torch.cat([b["prompt_ids"], b["action_ids"]], -1).reshape(-1, P + A).long()
  mask = torch.cat([b["prompt_mask"], b["action_mask"]], -1).reshape(-1, P + A)
  with torch.no_grad():  # agent embeddings: no LM gradient (mf.lm_grad=False)
    hidden = ref.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, P:]
    am = b["action_mask"].reshape(-1, A).float()
    pooled = ((hidden * am[..., None]).sum(1) / am.sum(1).clamp(min=1)[:, None]).reshape(E, T, B, -1)
  feats = features(pooled)
  state = (torch.zeros(E, state_size, device=dev), torch.zeros(E, feature_size, device=dev),
           torch.zeros(E, device=dev))
  ms, kls = [], []
  for t in range(T):
    mu, logvar = posterior(state, K, hidden_size)
    m = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if noise else mu
    ms.append(m)
    kls.append(0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum((-2, -1)))
    state = update(state, feats[:, t], b["agent_mask"][:, t])
  m = torch.stack(ms, 1)  # E, T, K, D
  prefix = m[:, :, None].expand(E, T, B, K, hidden_size).reshape(-1, K, hidden_size)
  embeds = torch.cat([prefix, ref.model.embed_tokens(ids)], 1)
  attn = torch.cat([torch.ones(ids.shape[0], K, device=dev, dtype=mask.dtype), mask], 1)
  h = ref.model(inputs_embeds=embeds, attention_mask=attn).last_hidden_state[:, K + P - 1:-1]
  logp = torch.log_softmax(ref.lm_head(h).float(), -1)
  tok = torch.gather(logp, -1, b["action_ids"].reshape(-1, A, 1).long())[..., 0]
  w = b["action_mask"].reshape(-1, A).float() * b["agent_mask"].reshape(-1, 1).float()
  relevance = -(tok * w).sum() / w.sum().clamp(min=1)
  valid = b["agent_mask"].any(-1).float()
  compression = (torch.stack(kls, 1) * valid).sum() / valid.sum().clamp(min=1)
  return relevance + beta * compression


def train_step_and_state(model, encoder, ps, *, beta: float, topic: int = 0):
  """(the jitted IB-Tune train step, full fine-tuning with AdamW; its initial state,
  on a copy of `ps`, since the step donates its state); `topic`: its topic_len."""
  from mfjax.ibtune import TrainState, ib_tune_loss, jit_train_step, make_optimizer
  loss_fn = lambda params, batch, rng, step: ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                          rng=rng, beta=beta, lm_grad=False, topic_len=topic)
  tx = make_optimizer(ps, trainable="full", lr=1e-5, steps=1000, warmup=1)
  return jit_train_step(loss_fn=loss_fn, tx=tx), TrainState(jnp.int32(0), jax.tree.map(jnp.array, ps), tx.init(ps))


def mfjax_train_seconds(model, encoder, ps, batch, *, beta: float, repeats: int, topic: int = 0) -> float:
  """Median seconds of the jitted IB-Tune train step (`train_step_and_state`) after its compile."""
  step, state = train_step_and_state(model, encoder, ps, beta=beta, topic=topic)
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  state, _ = step(state, jbatch, jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, m = step(state, jbatch, jax.random.PRNGKey(0))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench_train(args, built) -> float:
  import torch

  from mfjax.ibtune import ib_tune_loss
  ref, model, params, dev = built
  E, T, B, A, K = args.train_events, args.train_steps, args.agents, args.action, args.slots
  encoder, mf = make_encoder(model, K)
  batch = events(args, E, T, seed=1)
  beta = 1e-3
  ps = {"lm": params, "mf": mf}
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  loss0 = float(jax.jit(lambda p, b: ib_tune_loss(model=model, encoder=encoder, params=p, batch=b, beta=beta,
                                                  rng=jax.random.PRNGKey(0), lm_grad=False, sample=False)[0])(ps, jbatch))
  secs = mfjax_train_seconds(model, encoder, ps, batch, beta=beta, repeats=args.repeats, topic=_topic_len(args))
  tokens = E * T * B * A
  common = _common(args, "train", "ib_tune", events=E, steps=T, agents=B, topic=args.topic, unshared=args.unshared)
  row = {**common, "impl": "mfjax", "seconds": secs, "tokens_per_s": tokens / secs, "actions_per_s": E * T * B / secs,
         "loss_step0": loss0, "unroll_layers": args.unroll_layers, "unroll_stacked": args.unroll_stacked,
         "remat_policy": args.remat_policy}
  if args.mfjax_only:
    emit(row)
    return secs

  enc = torch_encoder(mf, dev)
  ref.train()
  opt = torch.optim.AdamW(list(ref.parameters()) + list(enc[0].values()), lr=1e-5, weight_decay=0.0)
  kw = dict(K=K, beta=beta, hidden_size=model.cfg.hidden_size, feature_size=256, state_size=512)
  with torch.no_grad(), autocast(dev, args.dtype):
    ref_loss0 = float(reference_ib_loss(ref, enc, batch, noise=False, **kw))
  ref_times = []
  for i in range(args.repeats + 1):
    t0 = time.perf_counter()
    opt.zero_grad()
    with autocast(dev, args.dtype):
      loss = reference_ib_loss(ref, enc, batch, **kw)
    loss.backward()
    opt.step()
    if dev == "cuda":
      torch.cuda.synchronize()
    if i:
      ref_times.append(time.perf_counter() - t0)
  ref.eval()
  ref_s = float(np.median(ref_times))
  emit({**common, "impl": "reference", "seconds": ref_s, "tokens_per_s": tokens / ref_s,
        "actions_per_s": E * T * B / ref_s, "loss_step0": ref_loss0, "torch_device": dev})
  emit({**row, "speedup": ref_s / secs, "target": TARGETS[("train", "ib_tune")]})
  return secs


def bench_mfu(args, built, peak_at_start: float = 0.0, train_seconds: Optional[float] = None) -> None:
  """MFU of the train step and of `simulate` (mf), each its own line. The peak is
  the larger of `peak_at_start` (measured before any other work) and one measured
  now: on a shared 2-core VM the in-process figure after the other benchmarks was
  seen at half the fresh one, which would inflate MFU past 100%. `train_seconds`:
  the same train step already timed by `bench_train` (not compiled and timed again)."""
  _, model, params, _ = built
  peak = max(peak_at_start, peak_flops(dtype=args.dtype))
  E, T, B, A, K = args.train_events, args.train_steps, args.agents, args.action, args.slots
  encoder, mf = make_encoder(model, K)
  ps = {"lm": params, "mf": mf}
  secs = train_seconds or mfjax_train_seconds(model, encoder, ps, events(args, E, T, seed=1), beta=1e-3,
                                              repeats=args.repeats, topic=_topic_len(args))
  flops = train_step_flops(model.cfg, E, T, B, args.prompt, A, K, args.topic)
  base = {"impl": "mfjax", "peak_gflops_per_s": peak / 1e9}
  emit({**_common(args, "mfu", "train_step"), **base, "unroll_layers": args.unroll_layers,
        "unroll_stacked": args.unroll_stacked, "remat_policy": args.remat_policy, "seconds": secs,
        "model_gflops": flops / 1e9,
        "mfu": flops / secs / peak, "tokens_per_s": E * T * B * A / secs, "actions_per_s": E * T * B / secs,
        "target": TARGETS[("mfu", "train_step")]})
  Er = args.mfu_events
  batch = events(args, Er, args.steps)
  secs, _ = mfjax_rollout(model, {"lm": cast(params, args.dtype), "mf": mf}, batch, method="mf", encoder=encoder,
                          repeats=args.repeats, topic=_topic_len(args))
  flops = simulate_flops(model.cfg, Er, args.steps, B, args.prompt, A, K, True, args.topic)
  n = Er * args.steps * B
  emit({**_common(args, "mfu", "simulate", events=Er), **base, "seconds": secs, "model_gflops": flops / 1e9,
        "mfu": flops / secs / peak, "actions_per_s": n / secs, "tokens_per_s": n * A / secs,
        "target": TARGETS[("mfu", "simulate")]})


def bench_shared(args, built) -> None:
  """mfjax alone on prompts with a `--topic`: each rollout case (`--cases`) and the train step, with the topic
  computed for every agent and once per step, in one process; the second line of a pair carries `speedup`
  (unshared seconds over shared) and both the model FLOPs the math needs (the topic once)."""
  _, model, params, _ = built
  if not args.topic:
    raise SystemExit("bench shared: give --topic N, the prompt tokens alike for an event's agents")
  encoder, mf = make_encoder(model, args.slots)
  T, B, A, K = args.steps, args.agents, args.action, args.slots
  rollout_params = cast(params, args.dtype)
  for case, E, method in [("policy_1event", 1, "state"), ("policy_8events", 8, "state"), ("mf_step", 1, "mf")]:
    if args.cases and case not in args.cases.split(","):
      continue
    batch = events(args, E, T)
    p = {"lm": rollout_params, "mf": mf}
    flops = simulate_flops(model.cfg, E, T, B, args.prompt, A, K, method == "mf", args.topic)
    secs = {}
    for topic in (0, args.topic):
      secs[topic], _ = mfjax_rollout(model, p, batch, method=method, encoder=encoder, repeats=args.repeats,
                                     score_real=args.score_real, topic=topic)
      emit({**_common(args, "shared", case, events=E, steps=T, agents=B, topic=args.topic), "impl": "mfjax",
            "method": method, "computed_once": bool(topic), "seconds": secs[topic], "model_gflops": flops / 1e9,
            "actions_per_s": E * T * B / secs[topic], "score_real": args.score_real,
            **({"speedup": secs[0] / secs[topic]} if topic else {})})
  E, Tt = args.train_events, args.train_steps
  ps = {"lm": params, "mf": mf}
  batch = events(args, E, Tt, seed=1)
  flops = train_step_flops(model.cfg, E, Tt, B, args.prompt, A, K, args.topic)
  secs = {}
  for topic in (0, args.topic):
    secs[topic] = mfjax_train_seconds(model, encoder, ps, batch, beta=1e-3, repeats=args.repeats, topic=topic)
    emit({**_common(args, "shared", "ib_tune", events=E, steps=Tt, agents=B, topic=args.topic), "impl": "mfjax",
          "computed_once": bool(topic), "seconds": secs[topic], "model_gflops": flops / 1e9,
          "tokens_per_s": E * Tt * B * A / secs[topic], **({"speedup": secs[0] / secs[topic]} if topic else {})})


def _topic_len(args) -> int:
  """The topic_len mfjax runs with: `--topic`, or 0 with `--unshared`."""
  return 0 if args.unshared else args.topic


def _remat_policy(name: str) -> str:
  """`--remat-policy`'s name, checked as the model will read it."""
  from mfjax.model.transformer import checkpoint_policy
  try:
    checkpoint_policy(name)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return name


def add_model_args(p: argparse.ArgumentParser) -> None:
  """The benchmark model's and batch's sizes (shared with tools/profile_step.py)."""
  p.add_argument("--width", type=positive_int, default=512)
  p.add_argument("--layers", type=positive_int, default=8)
  p.add_argument("--vocab", type=positive_int, default=8192)
  p.add_argument("--agents", type=positive_int, default=16, help="B: agents per step")
  p.add_argument("--prompt", type=positive_int, default=128)
  p.add_argument("--action", type=positive_int, default=32)
  p.add_argument("--slots", type=positive_int, default=4, help="K: latent mean-field prefix vectors")
  p.add_argument("--topic", type=int, default=0,
                 help="the first N prompt tokens are the event's topic, alike for its agents: mfjax computes them "
                      "once per step (with the mean field's vectors before them); the reference reads them as before")
  p.add_argument("--unroll-layers", action="store_true",
                 help="train: run the LM's layers as a Python loop, not a lax.scan over stacked weights "
                      "(model.scan_layers=False; rollouts unroll them either way)")
  p.add_argument("--unroll-stacked", action="store_true",
                 help="train: run the stacked layers as a Python loop over their slices, the weights kept stacked "
                      "(model.layer_loop=unroll)")
  p.add_argument("--remat-policy", default="none", type=_remat_policy,
                 help="train: rematerialise each layer in the backward pass by this policy (model.remat_policy: "
                      "none, full, dots, or a jax.checkpoint_policies name such as "
                      "dots_with_no_batch_dims_saveable, which saves the projections but not attention's scores)")


def check_topic(p: argparse.ArgumentParser, args) -> None:
  """`--topic` leaves each agent a prompt token of its own (else a usage error)."""
  if not 0 <= args.topic < args.prompt:
    p.error(f"--topic {args.topic}: must leave each agent a prompt token of its own (--prompt {args.prompt})")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("bench", choices=["rollout", "train", "mfu", "shared", "all"],
                 help="all: rollout, train and mfu (shared is run on its own)")
  add_model_args(p)
  p.add_argument("--summary", type=positive_int, default=200,
                 help="tokens of a text mean-field summary (the reference's; mfjax's in text_mf_step)")
  p.add_argument("--steps", type=positive_int, default=4, help="T of the rollout cases")
  p.add_argument("--cases", default="",
                 help="rollout: comma-separated subset of policy_1event,policy_8events,mf_step,text_mf_step")
  p.add_argument("--train-events", type=positive_int, default=1)
  p.add_argument("--train-steps", type=positive_int, default=2, help="T of a training batch")
  p.add_argument("--mfu-events", type=positive_int, default=8, help="events of the simulate MFU case")
  p.add_argument("--repeats", type=positive_int, default=3, help="timed runs (median reported)")
  p.add_argument("--mfjax-only", action="store_true",
                 help="time mfjax alone, no reference runs (no speedup): to compare two commits of mfjax")
  p.add_argument("--score-real", action="store_true",
                 help="rollout, with --mfjax-only: simulate also scores the real actions, as the pipeline's "
                      "rollouts do (its NLL column); the reference has no such step, so no speedup is printed")
  p.add_argument("--unshared", action="store_true",
                 help="mfjax computes the --topic and the text mean field's summary for every agent (the same "
                      "prompts, the old way)")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="numerics of both sides (see above); the MFU peak is measured in it")
  args = p.parse_args(argv)
  if args.score_real and not (args.mfjax_only or args.bench == "shared"):
    p.error("--score-real times work the reference does not do: use it with --mfjax-only")
  check_topic(p, args)
  if args.unshared and not args.topic and args.bench != "rollout":
    p.error("--unshared compares against computing a --topic once: give --topic N (without one it changes only "
            "rollout's text_mf_step, whose summary is computed once)")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts
  built = build(args)
  peak = peak_flops(dtype=args.dtype) if args.bench in ("mfu", "all") else 0.0
  if args.bench in ("rollout", "all"):
    bench_rollout(args, built)
  train_seconds = bench_train(args, built) if args.bench in ("train", "all") else None
  if args.bench in ("mfu", "all"):
    bench_mfu(args, built, peak, train_seconds)
  if args.bench == "shared":
    bench_shared(args, built)


if __name__ == "__main__":
  main()
