r"""MF-LLM on real Weibo events (CED): the quickstart pipeline on the events in
`data.path` (train.jsonl.gz / val.jsonl.gz, as written by
`python tools/download_data.py --out <folder>`).

Each event's first T x B reposts/comments become T steps of B agents. Agents
have no profiles in CED; their state is the cascade depth, the time since the
original post and their activity in the training events. The tokenizer and a
tiny policy are trained from scratch on the training events (set
`model.checkpoint` to start from a local Hugging Face checkpoint such as
Qwen2-1.5B instead). Rollouts are scored on val (model selection); holdout is
for final reports only and never used for training or selection: the second
command below rolls out the first one's trained stages on holdout, read only.

`mf` is the attribute-conditioned policy: each agent's category is drawn from the
population head on the mean field (which reads every action's category), its state and
a per-agent anchor, then written after its tag. Actions are labelled by the labeler
learned from the project's hand labels (docs/labeling.md). About 51 minutes on 2 CPU
cores (an Intel Xeon with AVX-512) with the defaults, nothing else running: data 4 minutes, the stages 26 (the 900-step
mf stage 18), the writer's channel 4.5 (mf on 256 training events, labelled), the 64 events' rollouts and scoring 16
(46 minutes measured for all but the channel before it was the default, 269 s for the channel after: two runs,
docs/experiments/ced.md). Its results are in docs/experiments/ced.md. `smoke`, which CI runs, takes about a minute:

  python -m mfjax run --config experiments/ced_weibo.py --set data.path=data/ced --workdir runs/ced_weibo
  python -m mfjax run --config experiments/ced_weibo.py --set data.path=data/ced --set data.eval_split=holdout \
    --trained-from runs/ced_weibo --workdir runs/ced_weibo_holdout
  python -m mfjax run --config experiments/ced_weibo.py:smoke --set data.path=../shared/data/ced
"""

import os

from mfjax.pipeline_config import mf_llm_config

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "ced")


def get_config(arg: str = ""):
  c = mf_llm_config()
  c.data.source = "ced"
  c.data.path = os.path.normpath(DEFAULT_PATH)
  c.data.train_events = 2645  # all of train.jsonl.gz
  c.data.val_events = 32
  c.data.eval_events = 64
  c.data.prompt_len = 96  # topic (a Weibo post) + state
  # The topic's own block (its start kept, 72 tokens), computed once for a step's agents in training and rollouts;
  # the agent's part (state line) has 24 and is never cut. The train step at this size ran 1.98x faster with the topic
  # computed once (docs/benchmarks.md, "An event's topic computed once").
  c.data.topic_len = 72
  c.data.action_len = 32
  c.tokenizer.vocab_size = 4096
  c.model.hidden_size = 128
  c.model.intermediate_size = 256
  # Two unrolled layers: the base stage's train step took 3.9 and 3.6 s on 2 CPU
  # cores, against 4.9 and 4.3 s with the layers in a lax.scan (alternated runs;
  # XLA:CPU zero-fills and copies the scan's stacked activations).
  c.model.scan_layers = False
  # 900 mf steps make the writer follow its tags (300: it follows the share tag only); with the topic computed once
  # they fit in the hour (docs/experiments/ced.md)
  c.base.steps, c.sft.steps, c.mf_train.steps = 400, 100, 900
  c.rollout.batch_events = 32
  # The attribute-conditioned mf policy: each agent's category drawn from the population head on (m, state),
  # the action written after its tag, on a mean field that reads every action's category. The tiny policy is
  # fine-tuned in full (the rule labeler read the drawn category back in 65% of the actions, against 50% with
  # LoRA); docs/experiments/ced.md.
  c.sft.trainable = "full"
  c.mf_train.trainable = "full"
  c.mf.attributes = True
  c.ib.population_weight = 1.0
  c.mf.category_features = True
  # The head starts from an anchor on the first mf.anchor_steps (warm-up) steps' classes and reads the agent's state
  # line token by token (mf.state_tail). mf.anchor=shrunk (the warm-up's classes shrunk towards a learned prior) was
  # the first head whose teacher-forced forecast beat `shrunk`'s on the validation events;
  # mf.anchor=agents: the head starts from a per-agent logistic regression on the same counts, the step and the
  # state's numbers, fitted when the data is prepared; it put the head's draws below shrunk on the 364 val events
  # (-0.012 [-0.025, -0.001]). With it, the topic's block and 900 mf steps, mf's text is below shrunk on all 364 val
  # events (3 seeds: -0.011 [-0.022, -0.001]), below state and popular and 29.7% below state (docs/experiments/ced.md).
  c.mf.anchor = "agents"
  c.mf.anchor_steps = 3
  c.mf.state_tail = 16
  # The tiny byte-level policy breaks a character in 11-12% of its actions without it
  c.rollout.valid_utf8 = True
  # The writer follows its sentiment tag in 76% of its actions only: mf draws each tag through the writer's channel,
  # estimated on 256 training events before the rollouts (mfjax.rollout.channel), so that the labelled actions follow
  # the head. On all 364 val events it moved mf's text by -0.005 [-0.009, -0.001] and put every category's rate within
  # noise of the training events' (docs/experiments/ced.md)
  c.rollout.writer_channel = 256
  # Labels from the labeler learned on the project's hand labels (docs/labeling.md): cross-validated, it beats the
  # rule lexicons on belief, sentiment and behaviour and ties on intent (tools/labeler_quality.py). It labels the
  # eval actions, the reference simulators' training events and the population head's targets; results.json also
  # scores the distributions corrected for its errors ("corrected").
  c.eval.labeler = "trained"
  c.eval.corrected = True
  if arg == "smoke":
    c.data.train_events = 24
    c.data.val_events = 4
    c.data.eval_events = 4
    c.data.steps = 4
    c.data.agents_per_step = 8
    c.data.prompt_len = 48
    c.data.topic_len = 24
    c.data.action_len = 16
    c.tokenizer.vocab_size = 1024
    c.model.hidden_size = 32
    c.model.intermediate_size = 64
    c.mf.feature_size, c.mf.hidden_size = 16, 32
    c.base.steps, c.sft.steps, c.mf_train.steps = 8, 4, 6
    c.train.log_every, c.train.ckpt_every, c.train.eval_every = 4, 4, 0
    c.rollout.seeds = 2
    c.rollout.warmup = 1
    c.mf.anchor_steps = 1
    c.rollout.batch_events = 4
    c.rollout.writer_channel = 8
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for ced_weibo (use '' or 'smoke')")
  return c
