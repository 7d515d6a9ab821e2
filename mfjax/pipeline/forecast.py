"""`python -m mfjax forecast`: where an unfolding event is heading, from a trained run.

An event (any file `load_events` reads, one event picked by `--eid`, or a JSONL file holding one
event's actions so far) is cut into steps of the run's B agents; its first K full steps are
observed (all of them by default) and every method of the run rolls out from them for H steps,
S seeds at once (the seeds are rows of one batch), with the observed steps as warm-up. The future
agents' states (their prompt lines) are not in a live event's data: `last` (the default) gives
every future step the states of the last observed step's agents; `real` takes the states of the
agents who really came next, where the file holds them (a recorded event: this reads future
information, such as how late they came). Sampled actions are labelled with the run's labeler.

Writes OUT/forecast.json:

  event       eid, source file, label, actions in the file, observed steps K and actions K*B
  observed    {dimension: [K] proportions per observed step}
  real        {dimension: [H] proportions of the real continuation (None past the file's end)}
  methods     {tag: {dimension: {"mean", "p10", "p90": [H] proportions over the seeds}}}
  references  the no-model forecasts, each a distribution held over the horizon ("distribution"), from
              which S x H steps of B agents are drawn, scored and banded as a method's rollouts are:
              persistence  the observed steps' pooled proportions (`warmup` in results.json)
              shrunk       those counts plus the training events' pooled proportions as k pseudo-agents,
                           k fitted per dimension as results.json's `shrunk` fits it
              global       the training events' pooled proportions
  kl_to_real  where the file holds the continuation: per method and reference, the KL(real || forecast)
              of each future step, the mean over dimensions and seeds; one event is a noisy score,
              `evaluate` gives the population view

OUT/samples.json ({method: [seed][future step][agent] the sampled actions' texts}), and
OUT/plots/forecast_<dimension>.png (every category: the observed steps, the real continuation,
each method's mean with its 10-90% band, the references). OUT must not hold a forecast already.
"""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from typing import Optional

import jax
import numpy as np

from mfjax.categories import DIMENSIONS
from mfjax.data import (StepBatch, UidActivity, agent_numbers, agent_states, load_events, make_step_batch,
                        step_numbers, step_texts)
from mfjax.data.events import Event
from mfjax.errors import UserError
from mfjax.evaluation import bounds, plots
from mfjax.evaluation.report import CachedLabeler, decode_actions, label_ids, make_labeler
from mfjax.parallel.mesh import batch_shards
from mfjax.parallel.state import to_host
from mfjax.pipeline.command import open_run
from mfjax.pipeline.data import (Data, fitted_anchor, label_categories, tokenizer_specs, trained_tokenizer,
                                 training_events)
from mfjax.pipeline.rollouts import TAGGED, for_method, read_channel
from mfjax.pipeline.stages import load_trained, mesh_from
from mfjax.rollout import simulate
from mfjax.runs import RunFolderError, log, write_json

FUTURE_STATES = ("last", "real")
REFERENCES = ("persistence", "shrunk", "global")
FORECAST_FILE = "forecast.json"
SAMPLES_FILE = "samples.json"  # {tag: [S][H][B] the sampled actions' texts}
BAND = (10, 90)  # the percentiles over seeds of a method's band


class ForecastError(UserError):
  """An event or a request a forecast cannot use; the message names the file, eid or flag."""


@dataclasses.dataclass(frozen=True)
class ForecastRequest:
  trained_from: str  # a trained run's folder
  events: str  # an event file (any format `load_events` reads)
  out: str  # the folder forecast.json and plots/ go to
  horizon: int  # H steps forecast
  seeds: int = 8  # S rollouts per method
  eid: Optional[str] = None  # the event of `events` (None: the file must hold one)
  observed: Optional[int] = None  # K observed steps (None: every full step of the event)
  methods: tuple[str, ...] = ()  # the run's rollout tags to forecast with (empty: all of the run's)
  future_states: str = "last"  # of FUTURE_STATES
  seed: int = 0  # of the sampling keys (every method reads the same ones)


def forecast_numbers(laid: Event, observed: int, agents: int, future_states: str,
                     activity: Optional[UidActivity]) -> list:
  """The agents' states as numbers (`agent_numbers`) of an event laid out by `forecast_layout`, as its
  state lines are: with `last`, every future step repeats the last observed step's agents' rows."""
  if future_states != "last":
    return agent_numbers(laid, activity)
  B = agents
  rows = agent_numbers(dataclasses.replace(laid, actions=laid.actions[:observed * B]), activity)
  return rows + rows[-B:] * ((len(laid.actions) - observed * B) // B)


def pick_event(path: str, eid: Optional[str]) -> Event:
  """The event `eid` of the file `path`, or its only event where `eid` is None."""
  seen = []
  for e in load_events(path):
    if eid is not None and e.eid == eid:
      return e
    seen.append(e)
  some = ", ".join(e.eid for e in seen[:3]) + (", ..." if len(seen) > 3 else "")
  if not seen:
    raise ForecastError(f"{path}: holds no event")
  if eid is not None:
    raise ForecastError(f"--eid {eid}: no such event in {path} ({len(seen)} events: {some})")
  if len(seen) > 1:
    raise ForecastError(f"{path} holds {len(seen)} events ({some}): name one with --eid")
  return seen[0]


def forecast_layout(event: Event, *, agents: int, observed: Optional[int], horizon: int, future_states: str,
                    activity: Optional[UidActivity]) -> tuple[Event, list[str], int]:
  """(the event as rolled out: K observed steps then H future ones of `agents` actions each, the
  agents' state lines, K). A future action is a placeholder (its text is never read: a rollout past
  its warm-up samples), its agent's state the last observed step's (`last`) or the real one (`real`)."""
  B, n = agents, len(event.actions)
  full = n // B
  if full < 1:
    raise ForecastError(f"event {event.eid}: {n} action(s), fewer than one step of {B} agents "
                        "(the run's data.agents_per_step)")
  K = full if observed is None else observed
  if K > full:
    raise ForecastError(f"--observed {K}: event {event.eid} has {n} actions, {full} full step(s) of {B} agents")
  if future_states not in FUTURE_STATES:
    raise ForecastError(f"--future-states {future_states!r}: choose from {FUTURE_STATES}")
  T = K + horizon
  if future_states == "real":
    if n < T * B:
      raise ForecastError(f"--future-states real: event {event.eid} has {n} actions, {n // B - K} future step(s) "
                          f"of {B} after the {K} observed, not the {horizon} forecast; use --future-states last "
                          f"or --horizon {max(n // B - K, 1)}")
    laid = dataclasses.replace(event, actions=event.actions[:T * B])
    return laid, agent_states(laid, activity), K
  seen = event.actions[:K * B]
  states = agent_states(dataclasses.replace(event, actions=seen), activity)
  last = seen[-B:]
  future = [dataclasses.replace(last[b], id=f"{last[b].id}#forecast{t}.{b}", text="", parent="")
            for t in range(horizon) for b in range(B)]
  return dataclasses.replace(event, actions=seen + tuple(future)), states + states[-B:] * horizon, K


def proportions(ids: dict, mask) -> dict:
  """{dimension: [..., C] category proportions of each step's valid agents} from ids [..., B]."""
  out = {}
  for d, cats in DIMENSIONS.items():
    c = bounds.counts(ids[d], mask, len(cats))
    out[d] = np.where(c.sum(-1, keepdims=True) > 0, c / np.maximum(c.sum(-1, keepdims=True), 1), np.nan)
  return out


def training_references(plan, train: list, labeler: CachedLabeler, observed_ids: dict) -> dict:
  """{reference: {dimension: [C]}}: the no-model forecasts (module docstring) of the observed steps'
  category ids {dimension: [K, B]}, from the run's training events `train` labelled by `labeler`."""
  texts, mask = step_texts(train, plan.data.batch.steps, plan.data.batch.agents_per_step)  # as the run lays them out
  train_ids = label_ids(labeler, [t for row in texts for t in row], mask.shape, keep=True)
  out = {name: {} for name in REFERENCES}
  for d, cats in DIMENSIONS.items():
    counts = bounds.counts(train_ids[d], mask, len(cats))  # [N, T, C]
    pooled, per_step = bounds.training_proportions(counts)
    k = bounds.fit_pseudocount(counts, per_step, plan.sampling.warmup)
    seen = bounds.counts(observed_ids[d], np.ones(observed_ids[d].shape, bool), len(cats)).sum(0)  # [C]
    out["persistence"][d] = seen / seen.sum()
    out["shrunk"][d] = (seen + k * pooled) / (seen.sum() + k)
    out["global"][d] = pooled
  return out


def _kl_per_step(real: dict, forecast: dict) -> list:
  """[H] KL(real || forecast) of each future step, the mean over dimensions and over the seeds, from
  real proportions {dimension: [H, C], NaN past the file's end} and a forecast's {dimension: [S, H, C]};
  None where the real step is unknown."""
  per_dim = []
  for d in DIMENSIONS:
    p, q = np.nan_to_num(real[d]), np.asarray(forecast[d], np.float64)
    per_dim.append(bounds.kls(p, q).reshape(-1, p.shape[0]).mean(0))
  known = ~np.isnan(real[next(iter(DIMENSIONS))][:, 0])
  return [float(x) if k else None for x, k in zip(np.mean(per_dim, 0), known)]


def _jsonable(x):
  """Arrays as lists, NaN rows as None."""
  x = np.asarray(x, np.float64)
  if x.ndim == 1:
    return None if np.isnan(x).any() else [float(v) for v in x]
  return [_jsonable(r) for r in x]


def _band(p_SxHxC) -> dict:
  """{"mean", "p10", "p90": [H] proportions over the seeds} of S rollouts' step proportions."""
  return {"mean": _jsonable(p_SxHxC.mean(0)), **{f"p{q}": _jsonable(np.percentile(p_SxHxC, q, 0)) for q in BAND}}


def forecast(req: ForecastRequest) -> dict:
  """Roll the run's methods out from the event's observed steps (module docstring); returns and
  writes forecast.json and the plots into req.out."""
  t0 = time.time()
  path = os.path.join(req.out, FORECAST_FILE)
  if os.path.exists(path):
    raise ForecastError(f"--out: {path} exists; remove it or give another folder (nothing is overwritten)")
  _, plan, stages = open_run(req.trained_from, "--trained-from")
  tags = {r.tag: r for r in plan.plain}
  chosen = req.methods or tuple(tags)
  for m in chosen:
    if m not in tags:
      raise ForecastError(f"--methods {m}: the run in {req.trained_from} rolls out {tuple(tags)}")
  B = plan.data.batch.agents_per_step
  event = pick_event(req.events, req.eid)
  train = training_events(plan.data)  # the references' population
  # CED agents' states count their actions in the run's training events
  activity = UidActivity.fit(train) if plan.data.source == "ced" else None
  laid, states, K = forecast_layout(event, agents=B, observed=req.observed, horizon=req.horizon,
                                    future_states=req.future_states, activity=activity)
  H, T, S = req.horizon, K + req.horizon, req.seeds
  tok = trained_tokenizer(plan, stages)
  log(f"[forecast] event {event.eid} ({len(event.actions)} actions): {K} observed step(s) of {B} agents, "
      f"{H} forecast with {S} seeds; future agents' states: {req.future_states}")
  batch: StepBatch = make_step_batch([laid], tok, dataclasses.replace(plan.data.batch, steps=T), activity=activity,
                                     states=[states])
  numbers = None  # the agents' states as numbers, where the head or its anchor reads them
  if plan.data.numbers or plan.data.agent_anchor:
    numbers = step_numbers([laid], T, B, rows=[forecast_numbers(laid, K, B, req.future_states, activity)])
  if plan.data.numbers:  # the head reads the states as numbers too
    batch.numbers = numbers
  labeler = CachedLabeler(make_labeler(plan.data.labeler, plan.data.label_data))
  if plan.data.categories:  # the observed actions' classes (the future's placeholders have none)
    batch.category = label_categories(labeler, batch)
    batch.category[:, K:] = -1
  if plan.data.agent_anchor:  # the head's per-agent anchor, fitted on the run's training events as the run did
    blind = any(tags[t].method == "blind" for t in chosen)
    anchor = fitted_anchor(plan.data, train, labeler, activity, blind=blind)
    batch.anchor = anchor.logprobs(batch.category, batch.agent_mask, numbers, batch.texts)
    if blind:
      batch.anchor_blind = anchor.blind(numbers)
  data = Data(tok, train={}, val={}, eval=batch, truth=None, eval_split="forecast", **tokenizer_specs(plan, tok))
  mesh = mesh_from(plan)
  try:
    trained = load_trained(plan, stages, data, mesh=mesh)
  except RunFolderError as e:  # e.g. a tokenizer that is not the one the stages were trained with
    raise ForecastError(f"--trained-from {req.trained_from}: the model its tokenizer makes ({len(tok)} tokens) "
                        f"does not fit its trained stages: {e}") from None
  split = int(np.lcm(batch_shards(mesh), jax.process_count()))
  rows = -(-S // split) * split  # the seeds are the batch's events; the mesh splits them evenly
  arrays = {k: np.repeat(v, rows, 0) for k, v in batch.arrays().items()}
  sp = plan.sampling
  key = jax.random.PRNGKey(req.seed)
  observed_ids = label_ids(labeler, [a.text for a in event.actions[:K * B]], (K, B))
  real_future = event.actions[K * B:T * B]
  real_ids = label_ids(labeler, [a.text for a in real_future] + [""] * (H * B - len(real_future)), (H, B))
  real_mask = (np.arange(H * B) < len(real_future)).reshape(H, B)
  out = {"event": {"eid": event.eid, "source": os.path.abspath(req.events), "label": event.label,
                   "actions": len(event.actions), "observed_steps": K, "observed_actions": K * B,
                   "agents_per_step": B},
         "run": os.path.abspath(req.trained_from), "horizon": H, "seeds": S, "seed": req.seed,
         "future_states": req.future_states, "labeler": plan.data.labeler, "band": list(BAND),
         "categories": {d: list(c) for d, c in DIMENSIONS.items()},
         "observed": {d: _jsonable(p) for d, p in proportions(observed_ids, np.ones((K, B), bool)).items()},
         "real": {d: _jsonable(p) for d, p in proportions(real_ids, real_mask).items()},
         "methods": {}}
  sims, samples = {}, {}
  # an mf that draws its tags through the writer's channel reads the one its run estimated
  channel = read_channel(plan, req.trained_from) if sp.writer_channel and data.tags is not None else None
  for tag in chosen:
    r, t1 = tags[tag], time.time()
    rollout = simulate(trained.model, trained.params[r.params], for_method(arrays, r.method), method=r.method,
                       encoder=trained.encoder,
                       context=data.context, rng=key, warmup=K, temperature=sp.temperature, top_k=sp.top_k,
                       top_p=sp.top_p, score_real=False, mesh=mesh, pin_activations=plan.pin_activations,
                       text=data.text, tags=data.tags, utf8=data.utf8, head_warmup_m=sp.head_warmup_m,
                       writer_temperature=sp.writer_temperature, topic_len=plan.data.batch.topic_len,
                       channel=channel if r.method in TAGGED else None)
    host = to_host(rollout)
    tokens, mask = host.tokens[:S, K:], host.mask[:S, K:]
    texts = decode_actions(tok, tokens, mask)
    samples[tag] = np.asarray(texts, object).reshape(S, H, B).tolist()
    ids = label_ids(labeler, texts, (S, H, B))
    sims[tag] = proportions(ids, np.ones((S, H, B), bool))  # {dimension: [S, H, C]}
    out["methods"][tag] = {d: _band(p) for d, p in sims[tag].items()}
    log(f"[forecast] {tag}: {S} seeds x {H} steps in {time.time() - t1:.1f} s")
  out["references"] = {}
  for name, dists in training_references(plan, train, labeler, observed_ids).items():
    # scored as a method is: S draws of H steps of B agents from the distribution (results.json's simulators too)
    rng = np.random.default_rng([req.seed, zlib.crc32(name.encode())])
    sims[name] = {d: rng.multinomial(B, q, size=(S, H)) / B for d, q in dists.items()}
    out["references"][name] = {d: {"distribution": [float(v) for v in q], **_band(sims[name][d])}
                               for d, q in dists.items()}
  if real_mask.any():
    real = proportions(real_ids, real_mask)
    out["kl_to_real"] = {name: _kl_per_step(real, f) for name, f in sims.items()}
  out["seconds"] = time.time() - t0
  os.makedirs(req.out, exist_ok=True)
  write_json(os.path.join(req.out, SAMPLES_FILE), samples)
  write_json(path, out)  # last: its presence marks a finished forecast
  plots.forecast(req.out, out)
  log(f"[forecast] wrote {path}, {SAMPLES_FILE} and plots/forecast_*.png in {out['seconds']:.0f} s")
  return out
