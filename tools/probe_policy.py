"""How much a run's mean-field policy reads its mean field, and how much of the real population
the mean field holds: the diagnosis of the population-fidelity work, for any run with an `mf` stage.

On the run's validation events, teacher-forced along their real history (as IB-Tune trains), the
`mf` stage's policy and population head read, at every step, one of these mean fields:

  sampled   m ~ q(m | the real history so far), as trained
  mean      m = q's mean
  swapped   another event's m at the same step (each event reads the next one's)
  shuffled  m of a random step of the same event
  zero      m = 0
  warmup    m of the first step after the warm-up (the real warm-up's alone) at every later step: what
            a rollout's mean field holds of the real history (after the warm-up it holds its own draws)

and for each it prints:

  NLL       the NLL per real action token, and that of the first token alone (the share text's
            first token, or a comment's first character: where share or comment is decided)
  pop CE    the population head's cross-entropy per agent (a run with `ib.population_weight` or
            `mf.attributes`)
  P(share)  each agent's probability of a share: the policy's probability that its action starts
            with the share text's first token, or the head's probability of the share class for an
            attribute-conditioned policy. Its mean, its SD over (event, step, agent) cells, its
            correlation and slope against the real share rate of the same (event, step), and the mean
            |change| from `sampled` (what the variant moves)

then, for a run with a population head, the head's forecast of each step's category distribution
(the mean over the step's agents of its distribution, as trained: the mean field read holds the
real history before the step) against the model-free `shrunk` and `global` forecasts, as
KL(real step proportions || forecast) per dimension with no sampling noise, at the first step after
the warm-up (h1: what a rollout forecasts from the same mean field) and over every later step (all;
teacher-forced, where a rollout would read its own draws), and the same head reading the `warmup`
variant (`head_warmup_m`: a forecast from the warm-up's mean field, as a rollout could make without
reading its own draws); then a linear read-out of q's mean: ridge regression from the mean read at step t to the real
proportion of shares, doubting actions and negative actions in step t, R^2 by 4-fold
cross-validation over events (does the mean field hold the population?). A policy that reads its
mean field shows a P(share) that follows the real share rate and moves when m is swapped.

  python tools/probe_policy.py --run runs/quickstart
  python tools/probe_policy.py --run runs/ced_weibo --json runs/ced_weibo/probe.json
  python tools/probe_policy.py --run runs/ced_val364 --split eval   # on the events its rollouts scored
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mfjax.configs import ConfigError  # noqa: E402
from mfjax.data import SHARE_TEXT  # noqa: E402
from mfjax.errors import one_line_errors  # noqa: E402
from mfjax.ibtune.objective import (_flat, _per_agent_rows, batch_head_state, mean_field_path,  # noqa: E402
                                    population_terms)
from mfjax.meanfield import MeanFieldEncoder  # noqa: E402
from mfjax.meanfield.encoder import agent_anchors  # noqa: E402
from mfjax.model import Decoder  # noqa: E402
from mfjax.params_keys import PARAMS  # noqa: E402
from mfjax.categories import class_dimensions, class_of  # noqa: E402
from mfjax.data import step_texts  # noqa: E402
from mfjax.evaluation import bounds  # noqa: E402
from mfjax.evaluation.report import CachedLabeler, label_ids, make_labeler  # noqa: E402
from mfjax.pipeline.command import open_run  # noqa: E402
from mfjax.pipeline.data import label_categories, prepare, split_events  # noqa: E402
from mfjax.pipeline.stages import load_trained, mesh_from  # noqa: E402
from mfjax.policy import action_logprobs, with_tags  # noqa: E402
from mfjax.workdir import stage_dir  # noqa: E402

VARIANTS = ("sampled", "mean", "swapped", "shuffled", "zero", "warmup")
FORECAST_VARIANTS = {"sampled": "head", "warmup": "head_warmup_m"}  # the variants whose head forecast is scored


def variant_field(name: str, m, mu, rng, warmup: int = 0):
  """The mean field [E, T, K, D] a variant reads, from the sampled m and the posterior mean mu
  (`warmup`: the rollout's warm-up steps, for the variant of that name)."""
  E, T = m.shape[:2]
  if name == "sampled":
    return m
  if name == "mean":
    return mu
  if name == "swapped":
    return jnp.roll(m, 1, axis=0) if E > 1 else m
  if name == "shuffled":
    return m[jnp.arange(E)[:, None], jax.random.randint(rng, (E, T), 0, T)]
  if name == "zero":
    return jnp.zeros_like(m)
  if name == "warmup":  # step t reads m of step min(t, warmup): the mean field of the real warm-up from then on
    return m[:, jnp.minimum(jnp.arange(T), warmup)]
  raise ValueError(name)


def probe_chunk(model, encoder, params, batch, tags, share_id, rng, warmup: int = 0):
  """{variant: per-agent arrays [E, T, B]}: the NLL of the action's first token and of all its
  tokens (summed), its token count, P(share), and the head's cross-entropy (NaN without a head)."""
  k_m, k_s = jax.random.split(rng)
  m, mu, _ = mean_field_path(model=model, encoder=encoder, params=params, batch=batch, rng=k_m)
  E, T, B = batch["agent_mask"].shape
  lm = params[PARAMS.lm]
  prompt_ids, prompt_mask = _flat(batch["prompt_ids"], 1), _flat(batch["prompt_mask"], 1)
  head = bool(encoder.cfg.classes)
  if tags is not None:
    prompt_ids, prompt_mask = with_tags(prompt_ids, prompt_mask, tags, _flat(batch["category"], 0))
  state = batch_head_state(model, encoder, lm, batch) if head else None  # the same m-free input for every variant
  out = {}
  for name in VARIANTS:
    field = variant_field(name, m, mu, k_s, warmup)
    prefix = _per_agent_rows(field, B)
    logp = action_logprobs(model, lm, prompt_ids, prompt_mask, _flat(batch["action_ids"], 1),
                           _flat(batch["action_mask"], 1), prefix_NxKxD=prefix)  # [N, A]
    w = _flat(batch["action_mask"], 1).astype(jnp.float32)
    row = {"nll_first": -logp[:, 0].reshape(E, T, B), "nll_sum": -(logp * w).sum(-1).reshape(E, T, B),
           "tokens": w.sum(-1).reshape(E, T, B)}
    if head:
      logits = encoder.apply({"params": params[PARAMS.mf]}, jnp.broadcast_to(field[:, :, None], (E, T, B) + field.shape[2:]),
                             state, agent_anchors(encoder.cfg, batch),
                             method=MeanFieldEncoder.class_logits)
      row["p_head_share"] = jax.nn.softmax(logits, -1)[..., 0]
      if name in FORECAST_VARIANTS:
        row["head_probs"] = jax.nn.softmax(logits, -1)  # [E, T, B, C]: the head's forecast (`head_forecast`)
      row["population"] = population_terms(model=model, encoder=encoder, params=params, batch=batch,
                                           m_ExTxKxD=field)["population"]
    if tags is None:  # the policy's own first-token distribution after the untagged prompt
      _, hidden = model.apply({"params": lm}, prompt_ids, prompt_mask, prefix_embeds_BxKxD=prefix, return_hidden=True,
                              queries_from=prompt_ids.shape[-1] - 1)
      first = jax.nn.log_softmax(model.apply({"params": lm}, hidden[:, -1:], method=Decoder.logits)[:, 0], -1)
      row["p_share"] = jnp.exp(first[:, share_id]).reshape(E, T, B)
    else:
      row["p_share"] = row["p_head_share"]
    out[name] = row
  return out, mu


def _corr_slope(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.std() == 0 or y.std() == 0:
    return float("nan"), 0.0
  c = float(np.corrcoef(x, y)[0, 1])
  return c, float(np.polyfit(x, y, 1)[0])


def ridge_r2(X, Y, groups, folds: int = 4, alpha: float = 1.0):
  """R^2 per target column of ridge regression from X [N, F] to Y [N, C], cross-validated over
  `groups` (no group in the fold that scores it); features standardised on the training folds."""
  ids = np.unique(groups)
  pred = np.zeros_like(Y, np.float64)
  for f in range(folds):
    test = np.isin(groups, ids[f::folds])
    if not test.any() or test.all():
      return [float("nan")] * Y.shape[1]
    mean, std = X[~test].mean(0), X[~test].std(0) + 1e-8
    Xtr, Xte = (X[~test] - mean) / std, (X[test] - mean) / std
    ymean = Y[~test].mean(0)
    coef = np.linalg.solve(Xtr.T @ Xtr + alpha * len(Xtr) * np.eye(X.shape[1]), Xtr.T @ (Y[~test] - ymean))
    pred[test] = Xte @ coef + ymean
  ss = ((Y - Y.mean(0)) ** 2).sum(0)
  return [float(1 - ((Y[:, c] - pred[:, c]) ** 2).sum() / ss[c]) if ss[c] > 0 else float("nan")
          for c in range(Y.shape[1])]


def probe(run_dir: str, events: int = 0, seed: int = 0, split: str = "val") -> dict:
  """The probe's results on the run's validation events (`split` "val") or on the events its rollouts
  are scored on ("eval"); a run made --trained-from another reads that run's stages."""
  try:
    cfg, plan, stages = open_run(run_dir)
  except (FileNotFoundError, ConfigError) as e:
    raise SystemExit(str(e)) from None
  if not any(s.name == "mf" for s in plan.stages):
    raise SystemExit(f"--run: {run_dir} trains no mf stage (rollout.methods={cfg.rollout.methods!r})")
  if not os.path.isdir(stage_dir(stages, "mf")):
    raise SystemExit(f"--run: {stages} has no trained mf stage yet (run `python -m mfjax train` there)")
  data = prepare(plan, stages)
  mesh = mesh_from(plan)
  trained = load_trained(plan, stages, data, mesh=mesh)
  params = jax.device_get(trained.params[next(r.params for r in plan.plain if r.tag == "mf")])  # mf_head's, if fitted
  if split == "eval":
    val = data.eval.arrays()
    if "category" not in val:  # labelled as a head's targets would be
      val["category"] = label_categories(CachedLabeler(make_labeler(plan.data.labeler, plan.data.label_data)),
                                         data.eval)
  else:
    val = dict(data.val)
  if "category" not in val:  # the real rates need the actions' categories: labelled as a head's would be
    _, val_events, _, _, _ = split_events(plan.data)
    b = plan.data.batch
    texts, mask = step_texts(val_events, b.steps, b.agents_per_step)
    labeler = CachedLabeler(make_labeler(plan.data.labeler, plan.data.label_data))
    ids = label_ids(labeler, [t for row in texts for t in row], mask.shape, keep=True)
    val["category"] = np.where(mask, class_of(ids), -1).astype(np.int32)
  n = len(val["agent_mask"]) if not events else min(events, len(val["agent_mask"]))
  share_id = data.tokenizer(SHARE_TEXT, add_special_tokens=False)["input_ids"][0]
  chunk = min(plan.stage("mf").batch_events, n)
  fn = jax.jit(lambda b, r: probe_chunk(trained.model, trained.encoder, params, b, data.tags, share_id, r,
                                        plan.sampling.warmup))
  rows, mus = [], []
  chunks, t0 = n // chunk, time.time()
  for j, i in enumerate(range(0, n - n % chunk, chunk)):
    r, mu = jax.device_get(fn({k: v[i:i + chunk] for k, v in val.items()}, jax.random.PRNGKey(seed + i)))
    rows.append(r)
    mus.append(mu)
    if (j + 1) % max(chunks // 10, 1) == 0 or j + 1 == chunks:  # progress on stderr: stdout is the table
      spent = time.time() - t0
      print(f"[probe] {(j + 1) * chunk}/{chunks * chunk} events in {spent:.0f} s (about "
            f"{spent / (j + 1) * (chunks - j - 1):.0f} s left)", file=sys.stderr, flush=True)
  val = {k: v[:len(mus) * chunk] for k, v in val.items()}
  out = {"split": split, **summarise(rows, np.concatenate(mus), val)}
  if "head_probs" in rows[0]["sampled"]:
    probs = {name: np.concatenate([r[v]["head_probs"] for r in rows]) for v, name in FORECAST_VARIANTS.items()}
    out["forecast"] = head_forecast(probs, val, data.train, plan.sampling.warmup)
  return out


def summarise(rows, mu, val) -> dict:
  cat = lambda name, key: np.concatenate([r[name][key] for r in rows])
  mask = np.asarray(val["agent_mask"], bool)
  real = real_rates(val)  # [E, T] per rate
  step_ok = mask.any(-1)
  out = {"events": int(mask.shape[0]), "variants": {}}
  base = cat("sampled", "p_share")
  for name in VARIANTS:
    p = cat(name, "p_share")
    step_p = (p * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    corr, slope = _corr_slope(real["share"][step_ok], step_p[step_ok])
    tok = cat(name, "tokens")
    v = {"nll": float((cat(name, "nll_sum") * mask).sum() / (tok * mask).sum()),
         "nll_first": float((cat(name, "nll_first") * mask).sum() / mask.sum()),
         "p_share_mean": float(p[mask].mean()), "p_share_sd": float(p[mask].std()),
         "p_share_corr": corr, "p_share_slope": slope,
         "p_share_change": float(np.abs(p - base)[mask].mean())}
    if "population" in rows[0][name]:
      v["population"] = float(np.mean([r[name]["population"] for r in rows]))
    out["variants"][name] = v
  E, T = mu.shape[:2]
  X = mu.reshape(E * T, -1)
  Y = np.stack([real[k].reshape(-1) for k in ("share", "doubt", "negative")], -1)
  ok = step_ok.reshape(-1)
  groups = np.repeat(np.arange(E), T)
  out["readout_r2"] = dict(zip(("share", "doubt", "negative"), ridge_r2(X[ok], Y[ok], groups[ok])))
  out["real_share_rate_sd"] = float(real["share"][step_ok].std())
  out["real_share_rate"] = float((real["share"] * mask.sum(-1)).sum() / mask.sum())
  return out


def _dimension_counts(category, mask) -> dict:
  """dimension -> [E, T, C_dim] counts of each category among a step's valid, labelled agents."""
  c, ok = np.asarray(category), np.asarray(mask, bool) & (np.asarray(category) >= 0)
  return {d: (np.eye(max(of) + 1)[np.asarray(of)[np.maximum(c, 0)]] * ok[..., None]).sum(2)
          for d, of in class_dimensions().items()}


def head_forecast(probs_ExTxBxC, val, train, warmup: int) -> dict:
  """The population head's forecast of each step's category distribution (the mean over the step's
  agents of its per-agent distribution, teacher-forced: the mean field holds the real history before the
  step) against the model-free `shrunk` and `global` forecasts (`mfjax.evaluation.bounds`, from the
  training events' categories): KL(real step proportions || forecast) per dimension, the mean over the
  (event, step)s after the `warmup`, at h = 1 (the first step after it, which a rollout forecasts from
  the same mean field) and over all of them. No sampling noise: the forecasts are scored as
  distributions; over the steps the training events' layout holds (a longer eval layout's later steps are
  not scored). probs_ExTxBxC: one array (the row "head"), or {row name: array} for several heads.
  {"h1" | "all": {name: {dimension: KL, "mean"}}}."""
  T = min(np.shape(val["agent_mask"])[1], np.shape(train["agent_mask"])[1])  # the steps both layouts hold
  mask = np.asarray(val["agent_mask"], bool)[:, :T]
  heads = probs_ExTxBxC if isinstance(probs_ExTxBxC, dict) else {"head": probs_ExTxBxC}
  heads = {name: np.asarray(p, np.float64)[:, :T] for name, p in heads.items()}
  real = _dimension_counts(np.asarray(val["category"])[:, :T], mask)
  trained = _dimension_counts(train["category"], train["agent_mask"])
  scored = mask.any(-1) & (np.arange(T) >= warmup)[None]
  spans = {"h1": scored & (np.arange(T) == warmup)[None], "all": scored}
  w = mask[..., None].astype(np.float64)
  out = {span: {**{name: {} for name in heads}, "shrunk": {}, "global": {}} for span in spans}
  for d, of in class_dimensions().items():
    onehot = np.eye(max(of) + 1)[np.asarray(of)]  # [C, C_dim]
    _, per_step = bounds.training_proportions(trained[d])
    forecasts = {**{name: (p @ onehot * w).sum(2) / np.maximum(w.sum(2), 1.0) for name, p in heads.items()},
                 "shrunk": bounds.shrunk_forecast(real[d], trained[d], warmup, per_step)[0],
                 "global": np.broadcast_to(per_step, real[d].shape)}
    for name, q in forecasts.items():
      kl = bounds.kls(real[d], q)
      for span, cells in spans.items():
        out[span][name][d] = float(np.where(cells, kl, 0.0).sum() / max(cells.sum(), 1))
  for span in out.values():
    for row in span.values():
      row["mean"] = float(np.mean(list(row.values())))
  return out


def real_rates(val) -> dict:
  """The real proportion of shares, doubting and negative actions of every (event, step) [E, T]."""
  c = np.asarray(val["category"])
  mask = np.asarray(val["agent_mask"], bool)
  dims = class_dimensions()
  n = np.maximum(mask.sum(-1), 1)
  of = lambda dim, k: ((np.asarray(dims[dim])[np.maximum(c, 0)] == k) & mask).sum(-1) / n
  return {"share": of("behaviour", 0), "doubt": of("belief", 1), "negative": of("sentiment", 0)}


def table(result: dict) -> str:
  lines = [f"{result['events']} {'scored' if result.get('split') == 'eval' else 'validation'} events; the real share rate {result['real_share_rate']:.3f}, its SD "
           f"over (event, step) {result['real_share_rate_sd']:.3f}",
           f"{'variant':<10}{'NLL':>8}{'NLL 1st':>9}{'pop CE':>8}{'P(share)':>10}{'SD':>7}{'corr':>7}{'slope':>7}"
           f"{'|change|':>10}"]
  for name, v in result["variants"].items():
    pop = f"{v['population']:8.3f}" if "population" in v else f"{'-':>8}"
    lines.append(f"{name:<10}{v['nll']:8.3f}{v['nll_first']:9.3f}{pop}{v['p_share_mean']:10.3f}{v['p_share_sd']:7.3f}"
                 f"{v['p_share_corr']:7.2f}{v['p_share_slope']:7.2f}{v['p_share_change']:10.4f}")
  if "forecast" in result:
    lines.append("the head's forecast of each step's distribution against the model-free ones, KL(real || forecast), "
                 "teacher-forced, no sampling noise:")
    dims = list(result["forecast"]["h1"]["head"])
    lines.append(f"{'':<14}{'span':<6}" + "".join(f"{d:>11}" for d in dims))
    for span, rows in result["forecast"].items():
      for name, row in rows.items():
        lines.append(f"{name:<14}{span:<6}" + "".join(f"{row[d]:11.4f}" for d in dims))
  r2 = result["readout_r2"]
  lines.append("linear read-out of q's mean (ridge, 4-fold over events), R^2: "
               + ", ".join(f"{k} {v:.2f}" for k, v in r2.items()))
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--run", required=True, metavar="DIR", help="a run folder with a trained mf stage")
  ap.add_argument("--events", type=int, default=0, help="events to probe (default: all of the split's)")
  ap.add_argument("--split", choices=("val", "eval"), default="val",
                  help="the run's validation events (default) or the events its rollouts are scored on")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--json", metavar="PATH", help="also write the result as JSON here (never over an existing file)")
  a = ap.parse_args(argv)
  if a.json and os.path.exists(a.json):
    ap.error(f"--json: {a.json} exists; give a new path")
  with one_line_errors():
    result = probe(a.run, a.events, a.seed, a.split)
  print(table(result))
  if a.json:
    with open(a.json, "x") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
