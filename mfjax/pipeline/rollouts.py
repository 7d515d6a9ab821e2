"""The rollouts of a run (`RunPlan.rollouts`): every method and seed over the eval events,
saved one file each (atomically) under workdir/rollouts, so that a rerun makes only the
missing ones; and the writer's channel `mf` draws its tags through (rollout.writer_channel)."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from mfjax.categories import CLASSES, class_of
from mfjax.configs import ConfigError
from mfjax.evaluation.report import CachedLabeler, decode_actions, label_ids, make_labeler
from mfjax.parallel import distributed, global_batch
from mfjax.parallel.mesh import check_events, process_rows
from mfjax.parallel.state import to_host
from mfjax.pipeline.data import Data
from mfjax.pipeline.stages import Trained
from mfjax.pipeline_config import RunPlan
from mfjax.rollout import simulate
from mfjax.rollout.channel import PRIOR, estimate
from mfjax.runs import log, read_json, write_json
from mfjax.workdir import ATTRIBUTE_ROLLOUT_ARRAYS, ROLLOUT_ARRAYS, TEXT_ROLLOUT_ARRAYS, rollout_path, save_rollout


def simulate_all(plan: RunPlan, workdir: str, data: Data, trained: Trained, *, mesh) -> None:
  """Roll out every method and seed over the eval events (existing files are
  kept), `rollout.batch_events` events per call split over the mesh; then, with
  an intervention, its methods again over the intervened events, with the same
  keys (so that a rollout differs from its method's only through the injected actions).
  With rollout.writer_channel, `mf` draws its tags through the writer's channel (`writer_channel`)."""
  sampling = plan.sampling
  plain = data.eval.arrays()
  E = len(plain["agent_mask"])
  channel = None
  for r in plan.rollouts:
    tag, method, arrays = r.tag, r.method, data.intervened if r.intervened else plain
    for seed in range(sampling.seeds):
      path = rollout_path(workdir, tag, seed)
      if os.path.exists(path):
        continue
      if channel is None and method in TAGGED and data.tags is not None and sampling.writer_channel:
        channel = writer_channel(plan, workdir, data, trained, r.params, mesh=mesh)
      t0 = time.time()
      key = jax.random.PRNGKey(plan.seed + 1000 * (seed + 1))  # every method's rollout of a seed: the same keys
      kept = ROLLOUT_ARRAYS + (TEXT_ROLLOUT_ARRAYS if method == "mf_text" else ()) + (
          ATTRIBUTE_ROLLOUT_ARRAYS if method in TAGGED and data.tags is not None else ())
      saved = _roll(plan, data, trained, arrays, method, r.params, key, kept, mesh=mesh,
                    channel=channel if method in TAGGED else None)
      if not distributed.is_main():
        continue
      save_rollout(workdir, tag, seed, saved)
      if method == "mf_text":  # what the writer says, for a look: event 0's last summary
        last = saved["summary"][0, -1][saved["summary_mask"][0, -1]]
        log(f"[simulate] {tag} seed {seed}: event 0's last summary: "
            f"{data.tokenizer.decode(last, skip_special_tokens=True)!r}")
      b = plan.data.eval_batch
      log(f"[simulate] {tag} seed {seed}: {E} events x {b.steps} steps x {b.agents_per_step} agents "
          f"in {time.time() - t0:.1f} s")


def _roll(plan: RunPlan, data: Data, trained: Trained, arrays: dict, method: str, params: str, key, kept: tuple, *,
          mesh, channel=None) -> dict:
  """{field of `kept`: [E, ...] host array} of one method's rollout over the events of `arrays`, with `key`
  (chunk c folds c in), `rollout.batch_events` events per call."""
  sampling = plan.sampling
  arrays = for_method(arrays, method)
  E = len(arrays["agent_mask"])
  chunk = min(sampling.batch_events, E)
  check_events(chunk, mesh, "rollout.batch_events (or the eval events, if fewer)")
  rows = process_rows(chunk)
  parts = []
  for c in range(-(-E // chunk)):
    idx = np.arange(c * chunk, (c + 1) * chunk) % E  # the last chunk wraps around: one static shape
    batch = global_batch({k: v[idx][rows] for k, v in arrays.items()}, mesh)
    out = simulate(trained.model, trained.params[params], batch, method=method, encoder=trained.encoder,
                   context=data.context, rng=jax.random.fold_in(key, c),
                   warmup=sampling.warmup, temperature=sampling.temperature, top_k=sampling.top_k,
                   top_p=sampling.top_p, mesh=mesh, donate_batch=True,  # a fresh batch each call
                   pin_activations=plan.pin_activations, text=data.text, tags=data.tags,
                   utf8=data.utf8, head_warmup_m=sampling.head_warmup_m,
                   writer_temperature=sampling.writer_temperature, topic_len=plan.data.eval_batch.topic_len,
                   channel=channel)
    parts.append(to_host(out))
  return {f: np.concatenate([getattr(p, f) for p in parts])[:E] for f in kept}


TAGGED = ("mf", "blind")  # the methods that draw a tag, then write after it (with mf.attributes)


def for_method(arrays: dict, method: str) -> dict:
  """The batch arrays `method` reads: 'blind' reads the anchor of agents of whose events nothing is known
  (`anchor_blind`, where the run's head has a given anchor) as its `anchor`; no method reads `anchor_blind` else."""
  if "anchor_blind" not in arrays:
    return arrays
  out = {k: v for k, v in arrays.items() if k != "anchor_blind"}
  if method == "blind":
    out["anchor"] = arrays["anchor_blind"]
  return out


CHANNEL_FILE = "writer_channel.json"


def writer_channel(plan: RunPlan, workdir: str, data: Data, trained: Trained, params: str, *, mesh) -> np.ndarray:
  """The writer's channel W [C, C] (`mfjax.rollout.channel`): `mf` (the stage `params`, as its rollouts) rolled out
  with its tags drawn from the head as they are over `rollout.writer_channel` training events (a seeded draw), its
  actions after the warm-up labelled by the run's labeler. Kept in workdir/writer_channel.json (counts, channel,
  how often the labeler reads the tag back) and read from there when it is there."""
  n = plan.sampling.writer_channel
  path = os.path.join(workdir, CHANNEL_FILE)
  if os.path.exists(path):
    return read_channel(plan, workdir)
  t0 = time.time()
  train = data.train
  total = len(train["agent_mask"])
  rng = np.random.default_rng((plan.seed, 3))
  idx = np.sort(rng.choice(total, n, replace=False)) if n < total else np.arange(total)
  arrays = {k: v[idx] for k, v in train.items()}
  log(f"[simulate] the writer's channel: mf on {len(idx)} training events, its tags drawn from the head")
  out = _roll(plan, data, trained, arrays, "mf", params, jax.random.PRNGKey(plan.seed + 999),
              ("tokens", "mask", "category"), mesh=mesh)
  shape = out["category"].shape
  labeler = CachedLabeler(make_labeler(plan.data.labeler, plan.data.label_data))
  labels = class_of(label_ids(labeler, decode_actions(data.tokenizer, out["tokens"], out["mask"]), shape))
  after = np.arange(shape[1])[None, :, None] >= plan.sampling.warmup
  mask = np.asarray(arrays["agent_mask"], bool) & after & (out["category"] >= 0)
  counts, w = estimate(out["category"], labels, mask, len(CLASSES))
  agreement = float(np.trace(counts) / max(counts.sum(), 1.0))
  write_json(path, {"events": n, "labeler": plan.data.labeler, "stage": params, "train_events": [int(i) for i in idx],
                    "actions": int(counts.sum()), "agreement": agreement, "prior": PRIOR,
                    "counts": counts.tolist(), "channel": w.tolist(), "seconds": time.time() - t0})
  log(f"[simulate] the writer's channel from {int(counts.sum())} actions: the labeler reads the drawn class back in "
      f"{agreement:.1%} of them ({time.time() - t0:.0f} s; {path})")
  return w


def read_channel(plan: RunPlan, workdir: str) -> np.ndarray:
  """The writer's channel `writer_channel` kept in `workdir`; ConfigError where it is not there or was
  estimated otherwise than the config asks."""
  n, path = plan.sampling.writer_channel, os.path.join(workdir, CHANNEL_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"rollout.writer_channel={n}: {path} is not there (a run's rollouts estimate it; "
                      "or set rollout.writer_channel=0)")
  rec = read_json(path)
  if rec.get("events") != n or rec.get("labeler") != plan.data.labeler:
    raise ConfigError(f"{path} was estimated on {rec.get('events')} training events with the labeler "
                      f"{rec.get('labeler')!r}; this run asks rollout.writer_channel={n}, eval.labeler="
                      f"{plan.data.labeler!r}: move that file away to estimate it again")
  log(f"[simulate] the writer's channel from {path}")
  return np.asarray(rec["channel"])
