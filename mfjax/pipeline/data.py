"""The run's data: events split into train / val / eval, the tokenizer, and the step tensors
every stage and rollout reads (`prepare`), built once per process."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from mfjax.data import (BatchConfig, StepBatch, UidActivity, action_text, agent_states, load_events, load_tokenizer,
                        make_step_batch, policy_prompt, step_texts, synthetic, train_tokenizer)
from mfjax.data.intervention import forced_mask, inject
from mfjax.evaluation.report import make_labeler
from mfjax.meanfield import TextMFSpec
from mfjax.model import hf
from mfjax.parallel import distributed
from mfjax.pipeline_config import RunPlan, check_data_choices
from mfjax.rollout import ContextSpec
from mfjax.rollout.context import CONTEXT_HEADER, CONTEXT_SEP
from mfjax.runs import log


@dataclasses.dataclass
class Data:
  """Everything the stages need, built once per process."""

  tokenizer: object
  context: ContextSpec
  train: dict  # arrays [E, T, B, ...]
  val: dict
  eval: StepBatch  # the events rollouts are scored on (texts kept for labelling)
  truth: Optional[object]  # synthetic.GroundTruth of the eval events, else None
  eval_split: str
  text: TextMFSpec  # the text mean field's token layout
  intervened: Optional[dict] = None  # with intervention.text: the eval arrays with it injected, and `forced`
  truth_intervened: Optional[object] = None  # synthetic: the world's GroundTruth of the intervened eval events
  # the reference simulators' inputs (`mfjax.evaluation.bounds`): the training events' action texts [N][T*B],
  # agent mask [N, T, B] and labels, and the eval events' labels
  references: Optional[dict] = None


def _world(cfg) -> synthetic.WorldConfig:
  d = cfg.data
  return synthetic.WorldConfig(steps=d.steps, agents_per_step=d.agents_per_step, **cfg.world.to_dict())


def data_files(d) -> dict:
  """{split: path} of the CED files a run reads (train, val, the eval split); FileNotFoundError naming
  the first one missing."""
  files = {s: os.path.join(d.path, f"{s}.jsonl.gz") for s in ("train", "val", d.eval_split)}
  for f in files.values():
    if not os.path.exists(f):
      raise FileNotFoundError(f"data.path: {f} not found (get the data with: python tools/download_data.py)")
  return files


def check_inputs(cfg) -> None:
  """What a run reads from outside its workdir, checked before anything is written there: the CED
  files, and a model checkpoint with a tokenizer that fits it. A wrong path then leaves no
  workdir whose config.json would refuse the corrected command."""
  if cfg.data.source == "ced":
    data_files(cfg.data)
  if cfg.model.checkpoint:
    path = cfg.model.checkpoint
    model_cfg = hf.load_config(path)  # first: "not a model folder" says more than "no tokenizer there"
    hf.check_tokenizer(load_tokenizer(path), model_cfg, path, path)


def split_events(cfg):
  """(train, val, eval events, eval truth, eval split name)."""
  d = cfg.data
  check_data_choices(d)
  world = _world(cfg)
  if d.source == "synthetic":
    train, _ = synthetic.generate(d.train_events, seed=d.seed, config=world)
    val, _ = synthetic.generate(d.val_events, seed=d.seed + 1, config=world)
    test, truth = synthetic.generate(d.eval_events, seed=d.seed + 2, config=world)
    return train, val, test, truth, "synthetic-test"
  files = data_files(d)
  # holdout is read only for the final report, never for training or selection
  read = {split: list(load_events(path, "ced")) for split, path in files.items()}
  train = sample_events(read["train"], d.train_events, seed=(d.seed, 0))
  val = sample_events(read["val"], d.val_events, seed=(d.seed, 1))
  test = sample_events(read[d.eval_split], d.eval_events, seed=(d.seed, 2))
  return train, val, test, None, d.eval_split


def sample_events(events: list, n: int, *, seed) -> list:
  """`n` of `events` (all of them when n covers them), never a file's first n: the CED files list
  every rumor before the first non-rumor. A seeded draw stratified by label: each label keeps its
  share of the file (largest remainders), its events drawn at random; returned in file order."""
  if n >= len(events):
    return list(events)
  rng = np.random.default_rng(seed)
  by_label = {}
  for i, e in enumerate(events):
    by_label.setdefault(e.label, []).append(i)
  labels = sorted(by_label, key=str)
  quota = {lab: n * len(by_label[lab]) / len(events) for lab in labels}
  take = {lab: int(q) for lab, q in quota.items()}
  for lab in sorted(labels, key=lambda lab: (take[lab] - quota[lab], str(lab)))[:n - sum(take.values())]:
    take[lab] += 1
  chosen = [i for lab in labels for i in rng.choice(by_label[lab], take[lab], replace=False)]
  return [events[i] for i in sorted(chosen)]


def _tokenizer_texts(events, activity) -> list[str]:
  texts = []
  for e in events:
    texts += [policy_prompt(e.topic, s) for s in agent_states(e, activity)]
    texts += [action_text(a) for a in e.actions] + [CONTEXT_HEADER, CONTEXT_SEP]
  return texts


def prepare(cfg, plan: RunPlan, workdir: str) -> Data:
  """Events, tokenizer (trained once into workdir/tokenizer) and step tensors."""
  t0 = time.time()
  train, val, test, truth, split = split_events(cfg)
  activity = UidActivity.fit(train) if cfg.data.source == "ced" else None
  tok_dir = os.path.join(workdir, "tokenizer")
  trained = os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
  if cfg.model.checkpoint:
    tok = load_tokenizer(cfg.model.checkpoint)
  elif jax.process_count() > 1:
    # process 0 trains and writes it (the workdir is shared), the others read it; every process meets at
    # the barrier whatever it saw on disk (a process that found process 0's new file must still be there)
    if distributed.is_main() and not trained:
      train_tokenizer(_tokenizer_texts(train, activity), cfg.tokenizer.vocab_size, tok_dir)
    multihost_utils.sync_global_devices("mfjax tokenizer written")
    tok = load_tokenizer(tok_dir)
  elif trained:
    tok = load_tokenizer(tok_dir)
  else:
    tok = train_tokenizer(_tokenizer_texts(train, activity), cfg.tokenizer.vocab_size, tok_dir)
  bc = BatchConfig(cfg.data.steps, cfg.data.agents_per_step, cfg.data.prompt_len, cfg.data.action_len)
  batches = {name: make_step_batch(ev, tok, bc, activity=activity) for name, ev in
             (("train", train), ("val", val), ("eval", test))}
  for name, b in batches.items():
    r = b.report
    log(f"[data] {name}: {r['events']} events, {r['actions_used']} actions in {bc.steps}x{bc.agents_per_step} "
        f"steps ({r['agent_slots_empty']} empty slots); truncated: {r['prompts_truncated']} prompts, "
        f"{r['actions_truncated']} actions")
  ctx = ContextSpec.from_tokenizer(tok, k=cfg.context.k, action_len=cfg.data.action_len)
  log(f"[data] tokenizer: {len(tok)} tokens; context: {ctx.length} tokens ({time.time() - t0:.1f} s)")
  text = text_spec(cfg, tok)
  train_texts, train_mask = step_texts(train, bc.steps, bc.agents_per_step)
  references = {"train_texts": train_texts, "train_mask": train_mask, "train_labels": [e.label for e in train],
                "eval_labels": [e.label for e in test]}
  data = Data(tok, ctx, batches["train"].arrays(), batches["val"].arrays(), batches["eval"], truth, split, text,
              references=references)
  iv = plan.intervention
  if iv is not None:
    # the same eval events with the injected actions; only their action tokens differ (prompts are the states)
    data.intervened = {**make_step_batch(inject(test, iv, bc.agents_per_step), tok, bc, activity=activity).arrays(),
                       "forced": forced_mask(batches["eval"].agent_mask, iv)}
    if truth is not None:
      data.truth_intervened = synthetic.generate(cfg.data.eval_events, seed=cfg.data.seed + 2, config=_world(cfg),
                                                 intervention=iv, labels=intervention_labels(cfg))[1]
  return data


def text_spec(cfg, tokenizer) -> TextMFSpec:
  """The text mean field's token layout for `cfg`'s shapes."""
  return TextMFSpec.from_tokenizer(tokenizer, summary_len=cfg.mf_text.summary_len, action_len=cfg.data.action_len,
                                   agents=cfg.data.agents_per_step)


def intervention_labels(cfg) -> dict:
  """dimension -> category of the injected action, as `eval.labeler` reads it."""
  return {d: v[0] for d, v in make_labeler(cfg.eval.labeler).label([cfg.intervention.text]).items()}
