"""The config of the MF-LLM pipeline (`python -m mfjax run|train|simulate|evaluate`):
every field, its default (the quickstart's) and what it does (`mf_llm_config`);
`check_config`, which refuses a bad value, naming its key, before anything runs or
is written; and what the pipeline derives from it: `plan(cfg)`, the typed `RunPlan`
(the stages to train, the rollouts to make, the intervention), and the typed configs
of the LM, its LoRA adapters and the mean-field encoder.
Experiments in `experiments/` start from `mf_llm_config()` and change what they need.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from mfjax.categories import CLASSES
from mfjax.configs import MODEL_SIZES, ConfigError, check, check_at_least, flat_keys
from mfjax.data.batching import BatchConfig
from mfjax.data.prompts import NUMBER_FEATURES
from mfjax.data.intervention import Intervention
from mfjax.data.synthetic import WorldConfig
from mfjax.data.tokenizers import MIN_VOCAB
from mfjax.evaluation.report import LABELERS
from mfjax.ibtune import TRAINABLE, beta_schedule
from mfjax.meanfield import MeanFieldConfig
from mfjax.model import LoraConfig, ModelConfig, scratch
from mfjax.model.transformer import checkpoint_policy
from mfjax.parallel import MeshConfig
from mfjax.rollout import METHODS


def mf_llm_config() -> ml_collections.ConfigDict:
  """Every field `mfjax.pipeline` reads, with the quickstart's defaults; experiments start here."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed of initialisation, batches and rollouts

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # 'synthetic' (the built-in world) or 'ced' (Weibo events under data.path)
  c.data.path = ""  # folder with train/val/holdout.jsonl.gz (ced only)
  # synthetic: the world's seed (train; val uses seed+1, eval seed+2); ced: the seed of each split's draw of events
  c.data.seed = 0
  # events to train on; ced: all of train, or a draw of N stratified by label (pipeline.data.sample_events), as are
  # val_events and eval_events of their files
  c.data.train_events = 512
  c.data.val_events = 32  # validation events (loss terms during training)
  c.data.eval_events = 64  # events the rollouts are scored on
  c.data.eval_split = "val"  # ced: 'val' (selection) or 'holdout' (final reports only)
  # ced: score only the eval split's events with at least this many actions (0: all), e.g. the long ones that fill
  # rollout.steps x rollout.agents_per_step (experiments/ced_long.py)
  c.data.eval_min_actions = 0
  c.data.steps = 12  # T: steps per event
  c.data.agents_per_step = 16  # B: agents (consecutive actions) per step
  c.data.prompt_len = 16  # P: tokens of topic + state (longer prompts keep their end)
  # Pt > 0: the prompt's first Pt tokens are the topic's own block (its start kept), the same for all of an event's
  # agents, computed once for a step's agents in training, scoring and rollouts (`mfjax.model.shared_extend`); the
  # agent's part (context slot, state) has the other P - Pt (its end kept). 0: one block, no part computed once.
  c.data.topic_len = 0
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
  # model 12% faster on 2 CPU cores and cut an H100's bfloat16 train step's kernel time 13% (docs/benchmarks.md)
  c.model.remat = "none"
  # One lax.scan over the layers (compile time flat in depth); False unrolls them (and stores them unstacked):
  # the benchmark's bfloat16 train step took 30% less kernel time unrolled on an H100; its float32 one 7-27%
  # more time on 2 CPU cores
  c.model.scan_layers = True
  # How scanned (stacked) layers run in training and scoring: scan (one lax.scan), unroll (a Python loop over the
  # stacked weights' slices; parameters and checkpoints stay stacked), or auto: unroll on GPUs when model.remat is
  # none, scan elsewhere. The loop cut an H100's bfloat16 train step's kernel time by 30%; with a remat policy (set
  # to save memory) auto scans: looped, Qwen2-1.5B's train step with remat full took 84.0 GiB per device by XLA's
  # CPU estimate against 12.9 GiB scanned on a (1,4,2) mesh (unmeasured on a GPU; docs/benchmarks.md)
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
  # An attribute-conditioned mf policy: each agent draws its joint category (mfjax.categories.CLASSES) from the
  # population head on (m, its state), then writes its action given the category's tag after its prompt. The
  # mf stage learns the tags from the real actions' labels (eval.labeler); needs ib.population_weight > 0.
  c.mf.attributes = False
  c.mf.head_hidden = 128  # the population head's hidden width
  # The encoder reads each action's joint category too (a learned vector per class added to its feature): the
  # real labels (eval.labeler) in training and warm-up, the drawn classes after. Needs mf.attributes.
  c.mf.category_features = False
  # The population head starts from the model-free `shrunk` forecast: the real classes of the event's first
  # anchor_steps steps (at most rollout.warmup: those a rollout sees) shrunk towards a learned prior by a learned
  # pseudo-count, and learns what the mean field and the agent's state add (mfjax.meanfield.encoder; 0 = off).
  c.mf.anchor_steps = 0
  # What the anchored head starts from: 'shrunk' (above), or 'agents': a per-agent logistic regression (scikit-learn,
  # no LM) from that shrunk forecast over joint classes, the step and the agent's state as numbers, fitted on the
  # training events when the data is prepared (mfjax.evaluation.bounds.AgentAnchor; the `agents` forecaster's)
  c.mf.anchor = "shrunk"
  # With mf.anchor='agents': each agent also reads its event's words so far, as this many numbers (the first
  # anchor_steps steps' texts, char n-gram TF-IDF reduced by an SVD fitted on the training events:
  # mfjax.evaluation.bounds.WarmupWords; no LM); 0 = off
  c.mf.anchor_words = 0
  # The population head's agent state also reads the embeddings of the prompt's last state_tail tokens in order
  # (the agent's own state line, which the whole prompt's mean dilutes in the topic); 0 = that mean only.
  c.mf.state_tail = 0
  # The population head's agent state also reads the state line as numbers (mfjax.data.prompts.NUMBER_FEATURES:
  # the cascade depth, the hours since the post and the uid's activity elsewhere, log1p), after its LayerNorm
  c.mf.state_numbers = False

  c.ib = ml_collections.ConfigDict()
  c.ib.beta = 1e-3  # weight of the compression term (0 = no compression)
  c.ib.schedule = "constant"  # 'constant' or 'linear' (0 -> beta over ib.warmup steps)
  c.ib.warmup = 0
  c.ib.remat = False  # rematerialise the mean-field scan in the backward pass (memory for compute)
  # comma-separated betas: one extra mf stage + rollouts per beta (experiments/ib_beta_sweep.py); `beta@w` also sets
  # that stage's population weight (default ib.population_weight): "0,1e-3,1e-3@0.3"
  c.ib.sweep = ""
  # Weight of IB-Tune's population term: from m_t a head predicts each next-step agent's joint category, scored
  # by cross-entropy against the real action's label (eval.labeler); 0 = no head (unless mf.attributes).
  c.ib.population_weight = 0.0
  # Scheduled sampling of the categories the mean field reads (needs mf.category_features): from step
  # ib.drawn_after on (set it to rollout.warmup), each agent's category enters the teacher-forced mean field as a
  # class drawn from the population head, as in a rollout, with this probability (else its real label; 0 = off).
  # The head, still scored against the real labels, then learns to forecast from its own earlier draws.
  c.ib.drawn_categories = 0.0
  c.ib.drawn_after = 3

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
  # The mf_head stage (steps > 0; needs the population head): after mf, the head alone fitted on the mean field the
  # trained mf stage computes once over the training events (mfjax.ibtune.head_loss), batch_events events a step;
  # the mf rollouts then draw from it. In the mf stage the head sees each training agent about once.
  c.mf_head = ml_collections.ConfigDict()
  c.mf_head.steps = 0
  c.mf_head.lr = 3e-3
  c.mf_head.warmup = 10
  c.mf_head.batch_events = 32
  c.mf_head.events = 0  # training events the mean field is computed over (a seeded draw; 0: all): its time

  c.train = ml_collections.ConfigDict()
  c.train.weight_decay = 0.01
  c.train.log_every = 25  # steps between progress lines / metrics.jsonl rows
  c.train.ckpt_every = 100  # steps between orbax checkpoints
  c.train.eval_every = 100  # steps between validation passes (0 = only at the end)

  c.rollout = ml_collections.ConfigDict()
  # comma-separated; also mf_text (the text mean field) and blind (mf's policy blind to the population: m from the
  # prior, an anchor that knows nothing of the event; needs mf and mf.attributes)
  c.rollout.methods = "state,recent,popular,sft,mf"
  c.rollout.seeds = 3  # rollout seeds (results are means and std over them)
  c.rollout.warmup = 3  # T_w: steps that take the real actions
  c.rollout.batch_events = 64  # events per rollout call (one compilation)
  c.rollout.temperature = 1.0  # 1.0 = the policy's own distribution
  c.rollout.top_k = 0
  c.rollout.top_p = 1.0
  # sample only actions that decode as valid UTF-8: a byte-level token that would break a character is never
  # drawn (mfjax.sampling.ValidUtf8; a draw that was valid is the same draw with it, same keys)
  c.rollout.valid_utf8 = False
  # mf with mf.attributes: after the warm-up the population head reads the mean field of the first step after it
  # (the real warm-up's actions) instead of each later step's, which holds the simulation's own actions; the
  # policy and the mean field run on as before (docs/experiments/ced.md)
  c.rollout.head_warmup_m = False
  # mf with mf.attributes: the temperature of the text written given each agent's drawn category (< 0: the same as
  # rollout.temperature). The head still draws the categories at rollout.temperature, so the population's spread
  # stays the head's; a cooler writer writes text the labeler reads as the drawn category more often
  # (docs/experiments/ced.md)
  c.rollout.writer_temperature = -1.0
  # mf with mf.attributes: the writer's channel (mfjax.rollout.channel), estimated before the rollouts by rolling out
  # mf on this many training events (a seeded draw; kept in the workdir's writer_channel.json): how often the labeler
  # reads each class in the actions written after each tag. The rollouts then draw each tag so that the labelled
  # actions follow the head's distribution, and the mean field reads the class the labeler would. 0: tags drawn from
  # the head as they are.
  c.rollout.writer_channel = 0
  # The eval events' layout, when it is not the training events' (0: data.steps, data.agents_per_step): a trained
  # run rolled out over a longer horizon than it trained on (experiments/ced_long.py, synthetic_long.py). The
  # text mean field's writer reads data.agents_per_step actions a step: mf_text needs the same agents_per_step.
  c.rollout.steps = 0
  c.rollout.agents_per_step = 0

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
  # rules: the offline RuleLabeler (lexicons); trained: TrainedLabeler, learned from the CED hand labels
  # (experiments/labels, docs/labeling.md; needs data.source=ced). It labels the eval actions, the reference
  # simulators' training events and, with a population head, the training targets and warm-up categories.
  c.eval.labeler = "rules"
  # also score the distributions corrected for the labeler's errors (its cross-validated confusion on the hand
  # labels, mfjax.evaluation.correction): results.json "corrected" (needs data.source=ced)
  c.eval.corrected = False
  # drift: step windows "a-b,c-d" (1-based, inclusive, after the warm-up) whose mean KL results.json's "drift"
  # compares, the last against the first, for every method and reference simulator ("": none)
  c.eval.drift = ""
  return c


# ----------------------------------------------------------------------------- config

# The config keys (prefixes) that change only what is rolled out and how it is scored, never a
# trained stage: a run with --trained-from may differ from the run it reads in these alone
# (e.g. data.eval_split=holdout for the final report of a run selected on val).
EVAL_ONLY_KEYS = ("data.eval_split", "data.eval_events", "data.eval_min_actions", "rollout.", "eval.", "parallel.", "intervention.")
# How a run is laid out on devices, not what it computes: a run resumes in its workdir with other
# values of these (a pod job restarted on another slice shape; its checkpoints restore onto the new mesh).
LAYOUT_KEYS = ("parallel.",)
# Which extra stages a run trains, each in its own folder, not how any stage trains: a run goes on
# in its workdir with another value (an IB sweep grown by a beta: its finished stages reused).
STAGE_SET_KEYS = ("ib.sweep",)
ANCHORS = ("shrunk", "agents")  # mf.anchor: what an anchored population head starts from


def check_config(cfg) -> None:
  """Every value `run` reads that has a fixed set of choices or a range, checked
  before anything runs or is written: a ConfigError naming the key. Without it
  a wrong `sft.trainable` failed after the whole `base` stage, and a wrong
  `model.dtype` was ignored until a checkpoint was loaded."""
  missing = sorted(set(flat_keys(mf_llm_config())) - set(flat_keys(cfg)))
  if missing:
    raise ConfigError(f"config lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}: a pipeline experiment's "
                      "get_config starts from mfjax.pipeline_config.mf_llm_config()")
  d, m, r = cfg.data, cfg.model, cfg.rollout
  check("data", lambda: check_data_choices(d))
  check_at_least(cfg, 1, "data.train_events", "data.val_events", "data.eval_events", "data.steps",
                 "data.agents_per_step", "data.prompt_len", "data.action_len", "rollout.seeds", "rollout.batch_events",
                 "train.log_every", "train.ckpt_every")
  check_at_least(cfg, 0, "train.eval_every", "ib.beta", "ib.warmup", "rollout.warmup", "rollout.temperature",
                 "rollout.top_k", "mf.attention_queries")
  check_at_least(cfg, 1, "mf.slots", "mf.feature_size", "mf.hidden_size", "mf.head_hidden", "mf_text.summary_len")
  check_at_least(cfg, 0, "ib.population_weight", "ib.drawn_categories", "ib.drawn_after")
  check("ib.drawn_categories", cfg.ib.drawn_categories <= 1,
        f"{cfg.ib.drawn_categories}: a probability, at most 1")
  check("ib.drawn_categories", not cfg.ib.drawn_categories or cfg.mf.category_features,
        "the drawn categories are what the mean field reads of each action: set mf.category_features=True")
  check("mf.category_features", not cfg.mf.category_features or cfg.mf.attributes,
        "the mean field reads a sampled action's category as the class its agent drew, which only the "
        "attribute-conditioned policy draws: set mf.attributes=True")
  check_at_least(cfg, 0, "mf.anchor_steps", "mf.state_tail", "mf.anchor_words")
  check("data.topic_len", 0 <= d.topic_len < d.prompt_len,
        f"{d.topic_len}: the topic's block must leave the agent's part a token of data.prompt_len={d.prompt_len}")
  check("mf.state_tail", cfg.mf.state_tail <= d.prompt_len - d.topic_len,
        f"{cfg.mf.state_tail}: the head reads the prompt's last tokens, and prompts hold "
        f"data.prompt_len={d.prompt_len} (data.topic_len={d.topic_len} of them the topic's)")
  check("mf.state_numbers", not cfg.mf.state_numbers or _population_head(cfg),
        "only the population head reads the agents' states as numbers: set mf.attributes=True or "
        "ib.population_weight > 0")
  check("rollout.head_warmup_m", not cfg.rollout.head_warmup_m or cfg.mf.attributes,
        "only the attribute-conditioned policy's population head reads the mean field: set mf.attributes=True")
  check("rollout.writer_temperature", cfg.rollout.writer_temperature < 0 or cfg.mf.attributes,
        "only the attribute-conditioned policy writes given a drawn category: set mf.attributes=True "
        "(or leave it at -1, rollout.temperature)")
  check_at_least(cfg, 0, "rollout.writer_channel")
  check("rollout.writer_channel", not cfg.rollout.writer_channel or cfg.mf.attributes,
        "the writer's channel is how the labeler (eval.labeler) reads the actions the attribute-conditioned "
        "policy writes after each tag: set mf.attributes=True")
  check("rollout.writer_channel", not cfg.rollout.writer_channel or cfg.rollout.temperature > 0,
        "the tags are drawn through the channel from the head's distribution at rollout.temperature, which must "
        "then be > 0")
  check("mf.anchor_steps", not cfg.mf.anchor_steps or cfg.mf.attributes,
        "the anchored head is the one an attribute-conditioned policy draws from: set mf.attributes=True")
  check("mf.anchor", cfg.mf.anchor in ANCHORS, f"{cfg.mf.anchor!r}: choose from {ANCHORS}")
  check("mf.anchor", cfg.mf.anchor == "shrunk" or cfg.mf.anchor_steps > 0,
        f"{cfg.mf.anchor!r} is what the anchored head starts from: set mf.anchor_steps > 0 (the steps it reads)")
  check("mf.anchor_words", not cfg.mf.anchor_words or cfg.mf.anchor == "agents",
        "only the agents anchor reads the events' words: set mf.anchor=agents")
  check("mf.anchor_steps", cfg.mf.anchor_steps <= cfg.rollout.warmup,
        f"{cfg.mf.anchor_steps}: the anchor counts the real classes of the first steps, which a rollout sees only in "
        f"its rollout.warmup={cfg.rollout.warmup} steps")
  check("mf.attributes", not cfg.mf.attributes or cfg.ib.population_weight > 0,
        "an attribute-conditioned policy draws from the population head, which ib.population_weight = 0 "
        "leaves untrained: set ib.population_weight > 0")
  check_at_least(cfg, 0, "mf_text.beta")
  check("mf_text_train.trainable", cfg.mf_text_train.trainable in ("lora", "full"),
        f"{cfg.mf_text_train.trainable!r}: the text mean field trains 'lora' (adapters) or 'full'")
  check_at_least(cfg, 0, "rollout.steps", "rollout.agents_per_step", "data.eval_min_actions")
  steps, agents = eval_layout(cfg)
  check("rollout.warmup", r.warmup < steps,
        f"{r.warmup} warm-up steps leave no step of {steps} (rollout.steps or data.steps) to simulate and score")
  check("rollout.agents_per_step", agents == d.agents_per_step or "mf_text" not in _methods(cfg),
        f"{agents}: the text mean field's writer reads data.agents_per_step={d.agents_per_step} actions a step; "
        "leave rollout.agents_per_step at 0 with mf_text")
  check("data.path", not d.path or d.source == "ced",
        f"{d.path!r}: the synthetic world is built in and reads no files; set data.source=ced to read CED "
        "events from data.path (a folder of train/val/holdout.jsonl.gz)")
  check("data.eval_min_actions", not d.eval_min_actions or d.source == "ced",
        "filters the CED eval split by length; the synthetic world's events all have steps x agents actions")
  check("eval.drift", lambda: drift_windows(cfg.eval.drift, r.warmup, steps))
  check("rollout.top_p", 0 < r.top_p <= 1, f"must be in (0, 1], got {r.top_p!r}")
  check("rollout.methods", lambda: _methods(cfg))
  check("rollout.methods", "blind" not in _methods(cfg) or ("mf" in _methods(cfg) and cfg.mf.attributes),
        "'blind' is the attribute-conditioned mf policy blind to the population (its stages): it needs 'mf' in "
        "rollout.methods and mf.attributes=True")
  if cfg.intervention.text:
    check("intervention", lambda: _intervention_of(cfg).check(steps, agents, r.warmup))
    check("intervention.methods", lambda: _intervention_methods(cfg))
  check("eval.labeler", cfg.eval.labeler in LABELERS, f"{cfg.eval.labeler!r} is not one of {LABELERS}")
  check("eval.labeler", cfg.eval.labeler != "trained" or d.source == "ced",
        "the trained labeler learns from the CED hand labels, whose texts it reads from data.path: "
        "it needs data.source=ced")
  check("eval.corrected", not cfg.eval.corrected or d.source == "ced",
        "the labeler's errors are measured on the CED hand labels, whose texts are read from data.path: "
        "it needs data.source=ced")
  check("ib.schedule", lambda: beta_schedule(cfg.ib.beta, cfg.ib.schedule, cfg.ib.warmup))
  check("ib.sweep", lambda: _sweep_stages(cfg))
  check("model.dtype", lambda: _float_dtype(m.dtype))
  check("model.remat", lambda: checkpoint_policy(m.remat))
  check("model.layer_loop", m.layer_loop in LAYER_LOOPS, f"{m.layer_loop!r} is none of {LAYER_LOOPS}")
  if not m.checkpoint:  # a model and tokenizer from scratch
    check_at_least(cfg, MIN_VOCAB, "tokenizer.vocab_size")
    check_at_least(cfg, 1, *MODEL_SIZES)
    check("model", lambda: scratch_model_config(cfg, cfg.tokenizer.vocab_size))
  check("lora", lambda: lora_config(cfg))
  check("mf_head.steps", cfg.mf_head.steps <= 0 or _population_head(cfg),
        "a head-only stage needs the population head (mf.attributes or ib.population_weight > 0)")
  for name in ("base", "sft", "mf_train", "mf_text_train", "mf_head"):
    stage = cfg[name]
    check_at_least(cfg, 0, f"{name}.steps", *(f"{name}.{k}" for k in ("agents", "events") if k in stage))  # 0: all
    check_at_least(cfg, 1, f"{name}.batch_events")
    check(f"{name}.lr", stage.lr > 0, f"must be > 0, got {stage.lr!r}")
    if "trainable" in stage:
      check(f"{name}.trainable", stage.trainable in TRAINABLE, f"{stage.trainable!r} is none of {TRAINABLE}")


def eval_layout(cfg) -> tuple[int, int]:
  """(steps, agents per step) of the eval events: rollout.steps / rollout.agents_per_step, or data's where 0."""
  d, r = cfg.data, cfg.rollout
  return int(r.steps or d.steps), int(r.agents_per_step or d.agents_per_step)


def drift_windows(text: str, warmup: int, steps: int) -> tuple[tuple[int, int], ...]:
  """eval.drift "a-b,c-d" as ((a, b), (c, d)): 1-based inclusive step windows within the scored steps
  (warmup + 1 .. steps), at least two of them (the last is compared with the first), or () for ""."""
  out = []
  for part in (p.strip() for p in str(text).split(",") if p.strip()):
    try:
      a, b = (int(x) for x in part.split("-"))
    except ValueError:
      raise ValueError(f"{part!r} is not a window 'first-last' of steps, e.g. '4-16'") from None
    if not warmup < a <= b <= steps:
      raise ValueError(f"window {part}: steps {warmup + 1}..{steps} are scored (1-based, after the {warmup} "
                       "warm-up steps); first <= last")
    out.append((a, b))
  if len(out) == 1:
    raise ValueError("give at least two windows, e.g. '4-16,193-256': the last is compared with the first")
  return tuple(out)


def _float_dtype(name: str):
  dtype = jnp.dtype(name)  # TypeError for a name that is no dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name!r} is not a floating-point dtype (float32, bfloat16, float16)")
  return dtype


def _methods(cfg) -> list[str]:
  out = [m.strip() for m in cfg.rollout.methods.split(",") if m.strip()]
  bad = [m for m in out if m not in METHODS]
  if bad:
    raise ValueError(f"rollout.methods: unknown {bad}; choose from {METHODS}")
  return out


def _trained_stages(cfg) -> dict[str, str]:
  """{stage: the config section it trains by} for every stage `train` runs or restores for the
  configured methods (the IB sweep's stages train by mf_train, as mf does)."""
  want = _methods(cfg)
  out = {} if cfg.model.checkpoint else {"base": "base"}
  out.update({"sft": "sft"} if "sft" in want else {})
  out.update(dict.fromkeys(_ib_stages(cfg), "mf_train"))
  out.update({"mf_head": "mf_head"} if _head_stage(cfg) else {})
  out.update({"mf_text": "mf_text_train"} if "mf_text" in want else {})
  return out


def _head_stage(cfg) -> bool:
  """Whether the run fits the mf stage's head alone after it (stage mf_head), which the mf rollouts draw from."""
  return "mf" in _methods(cfg) and cfg.mf_head.steps > 0


def _ib_stages(cfg) -> dict[str, tuple[float, float]]:
  """{stage: (beta, population weight)} of every stage IB-Tune trains with the latent mean field: `mf`
  for that method (ib.beta, ib.population_weight), then the sweep's."""
  own = {"mf": (float(cfg.ib.beta), float(cfg.ib.population_weight))} if "mf" in _methods(cfg) else {}
  return {**own, **_sweep_stages(cfg)}


def _sweep_stages(cfg) -> dict[str, tuple[float, float]]:
  """{stage: (beta, population weight)} of the IB sweep, one stage per entry of ib.sweep: `mf_beta<b>` for
  a beta b (at ib.population_weight), `mf_beta<b>_pop<w>` for `b@w` (an entry given twice is a
  ValueError: both would be one stage; a weight > 0 needs the population head)."""
  out = {}
  for entry in (e.strip() for e in str(cfg.ib.sweep).split(",") if e.strip()):
    b, at, w = entry.partition("@")
    beta, weight = float(b), float(w) if at else float(cfg.ib.population_weight)
    if beta < 0 or weight < 0:
      raise ValueError(f"{entry!r}: beta and the population weight must be >= 0")
    if weight > 0 and not _population_head(cfg):
      raise ValueError(f"{entry!r}: a population weight needs the population head (mf.attributes or "
                       "ib.population_weight > 0)")
    if weight == 0 and cfg.mf.attributes:
      raise ValueError(f"{entry!r}: the attribute-conditioned policy draws from the population head, which a "
                       "population weight of 0 leaves untrained")
    name = f"mf_beta{beta:g}" + (f"_pop{weight:g}" if at else "")
    if name in out:
      raise ValueError(f"beta {beta:g}" + (f" with population weight {weight:g}" if at else "") + " is given twice")
    out[name] = (beta, weight)
  return out


def _intervention_of(cfg) -> Optional[Intervention]:
  """The configured intervention, or None (intervention.text empty)."""
  iv = cfg.intervention
  return Intervention(iv.text, int(iv.step), int(iv.agents)) if iv.text else None


def _intervention_methods(cfg) -> list[str]:
  """The methods rolled out again with the intervention (none without one)."""
  if not cfg.intervention.text:
    return []
  want = _methods(cfg)
  out = [m.strip() for m in cfg.intervention.methods.split(",") if m.strip()] or want
  bad = [m for m in out if m not in want]
  if bad:
    raise ValueError(f"{bad} are not in rollout.methods {want}")
  return out


def _population_head(cfg) -> bool:
  """Whether the mean-field encoder has a population head (trained, or drawn from)."""
  return bool(cfg.ib.population_weight > 0 or cfg.mf.attributes)


def check_data_choices(d) -> None:
  """ValueError unless data.source and data.eval_split are ones `pipeline.split_events` reads."""
  if d.source not in ("synthetic", "ced"):
    raise ValueError(f"data.source: must be 'synthetic' or 'ced', got {d.source!r}")
  if d.eval_split not in ("val", "holdout"):
    raise ValueError(f"data.eval_split: must be 'val' or 'holdout', got {d.eval_split!r}")


def _rollout_runs(cfg) -> list[tuple[str, str, str]]:
  """(tag, method, params key) of every rollout: the methods, then the sweep."""
  def of(m: str) -> str:  # 'blind' is the mf stage's policy with the population taken away
    if m in ("state", "recent", "popular"):
      return "base"
    m = "mf" if m == "blind" else m
    return "mf_head" if m == "mf" and _head_stage(cfg) else m
  runs = [(m, m, of(m)) for m in _methods(cfg)]
  runs += [(tag, "mf", tag) for tag in _sweep_stages(cfg)]
  return runs


def _intervention_runs(cfg) -> list[tuple[str, str, str]]:
  """(tag, method, params key) of the rollouts with the intervention (tag: the method's, + `_intervened`)."""
  want = _intervention_methods(cfg)
  return [(f"{tag}_intervened", method, key) for tag, method, key in _rollout_runs(cfg) if tag in want]


# ----------------------------------------------------------------------------- the run plan


@dataclasses.dataclass(frozen=True)
class Stage:
  """A training stage: its folder, the loss it trains by, what it trains, and its schedule."""

  name: str  # its folder in the workdir: base, sft, mf, mf_beta<b>[_pop<w>] (the IB sweep's), mf_head, mf_text
  loss: str  # base (the policy over every context kind), policy (state-only prompts), ib (IB-Tune with the
  # latent mean field), head (mf's population head alone, on its cached mean field), text_ib (IB-Tune with the
  # text mean field): the keys of mfjax.pipeline's LOSSES
  section: str  # the config section its schedule comes from: base | sft | mf_train | mf_head | mf_text_train
  trainable: str  # full | lora | lora+mf | mf | head (mfjax.ibtune.TRAINABLE)
  steps: int  # optimizer steps
  lr: float  # peak learning rate (warmup, then cosine decay)
  warmup: int
  batch_events: int  # events per step
  agents: int  # agents per step scored by the NLL (0: all of them)
  beta: Optional[float] = None  # an ib stage's compression weight (an argument of its compiled step)
  population_weight: Optional[float] = None  # an ib stage's population weight (an argument too)
  events: int = 0  # a head stage's training events (a seeded draw; 0: all of them)


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One method rolled out (every seed) over the eval events."""

  tag: str  # its rollout files' name: the method, or an IB sweep stage; `_intervened` appended with the intervention
  method: str  # of mfjax.rollout.METHODS
  params: str  # the stage whose parameters it rolls out (the baselines: base)
  intervened: bool = False  # over the eval events with intervention.text injected


@dataclasses.dataclass(frozen=True)
class DataPlan:
  """The events, how they become step tensors, and how their actions are labelled."""

  source: str  # synthetic | ced
  path: str  # ced: the folder of train/val/holdout.jsonl.gz
  seed: int
  train_events: int
  val_events: int
  eval_events: int
  eval_split: str  # val | holdout (ced)
  batch: BatchConfig  # T steps of B agents, prompt and action lengths
  world: WorldConfig  # the synthetic world's equations
  checkpoint: str  # a Hugging Face folder whose tokenizer is used ("" : trained from scratch)
  vocab_size: int  # of a tokenizer trained from scratch
  context_k: int  # actions the recent / popular baselines quote
  summary_len: int  # tokens of a text mean field's summary
  labeler: str  # eval.labeler: labels the eval actions and an intervention's text
  corrected: bool  # eval.corrected: score distributions corrected for the labeler's errors too
  categories: bool  # label every action's joint category (the population head's targets)
  attributes: bool  # mf.attributes: the tokenizer learns the tags, and the mf policy reads them
  eval_batch: BatchConfig  # the eval events' layout (rollout.steps / rollout.agents_per_step, else `batch`'s)
  eval_world: WorldConfig  # the synthetic world of the eval events (`world` with their layout)
  eval_min_actions: int  # data.eval_min_actions: score only eval events this long (ced)
  drift: tuple  # eval.drift: ((first, last), ...) 1-based step windows (`drift_windows`)
  numbers: bool = False  # mf.state_numbers: every batch holds each agent's state as numbers (`step_numbers`)
  # mf.anchor='agents': every batch holds each agent's anchor (`mfjax.evaluation.bounds.AgentAnchor`) reading
  # the first `agent_anchor` steps' classes (mf.anchor_steps); 0: none
  agent_anchor: int = 0
  anchor_words: int = 0  # mf.anchor_words: the anchor reads those steps' words too, as this many numbers

  @property
  def label_data(self) -> str:
    """The CED folder whose hand-labelled texts the trained labeler and the correction read ("": none)."""
    return self.path if self.source == "ced" else ""


@dataclasses.dataclass(frozen=True)
class ModelPlan:
  """The policy LM (a checkpoint, or one from scratch) and the mean-field encoder."""

  checkpoint: str  # a local Hugging Face folder ("": from scratch)
  checkpoint_required: bool
  dtype: str  # with a checkpoint
  scratch_fields: dict  # family and sizes of a from-scratch LM (mfjax.model.scratch)
  layer_fields: dict  # how its layers are stored and run (`layer_fields`)
  mf_fields: dict  # the MeanFieldConfig fields but its width
  lm_grad: bool  # mf.lm_grad

  def scratch_config(self, vocab_size: int, **extra) -> ModelConfig:
    """The LM trained from scratch; `extra`: further ModelConfig fields (token ids, positions)."""
    return scratch(vocab_size=vocab_size, **self.scratch_fields, **self.layer_fields, **extra)

  def encoder(self, width: int) -> MeanFieldConfig:
    """The mean-field encoder for an LM of hidden size `width`."""
    return MeanFieldConfig(width=width, **self.mf_fields)


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
  """What every stage shares: weight decay, logging, checkpoints, validation, IB-Tune's settings."""

  weight_decay: float
  log_every: int
  ckpt_every: int
  eval_every: int
  ib_remat: bool
  ib_schedule: str
  ib_warmup: int
  text_beta: float  # mf_text.beta
  population_weight: float  # ib.population_weight
  drawn_categories: float  # ib.drawn_categories
  drawn_after: int  # ib.drawn_after


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
  """How the rollouts run: seeds, real warm-up steps, events per call, the sampler's settings."""

  seeds: int
  warmup: int
  batch_events: int
  temperature: float
  top_k: int
  top_p: float
  valid_utf8: bool  # rollout.valid_utf8
  head_warmup_m: bool = False  # rollout.head_warmup_m
  writer_temperature: Optional[float] = None  # rollout.writer_temperature (None: `temperature`)
  writer_channel: int = 0  # rollout.writer_channel: the training events the writer's channel is estimated on


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What a run does, derived once from its checked config (`plan`): the stages it trains,
  in order, and the rollouts it makes and scores."""

  methods: tuple[str, ...]  # rollout.methods
  stages: tuple[Stage, ...]  # in training order: base (unless model.checkpoint), sft, mf, the sweep, mf_head,
  # mf_text
  rollouts: tuple[Rollout, ...]  # the methods', the sweep's, then those with the intervention
  intervention: Optional[Intervention]
  lora: LoraConfig
  seed: int  # of initialisation, batches and rollouts
  data: DataPlan
  model: ModelPlan
  training: TrainingPlan
  sampling: SamplingPlan  # how every rollout samples
  mesh: MeshConfig
  pin_activations: bool  # parallel.pin_activations

  def stage(self, name: str) -> Stage:
    return next(s for s in self.stages if s.name == name)

  @property
  def sweep(self) -> tuple[Stage, ...]:
    """The IB sweep's stages (`mf_beta<b>`), in the order of ib.sweep."""
    return tuple(s for s in self.stages if s.loss == "ib" and s.name != "mf")

  @property
  def plain(self) -> tuple[Rollout, ...]:
    return tuple(r for r in self.rollouts if not r.intervened)

  @property
  def intervened(self) -> tuple[Rollout, ...]:
    return tuple(r for r in self.rollouts if r.intervened)


def plan(cfg) -> RunPlan:
  """The run `cfg` describes (checked by `check_config` first): nothing downstream splits its
  comma-separated fields again."""
  def stage(name, loss, section, trainable, beta=None, population_weight=None):
    s = cfg[section]
    return Stage(name, loss, section, trainable, int(s.steps), float(s.lr), int(s.warmup), int(s.batch_events),
                 int(s.agents), beta, population_weight=population_weight)

  stages = [] if cfg.model.checkpoint else [stage("base", "base", "base", "full")]
  for name, section in _trained_stages(cfg).items():
    if section == "sft":
      stages.append(stage(name, "policy", section, cfg.sft.trainable))
    elif section == "mf_train":
      stages.append(stage(name, "ib", section, cfg.mf_train.trainable, *_ib_stages(cfg)[name]))
    elif section == "mf_text_train":
      stages.append(stage(name, "text_ib", section, cfg.mf_text_train.trainable))
    elif section == "mf_head":
      h = cfg.mf_head
      stages.append(Stage(name, "head", section, "head", int(h.steps), float(h.lr), int(h.warmup),
                          int(h.batch_events), 0, events=int(h.events)))
  rollouts = [Rollout(*run) for run in _rollout_runs(cfg)]
  rollouts += [Rollout(*run, intervened=True) for run in _intervention_runs(cfg)]
  d, r, t = cfg.data, cfg.rollout, cfg.train
  steps, agents = eval_layout(cfg)
  data = DataPlan(d.source, d.path, int(d.seed), int(d.train_events), int(d.val_events), int(d.eval_events),
                  d.eval_split, BatchConfig(int(d.steps), int(d.agents_per_step), int(d.prompt_len), int(d.action_len),
                                            int(d.topic_len)),
                  WorldConfig(steps=int(d.steps), agents_per_step=int(d.agents_per_step), **cfg.world.to_dict()),
                  cfg.model.checkpoint, int(cfg.tokenizer.vocab_size), int(cfg.context.k), int(cfg.mf_text.summary_len),
                  cfg.eval.labeler, bool(cfg.eval.corrected), _population_head(cfg), bool(cfg.mf.attributes),
                  BatchConfig(steps, agents, int(d.prompt_len), int(d.action_len), int(d.topic_len)),
                  WorldConfig(steps=steps, agents_per_step=agents, **cfg.world.to_dict()), int(d.eval_min_actions),
                  drift_windows(cfg.eval.drift, int(r.warmup), steps), bool(cfg.mf.state_numbers),
                  int(cfg.mf.anchor_steps) if cfg.mf.anchor == "agents" else 0, int(cfg.mf.anchor_words))
  training = TrainingPlan(float(t.weight_decay), int(t.log_every), int(t.ckpt_every), int(t.eval_every),
                          bool(cfg.ib.remat), cfg.ib.schedule, int(cfg.ib.warmup), float(cfg.mf_text.beta),
                          float(cfg.ib.population_weight), float(cfg.ib.drawn_categories), int(cfg.ib.drawn_after))
  sampling = SamplingPlan(int(r.seeds), int(r.warmup), int(r.batch_events), float(r.temperature), int(r.top_k),
                          float(r.top_p), bool(r.valid_utf8), bool(r.head_warmup_m),
                          None if r.writer_temperature < 0 else float(r.writer_temperature), int(r.writer_channel))
  return RunPlan(tuple(_methods(cfg)), tuple(stages), tuple(rollouts), _intervention_of(cfg), lora_config(cfg),
                 int(cfg.seed), data, _model_plan(cfg), training, sampling, MeshConfig.from_config(cfg.parallel),
                 bool(cfg.parallel.pin_activations))


# ----------------------------------------------------------------------------- models


LAYER_LOOPS = ("auto", "scan", "unroll")


def layer_fields(cfg, backend: Optional[str] = None) -> dict:
  """The ModelConfig fields of how `cfg.model`'s layers are stored and run:
  remat_policy, scan_layers, and unroll_stacked, which `model.layer_loop`
  'auto' sets on GPUs (`backend`, default: JAX's) when no remat policy is set."""
  m = cfg.model
  backend = backend or jax.default_backend()
  unroll = m.layer_loop == "unroll" or (m.layer_loop == "auto" and backend == "gpu" and m.remat == "none")
  return {"remat_policy": m.remat, "scan_layers": m.scan_layers, "unroll_stacked": unroll}


def _model_plan(cfg) -> ModelPlan:
  m, f = cfg.model, cfg.mf
  sizes = dict(family=m.family, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
               num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
               tie_word_embeddings=m.tie_word_embeddings)
  mf = dict(slots=f.slots, feature_size=f.feature_size, hidden_size=f.hidden_size,
            attention_queries=f.attention_queries, init_logvar=f.init_logvar,
            classes=len(CLASSES) if _population_head(cfg) else 0, head_hidden=f.head_hidden,
            category_features=bool(f.category_features), anchor_steps=int(f.anchor_steps),
            state_tail=int(f.state_tail), state_numbers=len(NUMBER_FEATURES) if f.state_numbers else 0,
            anchor_given=f.anchor == "agents")
  return ModelPlan(m.checkpoint, bool(m.checkpoint_required), m.dtype, sizes, layer_fields(cfg), mf, bool(f.lm_grad))


def scratch_model_config(cfg, vocab_size: int, **extra) -> ModelConfig:
  """The LM that `cfg.model` trains from scratch (no checkpoint); `extra`:
  further ModelConfig fields (token ids, max_position_embeddings)."""
  return _model_plan(cfg).scratch_config(vocab_size, **extra)


def lora_config(cfg) -> LoraConfig:
  return LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=tuple(cfg.lora.targets.split(",")))


def mf_config(cfg, width: int) -> MeanFieldConfig:
  """The mean-field encoder of `cfg.mf` for an LM of hidden size `width`."""
  return _model_plan(cfg).encoder(width)
