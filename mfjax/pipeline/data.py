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

from mfjax.categories import CLASSES, class_of
from mfjax.data import (StepBatch, UidActivity, action_text, agent_states, load_events, load_tokenizer,
                        make_step_batch, policy_prompt, step_numbers, step_texts, synthetic, train_tokenizer)
from mfjax.data.prompts import attribute_tag
from mfjax.data.tokenizers import token_bytes
from mfjax.data.intervention import forced_mask, inject
from mfjax.evaluation.bounds import AgentAnchor
from mfjax.evaluation.report import CachedLabeler, label_ids, make_labeler
from mfjax.meanfield import TextMFSpec
from mfjax.model import hf
from mfjax.parallel import distributed
from mfjax.pipeline_config import DataPlan, RunPlan, check_data_choices
from mfjax.policy import AttributeTags
from mfjax.sampling import ValidUtf8
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
  tags: Optional[AttributeTags] = None  # an attribute-conditioned policy's tag tokens (data.attributes)
  utf8: Optional[ValidUtf8] = None  # what the rollouts may sample (rollout.valid_utf8)


def data_files(d: DataPlan) -> dict:
  """{split: path} of the CED files a run reads (train, val, the eval split); FileNotFoundError naming
  the first one missing."""
  if os.path.isfile(d.path):
    raise FileNotFoundError(f"data.path: {d.path} is a file; give the folder that holds train.jsonl.gz, "
                            f"val.jsonl.gz and {d.eval_split}.jsonl.gz (python tools/download_data.py makes one)")
  files = {s: os.path.join(d.path, f"{s}.jsonl.gz") for s in ("train", "val", d.eval_split)}
  for f in files.values():
    if not os.path.exists(f):
      raise FileNotFoundError(f"data.path: {f} not found (get the data with: python tools/download_data.py)")
  return files


def check_inputs(plan: RunPlan) -> None:
  """What a run reads from outside its workdir, checked before anything is written there: the CED
  files, and a model checkpoint with a tokenizer that fits it. A wrong path then leaves no
  workdir whose config.json would refuse the corrected command."""
  if plan.data.source == "ced":
    data_files(plan.data)
  if plan.model.checkpoint:
    path = plan.model.checkpoint
    model_cfg = hf.load_config(path)  # first: "not a model folder" says more than "no tokenizer there"
    hf.check_tokenizer(load_tokenizer(path), model_cfg, path, path)


def split_events(d: DataPlan):
  """(train, val, eval events, eval truth, eval split name)."""
  check_data_choices(d)
  if d.source == "synthetic":
    val, _ = synthetic.generate(d.val_events, seed=d.seed + 1, config=d.world)
    test, truth = synthetic.generate(d.eval_events, seed=d.seed + 2, config=d.eval_world)
    return training_events(d), val, test, truth, "synthetic-test"
  files = data_files(d)  # every file checked before any is read
  train = training_events(d)
  # holdout is read only for the final report, never for training or selection
  read = {split: list(load_events(path, "ced")) for split, path in files.items() if split != "train"}
  val = sample_events(read["val"], d.val_events, seed=(d.seed, 1))
  long = [e for e in read[d.eval_split] if len(e.actions) >= d.eval_min_actions]
  if not long:
    raise ValueError(f"data.eval_min_actions={d.eval_min_actions}: no {d.eval_split} event has that many actions")
  test = sample_events(long, d.eval_events, seed=(d.seed, 2))
  return train, val, test, None, d.eval_split


def training_events(d: DataPlan) -> list:
  """The run's training events alone, as `split_events` draws them (a tool that needs the
  training population, such as `forecast`, without reading the other splits)."""
  check_data_choices(d)
  if d.source == "synthetic":
    return synthetic.generate(d.train_events, seed=d.seed, config=d.world)[0]
  path = os.path.join(d.path, "train.jsonl.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path: {path} not found (get the data with: python tools/download_data.py)")
  return sample_events(list(load_events(path, "ced")), d.train_events, seed=(d.seed, 0))


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


def _tokenizer_texts(events, activity, tags: bool) -> list[str]:
  texts = []
  for e in events:
    texts += [policy_prompt(e.topic, s) for s in agent_states(e, activity)]
    texts += [action_text(a) for a in e.actions] + [CONTEXT_HEADER, CONTEXT_SEP]
  if tags:  # every tag as often as an action, so that each becomes a few tokens
    each = max(len(texts) // (2 * len(CLASSES)), 2)
    texts += [attribute_tag(c) for c in CLASSES] * each
  return texts


def label_categories(labeler: CachedLabeler, batch: StepBatch) -> np.ndarray:
  """Each action's joint category [E, T, B] (`mfjax.categories.class_of`; -1 in empty slots), as
  the labeler reads its text."""
  shape = batch.agent_mask.shape
  ids = label_ids(labeler, [t for row in batch.texts for t in row], shape, keep=True)
  return np.where(batch.agent_mask, class_of(ids), -1).astype(np.int32)


def tokenizer_specs(plan: RunPlan, tok) -> dict:
  """The `Data` fields the model and the sampler derive from the tokenizer: the quoted context's, the
  text mean field's and the attribute tags' token layouts, and the tokens that keep UTF-8 valid."""
  d = plan.data
  return {"context": ContextSpec.from_tokenizer(tok, k=d.context_k, action_len=d.batch.action_len),
          "text": text_spec(d, tok), "tags": AttributeTags.from_tokenizer(tok) if d.attributes else None,
          "utf8": ValidUtf8(token_bytes(tok)) if plan.sampling.valid_utf8 else None}


def trained_tokenizer(plan: RunPlan, workdir: str):
  """The tokenizer of the trained run in `workdir` (the checkpoint's with model.checkpoint);
  FileNotFoundError where that run has none."""
  if plan.data.checkpoint:
    return load_tokenizer(plan.data.checkpoint)
  path = os.path.join(workdir, "tokenizer")
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    raise FileNotFoundError(f"{workdir} has no trained tokenizer (tokenizer/tokenizer.json): train that run first")
  return load_tokenizer(path)


def prepare(plan: RunPlan, workdir: str) -> Data:
  """Events, tokenizer (trained once into workdir/tokenizer) and step tensors."""
  t0 = time.time()
  d = plan.data
  train, val, test, truth, split = split_events(d)
  activity = UidActivity.fit(train) if d.source == "ced" else None
  tok_dir = os.path.join(workdir, "tokenizer")
  trained = os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
  if d.checkpoint:
    tok = load_tokenizer(d.checkpoint)
  elif jax.process_count() > 1:
    # process 0 trains and writes it (the workdir is shared), the others read it; every process meets at
    # the barrier whatever it saw on disk (a process that found process 0's new file must still be there)
    if distributed.is_main() and not trained:
      train_tokenizer(_tokenizer_texts(train, activity, d.attributes), d.vocab_size, tok_dir)
    multihost_utils.sync_global_devices("mfjax tokenizer written")
    tok = load_tokenizer(tok_dir)
  elif trained:
    tok = load_tokenizer(tok_dir)
  else:
    tok = train_tokenizer(_tokenizer_texts(train, activity, d.attributes), d.vocab_size, tok_dir)
  bc = d.batch
  splits = (("train", train, bc), ("val", val, bc), ("eval", test, d.eval_batch))
  batches = {name: make_step_batch(ev, tok, layout, activity=activity) for name, ev, layout in splits}
  if d.numbers:  # the population head reads each agent's state as numbers too (mf.state_numbers)
    for name, ev, layout in splits:
      batches[name].numbers = step_numbers(ev, layout.steps, layout.agents_per_step, activity)
  labeler = CachedLabeler(make_labeler(d.labeler, d.label_data)) if d.categories else None
  if labeler is not None:  # the population head's targets, by the run's labeler
    t1 = time.time()
    for b in batches.values():
      b.category = label_categories(labeler, b)
    log(f"[data] labelled {sum(int(b.agent_mask.sum()) for b in batches.values())} actions' categories for "
        f"the population head ({time.time() - t1:.1f} s)")
  anchor = None
  if d.agent_anchor:  # the population head starts from a per-agent forecaster fitted on the training events
    t1 = time.time()
    numbers = {name: batches[name].numbers if d.numbers else step_numbers(ev, layout.steps, layout.agents_per_step,
                                                                          activity) for name, ev, layout in splits}
    texts = {name: b.texts if d.anchor_words else None for name, b in batches.items()}
    tb = batches["train"]  # its classes and numbers, as `fitted_anchor` reads them from the events
    blind = any(r.method == "blind" for r in plan.rollouts)  # it reads an anchor that knows nothing of the event
    anchor = AgentAnchor.fit(tb.category, tb.agent_mask, numbers["train"], steps=d.agent_anchor, classes=len(CLASSES),
                             texts=texts["train"], words=d.anchor_words, blind=blind)
    for name, b in batches.items():
      b.anchor = anchor.logprobs(b.category, b.agent_mask, numbers[name], texts[name])
    if blind:
      batches["eval"].anchor_blind = anchor.blind(numbers["eval"])
    log(f"[data] the head's agents anchor fitted on the training agents and computed for every split "
        f"({time.time() - t1:.1f} s)")
  for name, b in batches.items():
    r = b.report
    T, B = b.agent_mask.shape[1:]
    log(f"[data] {name}: {r['events']} events, {r['actions_used']} actions in {T}x{B} "
        f"steps ({r['agent_slots_empty']} empty slots); truncated: {r['prompts_truncated']} prompts, "
        + (f"{r['topics_truncated']} topics, " if "topics_truncated" in r else "") + f"{r['actions_truncated']} actions")
  specs = tokenizer_specs(plan, tok)
  log(f"[data] tokenizer: {len(tok)} tokens; context: {specs['context'].length} tokens ({time.time() - t0:.1f} s)")
  # the reference simulators read the training events in the eval events' layout
  train_texts, train_mask = step_texts(train, d.eval_batch.steps, d.eval_batch.agents_per_step)
  references = {"train_texts": train_texts, "train_mask": train_mask, "train_labels": [e.label for e in train],
                "eval_labels": [e.label for e in test]}
  if specs["tags"] is not None:
    log(f"[data] attribute tags: {specs['tags'].length} tokens at most")
  data = Data(tok, train=batches["train"].arrays(), val=batches["val"].arrays(), eval=batches["eval"], truth=truth,
              eval_split=split, references=references, **specs)
  iv = plan.intervention
  if iv is not None:
    # the same eval events with the injected actions; only their action tokens differ (prompts are the states)
    eb = d.eval_batch
    injected = inject(test, iv, eb.agents_per_step)
    intervened = make_step_batch(injected, tok, eb, activity=activity)
    if d.numbers:
      intervened.numbers = step_numbers(injected, eb.steps, eb.agents_per_step, activity)
    if labeler is not None:
      intervened.category = label_categories(labeler, intervened)
    if anchor is not None:
      numbers = intervened.numbers if d.numbers else step_numbers(injected, eb.steps, eb.agents_per_step, activity)
      intervened.anchor = anchor.logprobs(intervened.category, intervened.agent_mask, numbers, intervened.texts)
      if anchor.blind_model is not None:
        intervened.anchor_blind = anchor.blind(numbers)
    data.intervened = {**intervened.arrays(), "forced": forced_mask(batches["eval"].agent_mask, iv)}
    if truth is not None:
      data.truth_intervened = synthetic.generate(d.eval_events, seed=d.seed + 2, config=d.eval_world, intervention=iv,
                                                 labels=intervention_labels(d, iv))[1]
  return data


def fitted_anchor(d: DataPlan, train: list, labeler: CachedLabeler, activity, blind: bool = False) -> AgentAnchor:
  """The population head's per-agent anchor (mf.anchor='agents'), fitted on the training events `train` laid
  out as the run's batches, their actions labelled by the run's labeler (the head's targets): what `prepare`
  fits from its training batch, for a command that has the events alone (`forecast`); `blind`: with the
  regression the method 'blind' reads."""
  bc = d.batch
  texts, mask = step_texts(train, bc.steps, bc.agents_per_step)
  classes = np.where(mask, class_of(label_ids(labeler, [t for row in texts for t in row], mask.shape, keep=True)), -1)
  return AgentAnchor.fit(classes, mask, step_numbers(train, bc.steps, bc.agents_per_step, activity),
                         steps=d.agent_anchor, classes=len(CLASSES), texts=texts, words=d.anchor_words, blind=blind)


def text_spec(d: DataPlan, tokenizer) -> TextMFSpec:
  """The text mean field's token layout for the run's shapes."""
  return TextMFSpec.from_tokenizer(tokenizer, summary_len=d.summary_len, action_len=d.batch.action_len,
                                   agents=d.batch.agents_per_step)


def intervention_labels(d: DataPlan, iv) -> dict:
  """dimension -> category of the injected action `iv`, as `eval.labeler` reads it."""
  return {dim: v[0] for dim, v in make_labeler(d.labeler, d.label_data).label([iv.text]).items()}
