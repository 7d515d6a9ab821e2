"""The rollouts of a run (`RunPlan.rollouts`): every method and seed over the eval events,
saved one file each (atomically) under workdir/rollouts, so that a rerun makes only the
missing ones."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from mfjax.parallel import distributed, global_batch
from mfjax.parallel.mesh import check_events, process_rows
from mfjax.parallel.state import to_host
from mfjax.pipeline.data import Data
from mfjax.pipeline.stages import Trained
from mfjax.pipeline_config import RunPlan
from mfjax.rollout import simulate
from mfjax.runs import log
from mfjax.workdir import ATTRIBUTE_ROLLOUT_ARRAYS, ROLLOUT_ARRAYS, TEXT_ROLLOUT_ARRAYS, rollout_path, save_rollout


def simulate_all(plan: RunPlan, workdir: str, data: Data, trained: Trained, *, mesh) -> None:
  """Roll out every method and seed over the eval events (existing files are
  kept), `rollout.batch_events` events per call split over the mesh; then, with
  an intervention, its methods again over the intervened events, with the same
  keys (so that a rollout differs from its method's only through the injected actions)."""
  sampling = plan.sampling
  plain = data.eval.arrays()
  E = len(plain["agent_mask"])
  chunk = min(sampling.batch_events, E)
  check_events(chunk, mesh, "rollout.batch_events (or the eval events, if fewer)")
  rows = process_rows(chunk)
  n_chunks = -(-E // chunk)
  for r in plan.rollouts:
    tag, method, arrays = r.tag, r.method, data.intervened if r.intervened else plain
    for seed in range(sampling.seeds):
      path = rollout_path(workdir, tag, seed)
      if os.path.exists(path):
        continue
      t0 = time.time()
      key = jax.random.PRNGKey(plan.seed + 1000 * (seed + 1))  # every method's rollout of a seed: the same keys
      parts = []
      for c in range(n_chunks):
        idx = np.arange(c * chunk, (c + 1) * chunk) % E  # the last chunk wraps around: one static shape
        batch = global_batch({k: v[idx][rows] for k, v in arrays.items()}, mesh)
        out = simulate(trained.model, trained.params[r.params], batch, method=method, encoder=trained.encoder,
                       context=data.context, rng=jax.random.fold_in(key, c),
                       warmup=sampling.warmup, temperature=sampling.temperature, top_k=sampling.top_k,
                       top_p=sampling.top_p, mesh=mesh, donate_batch=True,  # a fresh batch each call
                       pin_activations=plan.pin_activations, text=data.text, tags=data.tags,
                       utf8=data.utf8, head_warmup_m=sampling.head_warmup_m,
                       writer_temperature=sampling.writer_temperature, topic_len=plan.data.eval_batch.topic_len)
        parts.append(to_host(out))
      if not distributed.is_main():
        continue
      kept = ROLLOUT_ARRAYS + (TEXT_ROLLOUT_ARRAYS if method == "mf_text" else ()) + (
          ATTRIBUTE_ROLLOUT_ARRAYS if method == "mf" and data.tags is not None else ())
      saved = {f: np.concatenate([getattr(p, f) for p in parts])[:E] for f in kept}
      save_rollout(workdir, tag, seed, saved)
      if method == "mf_text":  # what the writer says, for a look: event 0's last summary
        last = saved["summary"][0, -1][saved["summary_mask"][0, -1]]
        log(f"[simulate] {tag} seed {seed}: event 0's last summary: "
            f"{data.tokenizer.decode(last, skip_special_tokens=True)!r}")
      b = plan.data.eval_batch
      log(f"[simulate] {tag} seed {seed}: {E} events x {b.steps} steps x {b.agents_per_step} agents "
          f"in {time.time() - t0:.1f} s")
