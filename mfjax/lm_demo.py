"""End-to-end job of the foundation: train a tokenizer and a tiny Qwen2-style
LM from scratch on the built-in Weibo-style corpus, then sample reactions to
each topic with the jitted KV-cache sampler and compare their doubt rate with
the corpus. Everything lands in the workdir:

  workdir/config.json     the resolved config (a rerun must match it)
  workdir/tokenizer/      byte-level BPE (AutoTokenizer loads it)
  workdir/checkpoints/    orbax: params, optimizer state, step (resume point)
  workdir/metrics.jsonl   one line per logged step
  workdir/model/          the final model as a Hugging Face folder
  workdir/samples.jsonl   generated reactions per topic
  workdir/results.json    final loss, doubt rate per topic (corpus vs model)
  workdir/plots/*.png     loss curve, doubt rates

A rerun of the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mfjax import sampling
from mfjax.configs import MODEL_SIZES, ConfigError, check, check_at_least
from mfjax.data import builtin, load_tokenizer, train_tokenizer
from mfjax.data.tokenizers import MIN_VOCAB
from mfjax.ibtune.train import TrainState, fit, jit_train_step, make_optimizer
from mfjax.model import Decoder, ModelConfig, hf, init_params, scratch
from mfjax.runs import log as _log, read_jsonl, write_json
from mfjax.workdir import check_workdir

SEP = "："


def lm_loss(*, model: Decoder, params, tokens_BxL, mask_BxL):
  """Mean next-token NLL over valid target tokens. Returns (loss, aux)."""
  logits = model.apply({"params": params}, tokens_BxL, mask_BxL)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens_BxL[:, 1:, None], axis=-1)[..., 0]
  weights = (mask_BxL[:, 1:] * mask_BxL[:, :-1]).astype(jnp.float32)  # real input -> real target
  n = jnp.maximum(weights.sum(), 1.0)
  loss = (nll * weights).sum() / n
  return loss, {"nll": loss, "tokens": n}


def train_loss(*, model: Decoder, params, batch, rng, step):
  """`lm_loss` of a batch {"tokens", "mask"} as `ibtune.train_step` calls it (`rng` and `step`
  unused: the loss draws nothing); aux adds the "loss" that `ibtune.fit` logs."""
  loss, aux = lm_loss(model=model, params=params, tokens_BxL=batch["tokens"], mask_BxL=batch["mask"])
  return loss, {"loss": loss, **aux}


def encode(tok, texts: list[str], max_len: int, *, add_eos: bool):
  """Token ids and mask [N, max_len] (left-padded), <bos> text [<eos>]."""
  ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if add_eos else [])
         for t in texts]
  too_long = sum(len(x) > max_len for x in ids)
  if too_long:
    raise ConfigError(f"data.max_len: {too_long} of {len(ids)} sequences are longer than {max_len} tokens "
                      f"(the longest has {max(map(len, ids))}); raise it")
  out = np.full((len(ids), max_len), tok.pad_token_id, np.int32)
  mask = np.zeros((len(ids), max_len), np.int32)
  for i, x in enumerate(ids):
    out[i, max_len - len(x):] = x
    mask[i, max_len - len(x):] = 1
  return out, mask


def _model_config(cfg, vocab_size: int, tok) -> ModelConfig:
  """The from-scratch LM of `cfg.model` (`mfjax.model.scratch`, as the pipeline's), sized for prompt + sample."""
  m = cfg.model
  return scratch(m.family, vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                 num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
                 tie_word_embeddings=m.tie_word_embeddings,
                 max_position_embeddings=cfg.data.max_len + cfg.sample.max_new_tokens,
                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """The demo's values, checked before anything runs or is written (ConfigError naming the key)."""
  check_at_least(cfg, 1, "data.n_per_topic", "data.max_len", "train.steps", "train.batch_size", "train.log_every",
                 "train.ckpt_every", "sample.n_per_topic", "sample.max_new_tokens")
  check_at_least(cfg, 0, "train.warmup", "train.weight_decay", "sample.temperature")
  check_at_least(cfg, MIN_VOCAB, "tokenizer.vocab_size")
  check("train.lr", cfg.train.lr > 0, f"must be > 0, got {cfg.train.lr!r}")
  check("train.steps", cfg.train.steps > cfg.train.warmup,
        f"must exceed train.warmup={cfg.train.warmup} (the cosine decay follows it), got {cfg.train.steps}")
  check_at_least(cfg, 1, *MODEL_SIZES)
  check("sample.top_p", 0 < cfg.sample.top_p <= 1, f"must be in (0, 1], got {cfg.sample.top_p!r}")
  no_tokenizer = types.SimpleNamespace(bos_token_id=None, eos_token_id=None, pad_token_id=None)  # not trained yet
  check("model", lambda: _model_config(cfg, cfg.tokenizer.vocab_size, no_tokenizer))


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train (or resume), sample, evaluate, write results. Returns the results dict."""
  check_config(cfg)
  fresh = not os.path.exists(workdir)
  check_workdir(workdir, cfg)
  t0 = time.time()
  data = builtin.corpus(cfg.data.n_per_topic, seed=cfg.seed)
  texts = [builtin.TOPICS[t][0] + SEP + c for t, c in data]
  tok_dir = os.path.join(workdir, "tokenizer")
  try:
    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
      tok = load_tokenizer(tok_dir)
    else:
      tok = train_tokenizer(texts, cfg.tokenizer.vocab_size, tok_dir)
    tokens, mask = encode(tok, texts, cfg.data.max_len, add_eos=True)  # data.max_len is checked only here
  except ConfigError:
    if fresh:  # all of it made by this call: the corrected command must not meet its config.json
      shutil.rmtree(workdir)
    raise
  _log(f"[data] {len(texts)} texts, {int(mask.sum())} tokens, vocab {len(tok)}")

  model = Decoder(_model_config(cfg, len(tok), tok))
  rng = jax.random.PRNGKey(cfg.seed)
  params = init_params(model, rng)
  tx = make_optimizer(params, trainable="full", lr=cfg.train.lr, steps=cfg.train.steps, warmup=cfg.train.warmup,
                      weight_decay=cfg.train.weight_decay)
  state = TrainState(jnp.int32(0), params, tx.init(params))

  # the loop the pipeline's stages use: resume, a log trimmed to the checkpoint, preemption, a non-finite stop
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  state = fit(name="train", workdir=workdir, state=state,
              step_fn=jit_train_step(loss_fn=functools.partial(train_loss, model=model), tx=tx),
              data={"tokens": tokens, "mask": mask}, batch_events=cfg.train.batch_size, steps=cfg.train.steps,
              seed=cfg.seed, log_every=cfg.train.log_every, ckpt_every=cfg.train.ckpt_every, log=_log,
              about=f"{model.cfg.family} width {model.cfg.hidden_size} x {model.cfg.num_layers} layers, "
                    f"{n_params:,} params, batches of {cfg.train.batch_size} texts")
  metrics_path = os.path.join(workdir, "metrics.jsonl")

  model_dir = os.path.join(workdir, "model")
  hf.save_pretrained(model, state.params, model_dir, overwrite=True)
  tok.save_pretrained(model_dir)

  # Sample reactions to every topic and compare the doubt rate with the corpus.
  n = cfg.sample.n_per_topic
  prompts = [builtin.TOPICS[t][0] + SEP for t in range(len(builtin.TOPICS)) for _ in range(n)]
  p_ids, p_mask = encode(tok, prompts, cfg.data.max_len, add_eos=False)
  out = sampling.generate(model, state.params, p_ids, p_mask, rng=jax.random.fold_in(rng, 10_000),
                          max_new_tokens=cfg.sample.max_new_tokens, temperature=cfg.sample.temperature,
                          top_p=cfg.sample.top_p, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
  gen_tokens, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
  generated = [tok.decode(row[m & (row != tok.eos_token_id)], skip_special_tokens=True)
               for row, m in zip(gen_tokens, gen_mask)]
  with open(os.path.join(workdir, "samples.jsonl"), "w", encoding="utf-8") as f:  # the texts as written
    for i, text in enumerate(generated):
      f.write(json.dumps({"topic": i // n, "text": text}, ensure_ascii=False) + "\n")
  per_topic = []
  for t, (topic, _) in enumerate(builtin.TOPICS):
    real = [c for tt, c in data if tt == t]
    per_topic.append({"topic": topic, "doubt_corpus": builtin.doubt_rate(real),
                      "doubt_model": builtin.doubt_rate(generated[t * n:(t + 1) * n])})
  rows = read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
  final_loss = rows[-1]["loss"] if rows else None
  gap = float(np.mean([abs(r["doubt_corpus"] - r["doubt_model"]) for r in per_topic]))
  results = {"final_loss": final_loss, "steps": int(state.step), "doubt_rate": per_topic,
             "doubt_rate_mean_abs_gap": gap, "device": str(jax.devices()[0]), "seconds": time.time() - t0}
  write_json(os.path.join(workdir, "results.json"), results)
  _plots(workdir, rows, per_topic)

  _log(f"\n{'topic':<36}{'doubt corpus':>14}{'doubt model':>13}")
  for r in per_topic:
    _log(f"{r['topic'][:16]:<36}{r['doubt_corpus']:>14.3f}{r['doubt_model']:>13.3f}")
  _log(f"\nmean |gap| {gap:.3f}; examples: {generated[:3]}")
  _log(f"results in {workdir} ({results['seconds']:.0f} s)")
  return results


def _plots(workdir: str, rows: list[dict], per_topic: list[dict]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  if rows:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="next-token NLL", title="training loss")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "plots", "loss.png"), dpi=120)
    plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 3.2))
  x = np.arange(len(per_topic))
  ax.bar(x - 0.2, [r["doubt_corpus"] for r in per_topic], 0.4, label="corpus")
  ax.bar(x + 0.2, [r["doubt_model"] for r in per_topic], 0.4, label="model samples")
  ax.set(xlabel="topic", ylabel="doubt rate", xticks=x, ylim=(0, 1), title="doubt rate per topic")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "plots", "doubt_rate.png"), dpi=120)
  plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
  sys.exit("use: python -m mfjax lm-demo --help")
