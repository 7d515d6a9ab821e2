"""Ahead-of-time compile checks: per-device memory of the IB-Tune train step
and of a rollout on a given mesh, from abstract shapes only.

Nothing is allocated: parameters, optimizer state and batches are
`jax.ShapeDtypeStruct`s with their shardings, and
`jax.jit(...).lower(...).compile().memory_analysis()` reports what XLA
assigned to each device. Run it before booking hardware (`tools/aot_memory.py`):
on a CPU host the mesh is made of forced host devices, so the numbers are
XLA's CPU buffer assignment (arguments and outputs are exact; temporaries are
an estimate of the accelerator's).

With `execute=True` (on the hardware itself) the compiled step also runs once
on real arrays of those shapes, and the device allocator's peak is reported
beside XLA's figure (`measured_peak_bytes`, where the backend keeps memory
statistics: GPUs and TPUs do, the CPU does not); `repeats` > 0 times that many
more runs (`seconds`: the best).

Each report also sums the bytes that the compiled program's collectives
(all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute)
produce on a device, two ways:
  collective_bytes  each op counted once, a static figure of the program;
  traffic_bytes     each op times the iterations of the loops around it (the
                    scan over steps, the layer scan: XLA's known trip counts;
                    the decode loop, which may stop early at eos: its bound,
                    the action length, `loop_bound`): what one run produces,
                    at most; the volume to compare meshes by. (Result bytes:
                    a ring all-reduce sends about twice its result.)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import time
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mfjax.categories import CLASSES
from mfjax.ibtune.objective import ib_tune_loss
from mfjax.ibtune.train import TrainState, jit_train_step, make_optimizer, state_shardings, trainable_labels
from mfjax.meanfield.encoder import MeanFieldConfig, MeanFieldEncoder
from mfjax.model.config import LoraConfig, ModelConfig
from mfjax.model.transformer import Decoder
from mfjax.parallel.mesh import RULES, batch_sharding, check_events, replicated
from mfjax.parallel.state import abstract_policy, policy_shardings
from mfjax.params_keys import PARAMS
from mfjax.policy import AttributeTags
from mfjax.rollout.context import ContextSpec
from mfjax.rollout.simulate import BATCH_KEYS, _sharded_simulate, method_spec


TAG_TOKENS = 3  # tokens of an attribute tag from a from-scratch tokenizer (at most; `placeholder_tags`)


@dataclasses.dataclass(frozen=True)
class Shapes:
  """Batch shapes of one step: E events of T steps x B agents, P prompt and A action tokens."""

  events: int = 8
  steps: int = 12
  agents: int = 16
  prompt: int = 128
  action: int = 32
  scored_agents: int = 0  # agents per step in the NLL (0 = all)


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_batch(shapes: Shapes, mesh: Mesh, category: bool = False) -> dict:
  """The batch's abstract arrays; `category`: with the actions' joint categories (a population head)."""
  s = batch_sharding(mesh)
  E, T, B, P, A = shapes.events, shapes.steps, shapes.agents, shapes.prompt, shapes.action
  dims = {"prompt_ids": (P, jnp.int32), "prompt_mask": (P, jnp.int32), "action_ids": (A, jnp.int32),
          "action_mask": (A, jnp.int32), "agent_mask": (None, jnp.bool_), "parent": (None, jnp.int32),
          "category": (None, jnp.int32)}
  return {k: jax.ShapeDtypeStruct((E, T, B) + ((d,) if d else ()), dt, sharding=s) for k, (d, dt) in dims.items()
          if k in BATCH_KEYS or (category and k == "category")}


def placeholder_tags(length: int = TAG_TOKENS) -> AttributeTags:
  """Tags of `length` tokens for every class (token id 0): the shapes of an attribute-conditioned
  policy's inputs without a tokenizer (a from-scratch tokenizer writes each tag in at most 3 tokens)."""
  return AttributeTags(ids=((0,) * length,) * len(CLASSES), mask=((1,) * length,) * len(CLASSES))


def placeholder_context(k: int, action_len: int) -> ContextSpec:
  """The quoted history's layout (`recent`, `popular`) with `k` quotes of `action_len` tokens and a
  header and separator of a few tokens (ids 0): its shapes without a tokenizer."""
  return ContextSpec(header=(0,) * 4, sep=(0,), eos_id=1, k=int(k), action_len=int(action_len))


# an op's result type and kind; an asynchronous pair counts at its -done (whose
# result is the collective's alone: an all-gather-start's holds its operand too)
_COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                         r"(?:-done)?\(")


def collective_bytes(hlo_text: str) -> dict:
  """{kind: bytes} of the results of the collective ops in optimized HLO text
  (one device's program), each op counted once (see the module docstring)."""
  out = collections.Counter()
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1)):
      bits = int(re.sub(r"^[a-z]+", "", dtype) or 8)  # f32 -> 32, bf16 -> 16, pred -> 8
      out[m.group(2)] += math.ceil(bits * math.prod(int(d) for d in dims.split(",") if d) / 8)
  return dict(out)


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)"
                     r"|\b(?:branch|called)_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def collective_traffic(hlo_text: str, unknown_trips: int) -> tuple[dict, int]:
  """({kind: bytes}, loops of unknown trip count) of the collective ops in optimized
  HLO text: each op's result bytes times the iterations of the loops around it, a
  while loop's `known_trip_count` where XLA knows it (scans), else `unknown_trips`
  (a bound the caller gives: the decode loop stops early once every row has emitted
  eos). Both branches of a conditional count. So this is (a bound on) what one run
  of the program makes its collectives produce on a device."""
  bodies: dict[str, list[str]] = {}
  entry, name = None, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      name = m.group(1)
      bodies[name] = []
      entry = name if line.startswith("ENTRY") else entry
    elif name is not None and line.startswith("}"):
      name = None
    elif name is not None:
      bodies[name].append(line)
  if entry is None:
    raise ValueError("HLO text without an ENTRY computation")
  weight = collections.Counter({entry: 1})
  # computations form a DAG: visit each once all its callers have been (Kahn's order)
  callers = collections.Counter()
  calls, unknown = {}, 0
  for comp, lines in bodies.items():
    out = []
    for line in lines:
      trips = _TRIP_COUNT.search(line)
      for kind, callee, branches in _CALLED.findall(line):
        targets = [b.strip().lstrip("%") for b in branches.split(",")] if branches else [callee]
        n = 1
        if kind in ("body", "condition"):
          n = int(trips.group(1)) if trips else unknown_trips
          unknown += not trips and kind == "body"
        out += [(t, n) for t in targets if t in bodies]
    calls[comp] = out
    for t, _ in out:
      callers[t] += 1
  ready = [c for c in bodies if not callers[c]]
  while ready:
    comp = ready.pop()
    for t, n in calls[comp]:
      weight[t] += weight[comp] * n
      callers[t] -= 1
      if not callers[t]:
        ready.append(t)
  out = collections.Counter()
  for comp, lines in bodies.items():
    if weight[comp]:
      for kind, n in collective_bytes("\n".join(lines)).items():
        out[kind] += n * weight[comp]
  return dict(out), unknown


def _stats(compiled, loop_bound: int = 1) -> dict:
  """Per-device memory and collectives of `compiled`; a loop of unknown trip
  count (the decode loop) counts `loop_bound` iterations in the traffic."""
  m = compiled.memory_analysis()
  get = lambda name: int(getattr(m, name, 0) or 0)
  out = {"argument_bytes": get("argument_size_in_bytes"), "output_bytes": get("output_size_in_bytes"),
         "temp_bytes": get("temp_size_in_bytes"), "alias_bytes": get("alias_size_in_bytes"),
         "code_bytes": get("generated_code_size_in_bytes")}
  out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  hlo = compiled.as_text()
  by_kind = collective_bytes(hlo)
  out["collective_bytes"] = sum(by_kind.values())
  out["collectives"] = by_kind
  traffic, at_bound = collective_traffic(hlo, loop_bound)
  out.update(traffic_bytes=sum(traffic.values()), traffic=traffic, loops_at_bound=at_bound, loop_bound=loop_bound)
  return out


def _materialize(tree):
  """Real arrays laid out as `tree`'s ShapeDtypeStructs: floats 0 (weights, moments),
  integers and booleans 1 (token ids, masks, parents, step counters)."""
  def fill(x):
    return jnp.zeros(x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.ones(x.shape, x.dtype)
  return jax.jit(lambda: jax.tree.map(fill, tree), out_shardings=jax.tree.map(lambda x: x.sharding, tree))()


def _run_measured(compiled, *abstract_args, repeats: int = 0) -> dict:
  """Run `compiled` once on materialized arguments; the allocator's peak bytes
  (largest device) after it, and what was resident before it ran. `repeats`:
  then time that many more runs on fresh arguments (donated ones are consumed)."""
  args = _materialize(abstract_args)
  devices = {d for x in jax.tree.leaves(abstract_args) for d in x.sharding.device_set}
  stats = lambda: [d.memory_stats() or {} for d in devices]
  before = max(s.get("bytes_in_use", 0) for s in stats())
  jax.block_until_ready(compiled(*args))
  peak = max(s.get("peak_bytes_in_use", 0) for s in stats())
  if not peak:
    out = {"measured_peak_bytes": None, "measured_note": f"{jax.default_backend()} keeps no memory statistics"}
  else:
    out = {"measured_peak_bytes": int(peak), "resident_before_bytes": int(before)}
  times = []
  for _ in range(repeats):
    args = jax.block_until_ready(_materialize(abstract_args))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  if times:
    out.update(seconds=min(times), repeats=repeats)
  return out


def shard_bytes(abstract_tree) -> int:
  """Bytes of the largest device's share of `abstract_tree` (ShapeDtypeStructs with shardings)."""
  per_device: dict = {}
  for x in jax.tree.leaves(abstract_tree):
    shard = x.sharding.shard_shape(x.shape)
    n = jnp.dtype(x.dtype).itemsize * math.prod(shard)
    for d in x.sharding.device_set:
      per_device[d] = per_device.get(d, 0) + n
  return max(per_device.values()) if per_device else 0


def policy(model_cfg: ModelConfig, mf_cfg: MeanFieldConfig, lora: Optional[LoraConfig]):
  """(model, encoder, abstract params {"lm", "mf"}) without allocating anything."""
  model = Decoder(model_cfg.replace(lora=lora))
  encoder = MeanFieldEncoder(mf_cfg)
  return model, encoder, abstract_policy(model, encoder)


def train_step_memory(model_cfg: ModelConfig, mf_cfg: MeanFieldConfig, mesh: Mesh, shapes: Shapes, *,
                      lora: Optional[LoraConfig] = None, trainable: str = "lora+mf", lm_grad: bool = False,
                      remat: bool = False, execute: bool = False, repeats: int = 0,
                      pin_activations: bool = True, population_weight: float = 0.0,
                      tags: Optional[AttributeTags] = None) -> dict:
  """Compile the IB-Tune train step for `mesh` against abstract shapes; per-device
  bytes (`execute`: also run it once and measure, `repeats` more times timed,
  see the module docstring). With a population head (`mf_cfg.classes`) the batch has the
  actions' categories; `tags`: an attribute-conditioned policy (`placeholder_tags`)."""
  check_events(shapes.events, mesh, "events")
  model, encoder, params = policy(model_cfg, mf_cfg, lora)
  p_sh = policy_shardings(model, encoder, params, mesh)
  tx = make_optimizer(params, trainable=trainable, lr=1e-4, steps=1000, warmup=10)
  state_sh = state_shardings(params, tx, mesh=mesh, param_shardings=p_sh)
  state = TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=state_sh.step), _abstract(params, p_sh),
                     _abstract(jax.eval_shape(tx.init, params), state_sh.opt_state))
  loss_fn = lambda params, batch, rng, step: ib_tune_loss(
      model=model, encoder=encoder, params=params, batch=batch, rng=rng, beta=1e-3, remat=remat,
      agents=shapes.scored_agents, lm_grad=lm_grad, population_weight=population_weight, tags=tags)
  step = jit_train_step(loss_fn=loss_fn, tx=tx, mesh=mesh, state_shardings=state_sh,
                        labels=trainable_labels(params, trainable), pin_activations=pin_activations)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh))
  batch = abstract_batch(shapes, mesh, category=bool(mf_cfg.classes))
  compiled = step.lower(state, batch, rng).compile()
  out = {"what": "train_step", **_stats(compiled), "state_bytes": shard_bytes(state),
         "param_bytes": shard_bytes(state.params)}
  return {**out, **_run_measured(compiled, state, batch, rng, repeats=repeats)} if execute else out


def rollout_memory(model_cfg: ModelConfig, mf_cfg: MeanFieldConfig, mesh: Mesh, shapes: Shapes, *,
                   lora: Optional[LoraConfig] = None, method: str = "mf", execute: bool = False,
                   repeats: int = 0, pin_activations: bool = True,
                   tags: Optional[AttributeTags] = None, context_k: int = 5) -> dict:
  """Compile `simulate` (one method) for `mesh` against abstract shapes; per-device
  bytes (`execute`: also run it once and measure, `repeats` more times timed).
  `tags`: `mf` is attribute-conditioned (`placeholder_tags`); `recent` and `popular` quote
  `context_k` actions (`placeholder_context`)."""
  check_events(shapes.events, mesh, "events")
  model, encoder, params = policy(model_cfg, mf_cfg, lora)
  spec, _ = method_spec(method, max_new_tokens=shapes.action, tags=tags,
                        context=placeholder_context(context_k, shapes.action))
  if not spec.use_mf:
    params = {PARAMS.lm: params[PARAMS.lm]}
  fn, p_sh = _sharded_simulate(model, encoder if spec.use_mf else None, spec, mesh, RULES,
                               pin_activations=pin_activations)
  rep = replicated(mesh)
  scalars = (jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep), jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
             jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), jax.ShapeDtypeStruct((), jnp.float32, sharding=rep))
  reads_categories = spec.tags is not None or (spec.use_mf and mf_cfg.category_features)
  args = (_abstract(params, p_sh), abstract_batch(shapes, mesh, category=reads_categories), *scalars)
  compiled = fn.lower(*args).compile()
  # the decode loop stops once every row has emitted eos: at most `action` iterations
  out = {"what": f"simulate[{method}]", **_stats(compiled, shapes.action), "param_bytes": shard_bytes(args[0])}
  return {**out, **_run_measured(compiled, *args, repeats=repeats)} if execute else out
