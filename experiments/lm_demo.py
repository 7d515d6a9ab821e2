"""Foundation demo: a tiny Qwen2-style LM trained from scratch on the built-in
Weibo-style corpus, then sampled with the jitted KV-cache sampler.

Shows: tokenizer training, the Flax decoder, a jitted train step with optax,
orbax resume, HF export, and that sampled reactions reproduce each topic's
doubt rate. About 30 s on 2 CPU cores (32 s with the compile cache off;
`smoke`: 11 s).

  python -m mfjax lm-demo --config experiments/lm_demo.py --workdir runs/lm_demo
  python -m mfjax lm-demo --config experiments/lm_demo.py:smoke --set train.steps=50
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed for init, batches and sampling
  c.data = ml_collections.ConfigDict()
  c.data.n_per_topic = 400  # reactions generated per built-in topic
  c.data.max_len = 48  # tokens per training sequence (left-padded)
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.vocab_size = 512  # byte-level BPE size (>= 259)
  c.model = ml_collections.ConfigDict()
  c.model.family = "qwen2"  # qwen2 | qwen3 | llama | mistral
  c.model.hidden_size = 128  # width D
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2  # grouped-query attention
  c.model.intermediate_size = 256  # SwiGLU width
  c.model.tie_word_embeddings = True
  c.train = ml_collections.ConfigDict()
  c.train.steps = 400  # optimizer steps; more = closer doubt rates
  c.train.batch_size = 32
  c.train.lr = 3e-3  # peak learning rate (cosine decay after warmup)
  c.train.warmup = 20
  c.train.weight_decay = 0.01
  c.train.log_every = 25  # steps between metrics lines
  c.train.ckpt_every = 100  # steps between orbax checkpoints
  c.sample = ml_collections.ConfigDict()
  c.sample.n_per_topic = 128  # reactions sampled per topic
  c.sample.max_new_tokens = 24
  c.sample.temperature = 1.0  # 1.0 = the model's own distribution
  c.sample.top_p = 1.0
  if arg == "smoke":
    c.data.n_per_topic = 100
    c.model.hidden_size = 64
    c.model.intermediate_size = 128
    c.train.steps = 60
    c.train.log_every = 20
    c.train.ckpt_every = 30
    c.sample.n_per_topic = 16
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for lm_demo (use '' or 'smoke')")
  return c
