"""The config of the MF-LLM pipeline (`python -m mfjax run|train|simulate|evaluate`):
every field, its default (the quickstart's) and what it does. Experiments in
`experiments/` start from `mf_llm_config()` and change what they need.
"""

import ml_collections


def mf_llm_config() -> ml_collections.ConfigDict:
  """Every field `mfjax.pipeline` reads, with the quickstart's defaults; experiments start here."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed of initialisation, batches and rollouts

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # 'synthetic' (the built-in world) or 'ced' (Weibo events under data.path)
  c.data.path = ""  # folder with train/val/holdout.jsonl.gz (ced only)
  c.data.seed = 0  # synthetic world seed (train; val uses seed+1, eval seed+2)
  c.data.train_events = 512  # events to train on (ced: the first N of train)
  c.data.val_events = 32  # validation events (loss terms during training)
  c.data.eval_events = 64  # events the rollouts are scored on
  c.data.eval_split = "val"  # ced: 'val' (selection) or 'holdout' (final reports only)
  c.data.steps = 12  # T: steps per event
  c.data.agents_per_step = 16  # B: agents (consecutive actions) per step
  c.data.prompt_len = 16  # P: tokens of topic + state (longer prompts keep their end)
  c.data.action_len = 8  # A: tokens of an action incl. <eos> (the sampled length too)

  c.world = ml_collections.ConfigDict()  # synthetic world coefficients (mfjax.data.synthetic.WorldConfig)
  c.world.herding = 10.0  # pull of the population's doubt so far; strong, so that events diverge by early chance
  c.world.mood_herding = 6.0  # pull of the population's sentiment so far
  c.world.share_herding = 6.0  # pull of the population's share rate so far

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.vocab_size = 1024  # byte-level BPE trained on the training events

  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = ""  # local HF folder to start from (skips the `base` stage), e.g. Qwen2-1.5B
  c.model.checkpoint_required = False  # True: an empty model.checkpoint is an error (no silent from-scratch model)
  c.model.dtype = "float32"  # compute dtype with a checkpoint (bfloat16 on accelerators)
  # LM activation rematerialisation: none | full | dots | a jax.checkpoint_policies name (memory for compute;
  # tools/aot_memory.py). With scanned layers, dots_with_no_batch_dims_saveable trained the benchmark's width-512
  # model 12% faster on 2 CPU cores and cut an H100's bfloat16 train step's kernel time 13% (README, Benchmarks)
  c.model.remat = "none"
  # One lax.scan over the layers (compile time flat in depth); False unrolls them (and stores them unstacked):
  # the benchmark's bfloat16 train step took 30% less kernel time unrolled on an H100; its float32 one 7-27%
  # more time on 2 CPU cores
  c.model.scan_layers = True
  # How scanned (stacked) layers run in training and scoring: scan (one lax.scan), unroll (a Python loop over the
  # stacked weights' slices; parameters and checkpoints stay stacked), or auto: unroll on GPUs when model.remat is
  # none, scan elsewhere. The loop cut an H100's bfloat16 train step's kernel time by 30%; with a remat policy (set
  # to save memory) auto scans: looped, Qwen2-1.5B's train step with remat full took 84.0 GiB per device by XLA's
  # CPU estimate against 12.9 GiB scanned on a (1,4,2) mesh (unmeasured on a GPU; README, Benchmarks)
  c.model.layer_loop = "auto"
  c.model.family = "qwen2"  # from scratch: qwen2 | qwen3 | llama | mistral
  c.model.hidden_size = 64  # D (also the mean-field width)
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.intermediate_size = 128
  c.model.tie_word_embeddings = True

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 8  # adapters for the sft / mf stages
  c.lora.alpha = 16.0
  c.lora.targets = "q,v,o,up,down"  # comma-separated: q,k,v,o,gate,up,down

  c.context = ml_collections.ConfigDict()
  c.context.k = 4  # actions quoted by the recent / popular baselines

  c.mf = ml_collections.ConfigDict()
  c.mf.slots = 4  # K prefix vectors
  c.mf.feature_size = 64  # per-agent feature width
  c.mf.hidden_size = 128  # recurrent state width
  c.mf.attention_queries = 0  # attention pooling queries besides the mean (0 = mean only)
  c.mf.init_logvar = -4.0  # initial posterior log-variance
  c.mf.lm_grad = False  # backprop the encoder's loss into the LM that embeds the agents (about 1/3 slower)

  c.ib = ml_collections.ConfigDict()
  c.ib.beta = 1e-3  # weight of the compression term (0 = no compression)
  c.ib.schedule = "constant"  # 'constant' or 'linear' (0 -> beta over ib.warmup steps)
  c.ib.warmup = 0
  c.ib.remat = False  # rematerialise the mean-field scan in the backward pass (memory for compute)
  c.ib.sweep = ""  # comma-separated betas: one extra mf stage + rollouts per beta (experiments/ib_beta_sweep.py)

  # The paper's text mean field, method mf_text (mfjax.meanfield.text): after every step a writer LM (the policy's
  # architecture with its own weights) writes a summary that the policy reads in its prompt. Stage mf_text trains
  # the policy on the relevance and the writer by a score-function gradient (mfjax.ibtune.text_ib_tune_loss).
  c.mf_text = ml_collections.ConfigDict()
  c.mf_text.summary_len = 16  # S: tokens of a summary, <eos> included
  c.mf_text.beta = 1e-3  # weight of the compression term, log q(m | prompt) - log p0(m) in nats per summary

  def stage(steps, lr, events, agents, trainable=None):
    s = ml_collections.ConfigDict()
    s.steps = steps  # optimizer steps
    s.lr = lr  # peak learning rate (warmup, then cosine decay)
    s.warmup = max(steps // 20, 1)
    s.batch_events = events  # events per step (each T x B agents)
    s.agents = agents  # agents per step scored by the NLL (0 = all B; the population history uses all)
    if trainable is not None:
      s.trainable = trainable  # lora+mf | lora | full | mf (frozen policy)
    return s

  c.base = stage(200, 3e-3, 4, 4)  # from-scratch pre-training (skipped with model.checkpoint)
  c.sft = stage(60, 2e-3, 4, 4, "lora")
  c.mf_train = stage(300, 2e-3, 4, 4, "lora+mf")
  c.mf_text_train = stage(300, 2e-3, 4, 4, "lora")  # the mf_text stage: lora (policy and writer adapters) or full

  c.train = ml_collections.ConfigDict()
  c.train.weight_decay = 0.01
  c.train.log_every = 25  # steps between progress lines / metrics.jsonl rows
  c.train.ckpt_every = 100  # steps between orbax checkpoints
  c.train.eval_every = 100  # steps between validation passes (0 = only at the end)

  c.rollout = ml_collections.ConfigDict()
  c.rollout.methods = "state,recent,popular,sft,mf"  # comma-separated
  c.rollout.seeds = 3  # rollout seeds (results are means and std over them)
  c.rollout.warmup = 3  # T_w: steps that take the real actions
  c.rollout.batch_events = 64  # events per rollout call (one compilation)
  c.rollout.temperature = 1.0  # 1.0 = the policy's own distribution
  c.rollout.top_k = 0
  c.rollout.top_p = 1.0

  # The paper's intervention application (mfjax.data.intervention): after the rollouts, every method named here is
  # rolled out again, with the same keys, on the eval events with the last `agents` agents of step `step` writing
  # `text` instead of their own action; results.json and plots/intervention.png compare the steps after it with the
  # rollout without (and, on the synthetic world, with the world's own exact answer). experiments/intervention.py
  c.intervention = ml_collections.ConfigDict()
  c.intervention.text = ""  # the injected action, e.g. a counter-rumor comment ("" = no intervention)
  c.intervention.step = 4  # a rollout step (>= rollout.warmup) before the last
  c.intervention.agents = 4  # 1 to data.agents_per_step
  c.intervention.methods = ""  # comma-separated, of rollout.methods ("" = all of them)

  c.parallel = ml_collections.ConfigDict()  # the device mesh (mfjax.parallel); batches split over data x fsdp
  c.parallel.data = 1  # replicas; -1 = every device the other axes leave (batch_events must divide by data x fsdp)
  c.parallel.fsdp = 1  # parameters and optimizer state sharded along the model width
  c.parallel.tensor = 1  # heads, MLP width and vocabulary split
  # pin the LM's activations by the sharding rules (rows over data x fsdp; heads, MLP width and
  # vocabulary over tensor) rather than leave their layout to XLA's partitioner
  c.parallel.pin_activations = True
  c.parallel.distributed = False  # join the hosts of a pod / multi-host GPU job (also: MFJAX_DISTRIBUTED=1)

  c.eval = ml_collections.ConfigDict()
  c.eval.labeler = "rules"  # offline RuleLabeler
  return c
