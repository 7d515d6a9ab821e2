"""PNG plots of a run (matplotlib, Agg): proportion trajectories real vs
simulated, KL per step, forecast skill by horizon, the IB curve, training losses, an intervention's effect."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import bounds, metrics
from mfjax.runs import read_jsonl

# The category whose proportion each trajectory plot shows.
SHOWN = {"behaviour": "share", "belief": "doubt", "sentiment": "negative", "intent": "question"}


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def write_all(workdir: str, real: dict, sims: dict, agent_mask, weights, results: dict) -> None:
  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  plt = _plt()
  T = agent_mask.shape[1]
  warmup = results["data"]["warmup"]
  props = lambda ids, d: np.asarray(metrics.step_distributions(ids[d], agent_mask, len(DIMENSIONS[d]))[0])
  valid = np.asarray(agent_mask).any(-1)  # [E, T]: the event has agents at that step
  mean_over_events = lambda x: metrics.event_mean(x, valid)

  # mean trajectories over events, and the first events one by one (herding makes them differ)
  for name, select in (("trajectories_mean", None), ("trajectories_event0", 0), ("trajectories_event1", 1)):
    if select is not None and select >= agent_mask.shape[0]:
      continue
    fig, axes = plt.subplots(1, len(DIMENSIONS), figsize=(4 * len(DIMENSIONS), 3.2), sharex=True)
    for ax, d in zip(axes, DIMENSIONS):
      c = DIMENSIONS[d].index(SHOWN[d])
      for label, ids, style in [("real", real, dict(color="k", lw=2.5))] + [(m, s, {}) for m, s in sims.items()]:
        p = props(ids, d)[..., c]
        y = mean_over_events(p) if select is None else np.where(valid[select], p[select], np.nan)  # a gap
        ax.plot(np.arange(T), y, label=label, **style)
      ax.axvspan(-0.5, warmup - 0.5, color="0.9")
      ax.set(title=f"{d}: {SHOWN[d]}", xlabel="step", ylim=(0, 1))
    axes[0].set_ylabel("proportion" + (" (mean over events)" if select is None else f" (event {select})"))
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=110)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  steps = lambda xs: np.array([np.nan if v is None else v for v in xs])
  for m, r in results["methods"].items():  # the mean over seeds; in warm-up, drawn from the real history
    ax.plot(np.arange(T), steps(r["kl_per_step"]), label=m, marker="o", ms=3)
  sims_ref = results.get("simulators", {}).get("methods", {})
  # no-model references, dashed; world (dotted): the synthetic world run free from the warm-up, the perfect simulator
  for name, grey, style in (("global", "0.6", "--"), ("shrunk", "0.35", "--"), ("event", "0.1", "--"),
                            ("world", "0.1", ":")):
    if name in sims_ref:
      y = steps(sims_ref[name]["kl_per_step"])
      about = " (run free)" if name == "world" else " (no model)"
      alone = dict(marker="_", ms=9) if np.isfinite(y).sum() == 1 else {}  # one scored step: a point, no line
      ax.plot(np.arange(T), y, style, color=grey, label=name + ("*" if name in bounds.ORACLES else "") + about,
              **alone)
  ax.axvspan(-0.5, warmup - 0.5, color="0.9")
  seeds = next(iter(results["methods"].values()))["seeds"] if results["methods"] else 0
  ax.set(xlabel="step", ylabel="KL(real || sim), mean over dimensions", title=f"KL per step (mean over {seeds} seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "kl_per_step.png"), dpi=110)
  plt.close(fig)

  if results.get("horizon", {}).get("h"):
    horizon(out, results["horizon"])

  if results.get("drift", {}).get("methods"):
    drift(out, results)

  if results.get("ib_sweep"):
    rows = [r for r in results["ib_sweep"] if r["val_relevance"] is not None]
    pop = [r for r in rows if r.get("val_population") is not None]  # with a population head: its CE too
    weights = {r.get("population_weight") for r in rows}
    name = lambda r: f"β={r['beta']:g}" + (f", w={r['population_weight']:g}" if len(weights) > 1 else "")
    fig, axes = plt.subplots(1, 3 if pop else 2, figsize=(13.5 if pop else 9, 3.4))
    x = [r["val_compression_bits"] for r in rows]
    axes[0].plot(x, [r["val_relevance"] for r in rows], marker="o", linestyle="none" if len(weights) > 1 else "-")
    for r in rows:
      axes[0].annotate(name(r), (r["val_compression_bits"], r["val_relevance"]), fontsize=7)
    axes[0].set(xlabel="compression: KL(q || prior) per step (bits)", ylabel="relevance: val NLL per token",
                title="IB curve")
    if pop:
      axes[2].plot([r["val_compression_bits"] for r in pop], [r["val_population"] for r in pop], marker="o",
                   linestyle="none")
      for r in pop:
        axes[2].annotate(name(r), (r["val_compression_bits"], r["val_population"]), fontsize=7)
      axes[2].set(xlabel="compression: KL(q || prior) per step (bits)",
                  ylabel="population CE per agent (val)", title="the head's forecast vs compression")
    axes[1].errorbar(range(len(rows)), [r["kl_mean"] for r in rows], yerr=[r["kl_mean_std"] for r in rows],
                     marker="o")
    axes[1].set(xticks=range(len(rows)), xticklabels=[name(r) for r in rows], xlabel="stage",
                ylabel="rollout KL mean", title="rollout KL by stage")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ib_curve.png"), dpi=110)
    plt.close(fig)


def horizon(out: str, hz: dict) -> None:
  """horizon.png: KL and forecast skill against persistence (with its 95% interval) at each step after the
  warm-up, for every method (solid) and forecast reference (dashed)."""
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  h = np.asarray(hz["h"])
  for i, (name, r) in enumerate(hz["methods"].items()):
    style = dict(ls="--", color="0.5" if name == hz["persistence"] else "0.25") if name in ("warmup", "shrunk", "global") \
        else dict(color=f"C{i}", marker="o", ms=3)
    label = f"{name} (no model)" if "ls" in style else name
    axes[0].plot(h, r["kl"], label=label, **style)
    axes[1].plot(h, r["skill"], label=label, **style)
    if "ls" not in style:
      lo, hi = np.asarray(r["skill_ci95"]).T
      axes[1].fill_between(h, lo, hi, color=style["color"], alpha=0.15)
  axes[0].set(xlabel="h: steps after the warm-up", ylabel="KL(real || sim), mean over dimensions", title="KL by horizon")
  axes[1].axhline(0, color="k", lw=0.8)
  axes[1].set(xlabel="h: steps after the warm-up", ylabel=f"skill: 1 - KL / KL({hz['persistence']})",
              title="forecast skill against persistence (95% band)")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "horizon.png"), dpi=110)
  plt.close(fig)


def drift(out: str, results: dict) -> None:
  """drift.png (eval.drift): KL per step over a long rollout, a moving mean over T/32 steps, for every
  method (solid) and the references persistence (warmup), shrunk, step* (sampling noise) and world* (the
  synthetic world run free); then each dimension's for the methods. The drift windows are shaded."""
  plt = _plt()
  T = results["data"]["steps"]
  width = max(1, T // 32)
  smooth = lambda xs: np.convolve(np.nan_to_num(np.array([np.nan if v is None else v for v in xs], np.float64)),
                                  np.ones(width) / width, mode="same")
  fig, axes = plt.subplots(1, 1 + len(DIMENSIONS), figsize=(4 * (1 + len(DIMENSIONS)), 3.4))
  x = np.arange(1, T + 1)
  w = results["data"]["warmup"]
  for i, (m, r) in enumerate(results["methods"].items()):
    axes[0].plot(x[w:], smooth(r["kl_per_step"])[w:], color=f"C{i}", label=m)
    for ax, d in zip(axes[1:], DIMENSIONS):
      ax.plot(x[w:], smooth(r["kl_dim_per_step"][d])[w:], color=f"C{i}", label=m)
  refs = results.get("simulators", {}).get("methods", {})
  for name, grey, style in (("warmup", "0.6", "--"), ("shrunk", "0.35", "--"), ("step", "0.1", ":"),
                            ("world", "0.1", "-.")):
    if name in refs:
      label = name + ("*" if name in bounds.ORACLES else "") + (" (persistence)" if name == "warmup" else "")
      axes[0].plot(x[w:], smooth(refs[name]["kl_per_step"])[w:], style, color=grey, label=label)
  for ax in axes:
    for a, b in results["drift"]["windows"]:
      ax.axvspan(a - 0.5, b + 0.5, color="0.92")
  axes[0].set(xlabel="step", ylabel=f"KL(real || sim), moving mean over {width} step(s)", title="KL per step")
  for ax, d in zip(axes[1:], DIMENSIONS):
    ax.set(xlabel="step", title=f"{d} (methods)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "drift.png"), dpi=100)
  plt.close(fig)


def forecast(out: str, fc: dict) -> None:
  """plots/forecast_<dimension>.png of a forecast (`mfjax.pipeline.forecast`): per category, the
  observed steps, the real continuation where known, each method's mean with its band over seeds,
  and the no-model references held over the horizon."""
  plt = _plt()
  folder = os.path.join(out, "plots")
  os.makedirs(folder, exist_ok=True)
  K, H = fc["event"]["observed_steps"], fc["horizon"]
  seen, ahead = np.arange(1, K + 1), np.arange(K + 1, K + H + 1)
  lo, hi = (f"p{p}" for p in fc["band"])
  for d, cats in fc["categories"].items():
    as_array = lambda rows: np.array([[np.nan] * len(cats) if r is None else r for r in rows], np.float64)  # noqa: E731
    fig, axes = plt.subplots(1, len(cats), figsize=(4 * len(cats), 3.4), squeeze=False)
    for j, (ax, cat) in enumerate(zip(axes[0], cats)):
      ax.plot(seen, as_array(fc["observed"][d])[:, j], "k-o", ms=3, label="observed")
      real = as_array(fc["real"][d])[:, j]
      if not np.isnan(real).all():
        ax.plot(ahead, real, "k--o", ms=3, mfc="none", label="real continuation")
      for i, (tag, m) in enumerate(fc["methods"].items()):
        ax.plot(ahead, as_array(m[d]["mean"])[:, j], color=f"C{i}", label=tag)
        ax.fill_between(ahead, as_array(m[d][lo])[:, j], as_array(m[d][hi])[:, j], color=f"C{i}", alpha=0.15)
      for k, (name, r) in enumerate(fc["references"].items()):
        ax.hlines(r[d]["distribution"][j], K + 0.5, K + H + 0.5, colors=str(0.2 + 0.25 * k), linestyles=":", label=f"{name} (no model)")
      ax.axvline(K + 0.5, color="0.7", lw=0.8)
      ax.set(title=f"{d}: {cat}", xlabel="step", ylabel="proportion" if j == 0 else None, ylim=(-0.02, 1.02))
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"event {fc['event']['eid']}: {K} observed steps, {H} forecast "
                 f"({fc['seeds']} seeds, band {lo}-{hi})", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"forecast_{d}.png"), dpi=100)
    plt.close(fig)


def intervention(workdir: str, traces: dict, agent_mask, section: dict) -> None:
  """plots/intervention.png: per dimension, the shown category's proportion
  (mean over events) of each method's rollout without the intervention (solid)
  and with it (dashed, from its step on), seed 0; on the synthetic world, the
  world's own (black).
  traces: name -> (proportions without, with), dimension -> [E, T, C]."""
  plt = _plt()
  T, s = agent_mask.shape[1], section["step"]
  valid = np.asarray(agent_mask).any(-1)
  fig, axes = plt.subplots(1, len(DIMENSIONS), figsize=(4 * len(DIMENSIONS) + 2, 3.4), sharex=True)
  for ax, d in zip(axes, DIMENSIONS):
    c = DIMENSIONS[d].index(SHOWN[d])
    for i, (name, (without, with_)) in enumerate(traces.items()):
      color = "k" if name == "world" else f"C{i}"
      y0, y1 = (metrics.event_mean(np.asarray(p[d])[..., c], valid) for p in (without, with_))
      ax.plot(np.arange(T), y0, "-", color=color, label=name)
      # with it: a branch from the intervention's step (whose forced agents a rollout's samples do not show)
      ax.plot(np.arange(s, T), np.concatenate([y0[s:s + 1], y1[s + 1:]]), "--", color=color,
              label=name + " + intervention")
    ax.axvline(s, color="0.5", lw=1)
    ax.set(title=f"{d}: {SHOWN[d]}", xlabel="step", ylim=(0, 1))
  axes[0].set_ylabel("proportion (mean over events)")
  fig.legend(*axes[-1].get_legend_handles_labels(), loc="center right", fontsize=7)
  # the labels, not the text: matplotlib's default font lacks CJK glyphs
  fig.suptitle(f"{section['agents']} agents inject an action ({', '.join(section['labels'].values())}) at step "
               f"{section['step']}", fontsize=9)
  fig.tight_layout(rect=(0, 0, 0.88, 1))
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  fig.savefig(os.path.join(workdir, "plots", "intervention.png"), dpi=110)
  plt.close(fig)


def training_curves(workdir: str, stages: list[str], stages_dir: Optional[str] = None) -> None:
  """NLL per action token of every training stage found in `stages_dir` (default: the
  workdir), on its training batches (line) and on the validation events (circles,
  dashed), plotted into the workdir's plots/."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  for s in stages:
    path = os.path.join(stages_dir or workdir, s, "metrics.jsonl")
    if not os.path.exists(path):
      continue
    rows = read_jsonl(path)
    train = [r for r in rows if "relevance" in r]
    (line,) = ax.plot([r["step"] for r in train], [r["relevance"] for r in train], label=s, lw=1)
    val = [r for r in rows if "val_relevance" in r]
    if val:
      ax.plot([r["step"] for r in val], [r["val_relevance"] for r in val], "o--", color=line.get_color(), ms=3.5,
              lw=1, label=f"{s} val")
  ax.set(xlabel="step", ylabel="NLL per action token", title="training (line) and validation (circles)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  fig.savefig(os.path.join(workdir, "plots", "training.png"), dpi=110)
  plt.close(fig)
