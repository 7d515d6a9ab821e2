r"""Per-device memory of an experiment on a mesh, before any hardware is booked.

Compiles the IB-Tune train step and the `mf` rollout ahead of time against
abstract shapes (nothing is allocated) for the given mesh, and prints one JSON
line each with XLA's per-device bytes: arguments (parameters, optimizer
state, batch shard), outputs, temporaries and their sum (`peak_bytes`).
On a host without that many accelerators the mesh is made of forced CPU
devices, so arguments and outputs are exact and temporaries are XLA's CPU
estimate. On the hardware itself, `--execute` also runs each compiled step
once on arrays of those shapes (zeros) and prints the allocator's measured peak
beside XLA's figure; `--repeats N` then times N more runs (`seconds`, the best).

Each line also carries what the program's collectives (all-reduce,
all-gather, ...) produce on a device: `collective_bytes` counts each op once;
`traffic_bytes` (and `traffic`, per kind) multiplies each by the iterations of
the loops around it, the decode loop at its bound (`loop_bound`, the action
length), so it is what one run moves at most. Compare meshes, or
`--set parallel.pin_activations=false` against the default, by it.

  python tools/aot_memory.py --config experiments/qwen2_lora.py --mesh 1,4,2
  python tools/aot_memory.py --config experiments/qwen2_lora.py --preset qwen2-1.5b --mesh 2,4,1 --events 8
  python tools/aot_memory.py --config experiments/quickstart.py --mesh 2,2,2
  python tools/aot_memory.py --config experiments/quickstart.py --mesh 2,4,1 --events 8 --rollout-events 8 \
      --execute --repeats 3 --set parallel.pin_activations=false
  python tools/aot_memory.py --config experiments/qwen2_lora.py --preset qwen2-1.5b --sweep 8

`--sweep N` compiles for every (data, fsdp, tensor) mesh of N devices in turn, a
line per mesh and step (a mesh whose data x fsdp does not divide the events is
skipped, with a note on stderr): the table to choose a mesh by.

The model comes from the config (`model.checkpoint`'s config.json, or the
from-scratch sizes), or from `--preset` (no checkpoint needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="experiment file[:arg], e.g. experiments/qwen2_lora.py")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
  p.add_argument("--mesh", default=None, help="data,fsdp,tensor (default: the config's parallel block)")
  p.add_argument("--sweep", type=int, default=None, metavar="N",
                 help="every (data, fsdp, tensor) mesh of N devices in turn, instead of --mesh")
  p.add_argument("--preset", default=None, help="model preset instead of the config's model, e.g. qwen2-1.5b")
  p.add_argument("--events", type=int, default=None, help="events per train step (default: mf_train.batch_events)")
  p.add_argument("--rollout-events", type=int, default=None, help="events per rollout call (default: rollout.batch_events)")
  p.add_argument("--what", default="train,rollout", help="comma-separated: train, rollout")
  p.add_argument("--method", default="mf", choices=("state", "recent", "popular", "sft", "mf"),
                 help="the rolled-out method (default: %(default)s)")
  p.add_argument("--rollout-steps", default="", metavar="T,T,...",
                 help="rollout lengths, a line each (default: the config's eval steps): with --execute, whether "
                      "time and memory per step stay flat as T grows")
  p.add_argument("--execute", action="store_true",
                 help="also run each compiled step once (allocates for real) and measure the device's peak bytes")
  p.add_argument("--repeats", type=int, default=0,
                 help="with --execute: time this many more runs of each step (prints the best as seconds)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.repeats < 0 or (args.repeats and not args.execute):
    sys.exit("error: --repeats needs --execute and a count >= 0")
  if args.sweep is not None and (args.mesh or args.sweep < 1):
    sys.exit("error: --sweep takes a device count >= 1, and no --mesh")
  mesh_shape = tuple(x.strip() for x in args.mesh.split(",")) if args.mesh else None
  if mesh_shape is not None:
    if len(mesh_shape) != 3 or not all(x.lstrip("-").isdigit() for x in mesh_shape):
      sys.exit(f"error: --mesh {args.mesh!r}: give data,fsdp,tensor, e.g. 1,4,2")
    mesh_shape = tuple(int(x) for x in mesh_shape)
  meshes = sweep_meshes(args.sweep) if args.sweep else [mesh_shape]
  devices = args.sweep or (math.prod(mesh_shape) if mesh_shape and -1 not in mesh_shape else None)
  if devices and "JAX_PLATFORMS" not in os.environ:
    # enough host devices for the mesh when no accelerator provides them (set before JAX starts)
    flag = f"--xla_force_host_platform_device_count={devices}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  import jax

  from mfjax import configs
  from mfjax.errors import one_line_errors
  from mfjax.model import hf
  from mfjax.model.config import PRESETS
  from mfjax.parallel import MeshConfig, ShardingError, distributed, make_mesh
  from mfjax.parallel.mesh import check_events
  from mfjax.aot import Shapes, placeholder_tags, rollout_memory, train_step_memory
  from mfjax.pipeline_config import (check_config, eval_layout, layer_fields, lora_config, mf_config,
                                     scratch_model_config)

  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts
  with one_line_errors():  # a bad config key or value, or a checkpoint folder that cannot be read
    cfg = configs.load_config(args.config, args.set)
    check_config(cfg)
    dtype = cfg.model.dtype
    if args.preset:
      if args.preset not in PRESETS:
        sys.exit(f"error: unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
      model_cfg = PRESETS[args.preset](dtype=dtype, param_dtype=dtype, **layer_fields(cfg))
    elif cfg.model.checkpoint:
      model_cfg = hf.load_config(cfg.model.checkpoint, dtype=dtype, param_dtype=dtype, **layer_fields(cfg))
    else:
      model_cfg = scratch_model_config(cfg, cfg.tokenizer.vocab_size)
  mf_cfg, lora = mf_config(cfg, model_cfg.hidden_size), lora_config(cfg)
  whats = args.what.split(",")
  unknown = [w for w in whats if w not in ("train", "rollout")]
  if unknown:
    sys.exit(f"error: --what: unknown {unknown[0]!r} (train, rollout)")
  d = cfg.data
  steps = {"train": Shapes(args.events or cfg.mf_train.batch_events, d.steps, d.agents_per_step, d.prompt_len,
                           d.action_len, cfg.mf_train.agents),
           "rollout": Shapes(args.rollout_events or cfg.rollout.batch_events, *eval_layout(cfg), d.prompt_len,
                             d.action_len)}
  try:
    lengths = [int(x) for x in args.rollout_steps.split(",") if x.strip()] or [steps["rollout"].steps]
  except ValueError:
    sys.exit(f"error: --rollout-steps {args.rollout_steps!r}: give step counts, e.g. 12,64,256")
  tags = placeholder_tags() if cfg.mf.attributes else None  # the tags' shapes; the ids need no tokenizer
  run = dict(execute=args.execute, repeats=args.repeats, pin_activations=bool(cfg.parallel.pin_activations))
  for shape in meshes:
    try:
      mesh = make_mesh(MeshConfig(*shape) if shape else MeshConfig.from_config(cfg.parallel))
      for what in whats:
        check_events(steps[what].events, mesh, f"--what {what}: events")
    except ShardingError as e:
      if not args.sweep:
        sys.exit(f"error: {e}")
      print(f"[aot_memory] mesh {shape} skipped: {e}", file=sys.stderr, flush=True)
      continue
    common = {"model": args.preset or cfg.model.checkpoint or "from-scratch", "dtype": dtype,
              "mesh": dict(mesh.shape), "device": jax.devices()[0].device_kind, "remat": model_cfg.remat_policy,
              "scan_layers": model_cfg.scan_layers, "unroll_stacked": model_cfg.unroll_stacked,
              "pin_activations": run["pin_activations"]}
    for what in whats:
      shapes = steps[what]
      if what == "train":
        r = train_step_memory(model_cfg, mf_cfg, mesh, shapes, lora=lora, trainable=cfg.mf_train.trainable,
                              lm_grad=cfg.mf.lm_grad, remat=cfg.ib.remat,
                              population_weight=float(cfg.ib.population_weight), tags=tags, **run)
        _emit(r, common, shapes)
      else:
        for T in lengths:
          at = dataclasses.replace(shapes, steps=T)
          r = rollout_memory(model_cfg, mf_cfg, mesh, at, lora=lora, method=args.method, tags=tags,
                             context_k=int(cfg.context.k), **run)
          r["steps"] = T
          if "seconds" in r:
            r["seconds_per_step"] = r["seconds"] / T
          _emit(r, common, at)


def _emit(r: dict, common: dict, shapes) -> None:
  r.update(common, events=shapes.events, peak_gib=round(r["peak_bytes"] / 2 ** 30, 3))
  if r.get("measured_peak_bytes"):
    r["measured_peak_gib"] = round(r["measured_peak_bytes"] / 2 ** 30, 3)
  print(json.dumps(r), flush=True)


def sweep_meshes(n: int) -> list[tuple[int, int, int]]:
  """Every (data, fsdp, tensor) with data x fsdp x tensor = n, data-heaviest first."""
  divisors = [k for k in range(1, n + 1) if n % k == 0]
  return sorted(((a, b, n // (a * b)) for a in divisors for b in divisors if (n // a) % b == 0), reverse=True)


if __name__ == "__main__":
  main()
