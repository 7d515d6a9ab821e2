"""Where the time of a jitted step goes: the benchmark's IB-Tune train step or
`simulate`, traced with `jax.profiler` and summed per XLA op.

  python tools/profile_step.py train                 # 1 event x 2 steps x 16 agents (tools/bench.py's train case)
  python tools/profile_step.py simulate              # mean field, 8 events x 4 steps (bench.py's MFU case)
  python tools/profile_step.py simulate --method state --events 1   # policy only (bench.py's policy_1event)
  python tools/profile_step.py simulate --score-real # also scoring the real actions, as the pipeline's rollouts
  python tools/profile_step.py train --dtype bfloat16 --events 8 --trace-dir runs/trace
  python tools/profile_step.py simulate --method state --events 1 --topic 96   # the topic computed once per step

The model is tools/bench.py's random Qwen2 (width 512, 8 layers, vocab 8192;
no PyTorch needed), B agents of prompts P and actions A. After one compiled
run, `--runs` runs are traced; the trace is read back with
`jax.profiler.ProfileData` and every XLA op's time is summed.

Prints JSON lines: first {"what", "device", "plane", "seconds_per_run",
"op_ms_per_run", ...}, then the `--top` ops, most expensive first:
{"op", "ms_per_run" (self time: less the ops nested in it, such as a `while`'s
body), "share" (of op time), "calls_per_run", "hlo_op" (the trace's name of the
op a GPU kernel ran, where it gives one), "root"} where
`root` is the op's defining HLO instruction (for a fusion: its fused
computation's root), read from the compiled program, so that a name such as
`copy_bitcast_fusion.7` shows what it computes.

Where the times come from: on a GPU or TPU, the device plane's kernels (the
"XLA Ops" line where there is one). On a CPU, the XLA thread pools' op events.
XLA:CPU hands some ops to other libraries (a plain `dot` to Eigen), whose work
runs outside those events: such ops show their dispatch time only, so CPU op
time is a lower bound of what each op costs. Ops of different threads overlap,
so op time can exceed wall time.

On a GPU, kernels that run inside one of XLA's command buffers (CUDA graphs) name
the buffer, not their HLO op, in the trace; a library kernel's name (cuBLAS's
`nvjet_...`) then says nothing of which dot it ran. So this tool turns command
buffers off (`--xla_gpu_enable_command_buffer=` in XLA_FLAGS, unless XLA_FLAGS
already sets that flag): every kernel's row then carries its `hlo_op` and root,
and the step pays the kernel launches that the graphs would have saved. Kernel
names are HLO names with `.` as `_` (and `__N` for a second kernel of one op).

`--trace-dir` keeps the trace (for TensorBoard's profile plugin or Perfetto);
by default it goes to a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

if __name__ == "__main__" and "xla_gpu_enable_command_buffer" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402
from mfjax.errors import checked, positive_int  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from mfjax.parallel import distributed  # noqa: E402

# Host-side events that are not XLA ops (the runtime's own bookkeeping).
RUNTIME = ("ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "$")
# Device-plane lines that summarise rather than time kernels (their times would count twice).
SUMMARY_LINES = {"XLA Modules", "Steps", "XLA TraceMe", "Framework Name Scope", "Framework Ops", "Source code",
                 "Launch Stats", "TensorFlow Name Scope", "TensorFlow Ops"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("what", choices=["train", "simulate"])
  bench.add_model_args(p)
  or_default = checked(int, lambda v: v >= 0, "at least 0 (0: the default)")
  p.add_argument("--events", type=or_default, default=0, help="E (default: 1 for train, 8 for simulate)")
  p.add_argument("--steps", type=or_default, default=0, help="T (default: 2 for train, 4 for simulate)")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="compute dtype (train: float32 weights, as bench.py; simulate: weights in it)")
  p.add_argument("--method", choices=["mf", "state"], default="mf",
                 help="simulate: with the latent mean field (bench.py's mf_step and MFU cases) or policy only "
                      "(its policy_* cases)")
  p.add_argument("--score-real", action="store_true",
                 help="simulate: also score the real actions, as the pipeline's rollouts do (bench.py --score-real)")
  p.add_argument("--runs", type=positive_int, default=2, help="traced runs after the compiled one")
  p.add_argument("--top", type=positive_int, default=30, help="ops printed")
  p.add_argument("--trace-dir", default="", help="keep the trace here (default: a temporary folder, removed)")
  args = p.parse_args(argv)
  bench.check_topic(p, args)
  args.events = args.events or (1 if args.what == "train" else 8)
  args.steps = args.steps or (2 if args.what == "train" else 4)
  return args


def build(args):
  """(model, params {"lm", "mf"}, encoder, batch): bench.py's model with random weights."""
  from mfjax.model import Decoder, hf, init_params
  model = Decoder(hf.config_from_hf(bench.hf_config(args).to_dict(), "bench.hf_config", dtype=args.dtype,
                                    param_dtype="float32"))
  model, lm = bench.layered(model, init_params(model, jax.random.PRNGKey(0)), args)
  encoder, mf = bench.make_encoder(model, args.slots)
  batch = bench.events(argparse.Namespace(agents=args.agents, prompt=args.prompt, action=args.action,
                                          vocab=args.vocab, topic=args.topic), args.events, args.steps)
  return model, {"lm": lm, "mf": mf}, encoder, {k: jnp.asarray(v) for k, v in batch.items()}


def step_fn(args, model, params, encoder, batch):
  """(a function of no arguments that runs the step once and blocks, its compiled HLO
  text): the step is compiled once, here, and run as that compiled executable."""
  rng = jax.random.PRNGKey(0)
  if args.what == "train":
    step, state = bench.train_step_and_state(model, encoder, params, beta=1e-3, topic=args.topic)
    compiled = step.lower(state, batch, rng).compile()
    box = [state]

    def run():
      box[0], m = compiled(box[0], batch, rng)
      jax.block_until_ready(m)
    return run, compiled.as_text()

  from mfjax.rollout import simulate
  p = {"lm": bench.cast(params["lm"], args.dtype)}
  if args.method == "mf":
    p["mf"] = params["mf"]
  kw = dict(method=args.method, encoder=encoder, warmup=0, temperature=1.0, score_real=args.score_real,
            topic_len=args.topic, **bench.SAMPLING)

  def outputs(p, b, rng):
    # simulate's own jitted scan, inlined into one jit so that its compiled HLO can be read (the
    # scores are returned too: otherwise XLA drops their computation)
    out = simulate(model, p, b, rng=rng, **kw)
    return out.tokens, out.real_logprobs

  compiled = jax.jit(outputs).lower(p, batch, rng).compile()
  return lambda: jax.block_until_ready(compiled(p, batch, rng)), compiled.as_text()


def roots(hlo: str) -> dict:
  """op name -> its defining instruction (a fusion's: its fused computation's root)."""
  comp_root, defs, calls, current = {}, {}, {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$", line)
    if head and not line.startswith(" "):
      current = head.group(1)
      continue
    inst = re.match(r"\s*(ROOT )?%([\w.\-]+) = (.*)$", line)
    if not inst:
      continue
    text = inst.group(3).split(", metadata=")[0]
    defs[inst.group(2)] = text
    if inst.group(1) and current:
      comp_root[current] = text
    called = re.search(r"calls=%([\w.\-]+)", text)
    if called:
      calls[inst.group(2)] = called.group(1)
  return {name: comp_root.get(calls[name], text) if name in calls else text for name, text in defs.items()}


def hlo_of(text: dict, name: str, hlo_op: str = "") -> str:
  """The HLO of a trace event named `name` (an op, or a GPU kernel: the op's name with `.`
  as `_`, `__N` for its N-th further kernel) whose `hlo_op` stat (if any) names its op;
  `text` is `_mangled(roots(...))`, which holds both spellings."""
  for candidate in (hlo_op, name, re.sub(r"__\d+$", "", name)):
    if candidate and candidate in text:
      return text[candidate]
  return ""


def _mangled(text: dict) -> dict:
  """`text` with each name also under its GPU kernel spelling (`.` and `-` as `_`)."""
  out = {re.sub(r"\W", "_", name): t for name, t in text.items()}
  out.update(text)
  return out


def _self_times(events, total, calls, hlo_ops=None) -> None:
  """Add each event's self time (its duration less that of the events nested in it on
  the same line: a `while` or fusion call's body ops) to `total`, and count it; where
  `hlo_ops` is given, record the first `hlo_op` stat seen of each name (not a command
  buffer's) in it."""
  stack = []  # [end_ns, name, self_ns] of the open events
  def close(upto):
    while stack and stack[-1][0] <= upto:
      end, name, own = stack.pop()
      total[name] += own
  for ev in sorted(events, key=lambda e: (e.start_ns, -e.duration_ns)):
    close(ev.start_ns)
    if stack:
      stack[-1][2] -= min(ev.duration_ns, stack[-1][0] - ev.start_ns)
    stack.append([ev.start_ns + ev.duration_ns, ev.name, ev.duration_ns])
    calls[ev.name] += 1
    if hlo_ops is not None and ev.name not in hlo_ops:
      op = dict(getattr(ev, "stats", ())).get("hlo_op")
      if op and not str(op).startswith("command_buffer"):
        hlo_ops[ev.name] = str(op)
  close(float("inf"))


def op_times(path: str) -> tuple[str, dict, dict, dict]:
  """(plane read, op -> total self ns, op -> calls, op -> its `hlo_op` stat where the trace
  gives one) from a trace file (see the module docstring)."""
  data = jax.profiler.ProfileData.from_file(path)
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith("/device:") and any(True for _ in p.lines)]
  total, calls, hlo_ops = collections.Counter(), collections.Counter(), {}
  if device:
    for plane in device:
      lines = list(plane.lines)
      ops = [ln for ln in lines if ln.name == "XLA Ops"] or [ln for ln in lines if ln.name not in SUMMARY_LINES]
      for line in ops:
        _self_times(list(line.events), total, calls, hlo_ops)
    return ", ".join(p.name for p in device), total, calls, hlo_ops
  for plane in planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      if line.name.startswith("tf_XLA"):
        _self_times([ev for ev in line.events if not ev.name.startswith(RUNTIME)], total, calls, hlo_ops)
  return "/host:CPU (XLA thread pools)", total, calls, hlo_ops


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts
  model, params, encoder, batch = build(args)
  t0 = time.perf_counter()
  run, hlo = step_fn(args, model, params, encoder, batch)
  run()  # the first run after the compile, untraced
  compile_s = time.perf_counter() - t0
  keep = bool(args.trace_dir)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="mfjax_trace_")
  try:
    jax.profiler.start_trace(trace_dir)
    t0 = time.perf_counter()
    for _ in range(args.runs):
      run()
    seconds = (time.perf_counter() - t0) / args.runs
    jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
      raise SystemExit(f"profile_step: jax.profiler wrote no *.xplane.pb under {trace_dir}")
    plane, total, calls, hlo_ops = op_times(files[-1])
  finally:
    if not keep:
      shutil.rmtree(trace_dir, ignore_errors=True)
  op_ns = sum(total.values())
  variant = ({"method": args.method, "score_real": args.score_real} if args.what == "simulate"
             else {"unroll_layers": args.unroll_layers, "unroll_stacked": args.unroll_stacked,
                   "remat_policy": args.remat_policy})
  rows = [{"what": args.what, **variant, "device": str(jax.devices()[0].device_kind), "dtype": args.dtype,
           "events": args.events, "steps": args.steps, "agents": args.agents, "plane": plane, "runs": args.runs,
           "compile_and_first_run_s": compile_s, "seconds_per_run": seconds, "op_ms_per_run": op_ns / 1e6 / args.runs,
           "ops": len(total), "trace_dir": trace_dir if keep else None}]
  text = _mangled(roots(hlo)) if hlo else {}
  for name, ns in total.most_common(args.top):
    rows.append({"op": name, "ms_per_run": ns / 1e6 / args.runs, "share": ns / op_ns if op_ns else 0.0,
                 "calls_per_run": calls[name] / args.runs, "hlo_op": hlo_ops.get(name, ""),
                 "root": hlo_of(text, name, hlo_ops.get(name, ""))[:240]})
  for row in rows:
    print(json.dumps(row), flush=True)
  return rows


if __name__ == "__main__":
  main()
