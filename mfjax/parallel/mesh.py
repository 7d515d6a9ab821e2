"""The device mesh and the rules that place every parameter and batch on it.

Mesh axes (always these three, in this order):

  data    replicas of the model; events are split over it
  fsdp    parameters (and optimizer state) sharded along their `embed` dim;
          events are split over it too (fully-sharded data parallelism)
  tensor  attention heads, MLP width and vocabulary split (Megatron-style)

`MeshConfig(data=-1, fsdp=1, tensor=1)` fills the -1 axis with the devices
left over; a mesh without -1 may use fewer devices than there are (the first
ones; one process only). `RULES` maps each logical axis name of
`mfjax.parallel.axes` to a mesh axis, a tuple of mesh axes (split over their
product), or None (replicated). Resolving a parameter's names against the
rules is strict: a parameter without names, or with a name no rule covers,
is an error naming the parameter path (nothing is silently replicated). A
dimension the mesh axis does not divide, or a mesh axis already used by an
earlier dimension of the same array, stays unsplit (listed in the `notes` of
`logical_to_spec` / `shardings_from_specs`).

Parameters are created already sharded (`init_sharded`): the init runs under
`jax.jit` with out_shardings computed from `jax.eval_shape`, so no device (and
no host) ever holds a whole copy.

Activations are pinned by the same rules: a jitted step traced under
`activation_sharding(mesh)` makes the model's `constrain(x, names)` calls
`with_sharding_constraint`s (rows over data x fsdp, heads / MLP width /
vocabulary over tensor), so that the partitioner does not choose for itself
between the parameters' layout and the batch's. Outside it they do nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mfjax.errors import UserError
from mfjax.parallel import axes

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the leading (events) axis of every batch array

RULES: tuple[tuple[str, Optional[str | tuple[str, ...]]], ...] = (
    (axes.EMBED, "fsdp"),
    (axes.HEADS, "tensor"),
    (axes.KV_HEADS, "tensor"),
    (axes.KV, None),
    (axes.MLP, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.LAYERS, None),
    (axes.NORM, None),
    (axes.LORA_RANK, None),
    (axes.MF, None),
    (axes.ACT_BATCH, BATCH_AXES),
    (axes.ACT_LENGTH, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, "tensor"),
    (axes.ACT_KV_HEADS, "tensor"),
    (axes.ACT_KV, None),
    (axes.ACT_MLP, "tensor"),
    (axes.ACT_VOCAB, "tensor"),
)


class ShardingError(UserError):
  """A parameter the rules cannot place, or a mesh that does not fit the devices."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; one axis may be -1 (all the devices the others leave)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  @classmethod
  def from_config(cls, c) -> "MeshConfig":
    """From the `parallel` block of a pipeline config (data, fsdp, tensor)."""
    return cls(int(c.data), int(c.fsdp), int(c.tensor))

  def resolve(self, n_devices: int) -> tuple[int, int, int]:
    shape = [self.data, self.fsdp, self.tensor]
    if shape.count(-1) > 1:
      raise ShardingError(f"mesh {tuple(shape)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
      raise ShardingError(f"mesh {tuple(shape)}: sizes must be positive (or -1 to fill)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
      if n_devices % known:
        raise ShardingError(f"mesh {tuple(shape)}: {n_devices} devices do not divide by {known}")
      shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) > n_devices:
      raise ShardingError(f"mesh {tuple(shape)} needs {math.prod(shape)} devices, there are {n_devices} "
                          "(use -1 on one axis to fill)")
    return tuple(shape)


def make_mesh(config: MeshConfig | Sequence[int] = MeshConfig(), devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all
  processes), laid out by `jax.make_mesh` so that tensor is innermost (fastest links)."""
  devices = list(jax.devices() if devices is None else devices)
  if not isinstance(config, MeshConfig):
    config = MeshConfig(*config)
  shape = config.resolve(len(devices))
  if math.prod(shape) < len(devices):  # a smaller mesh uses the first devices (one process only)
    if jax.process_count() > 1:
      raise ShardingError(f"mesh {shape} covers {math.prod(shape)} of {len(devices)} devices; a multi-process "
                          "mesh must cover them all (use -1 on one axis)")
    devices = devices[:math.prod(shape)]
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def _rule_table(rules) -> dict[str, tuple[str, ...]]:
  """name -> the mesh axes it splits over (a possibly empty tuple)."""
  table = {k: (() if v is None else (v,) if isinstance(v, str) else tuple(v)) for k, v in dict(rules).items()}
  bad = {k: v for k, v in table.items() if any(a not in AXES for a in v) or len(set(v)) < len(v)}
  if bad:
    raise ShardingError(f"rules map to unknown or repeated mesh axes {bad}; mesh axes are {AXES}")
  return table


def logical_to_spec(names: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh, rules=RULES, *,
                    where: str = "array") -> tuple[P, list[str]]:
  """PartitionSpec of an array with logical `names` (one per dim) on `mesh`,
  and notes on dimensions left unsplit (not divisible, or axis already used)."""
  table = _rule_table(rules)
  if len(names) != len(shape):
    raise ShardingError(f"{where}: {len(names)} logical names {tuple(names)} for {len(shape)} dims {tuple(shape)}")
  out, used, notes = [], set(), []
  for dim, (name, size) in enumerate(zip(names, shape)):
    if name not in table:
      raise ShardingError(f"{where}: logical axis {name!r} (dim {dim} of {tuple(names)}) matches no sharding rule; "
                          f"rules cover {sorted(table)}")
    split = [a for a in table[name] if mesh.shape[a] > 1]
    taken = [a for a in split if a in used]
    if taken:
      notes.append(f"{where}: dim {dim} ({name}) unsplit, mesh axis {taken[0]!r} already used")
      split = []
    n = math.prod(mesh.shape[a] for a in split)
    if split and size % n:
      notes.append(f"{where}: dim {dim} ({name}, size {size}) unsplit, not divisible by "
                   f"{'x'.join(split)}={n}")
      split = []
    used.update(split)
    out.append(None if not split else split[0] if len(split) == 1 else tuple(split))
  while out and out[-1] is None:
    out.pop()
  return P(*out), notes


def _is_spec(x) -> bool:
  return x is None or isinstance(x, P)


def shardings_from_specs(logical_specs, abstract, mesh: Mesh, rules=RULES, *, notes: Optional[list] = None):
  """NamedShardings for the arrays of `abstract` (anything with .shape) from
  the matching tree of logical PartitionSpecs (flax `get_partition_spec`)."""
  spec_leaves, spec_tree = jax.tree_util.tree_flatten_with_path(logical_specs, is_leaf=_is_spec)
  arrays = spec_tree.flatten_up_to(abstract)
  out = []
  for (path, logical), arr in zip(spec_leaves, arrays):
    where = "param " + jax.tree_util.keystr(path)
    if logical is None:
      raise ShardingError(f"{where} {tuple(arr.shape)} has no logical axis names (create it with "
                          "nn.with_logical_partitioning) so no sharding rule can place it")
    spec, why = logical_to_spec(tuple(logical), arr.shape, mesh, rules, where=where)
    if notes is not None:
      notes.extend(why)
    out.append(NamedSharding(mesh, spec))
  return spec_tree.unflatten(out)


def logical_specs(init_fn: Callable[[], Any]):
  """(abstract unboxed tree, logical PartitionSpecs) of what `init_fn()` returns
  (a tree with flax partitioning boxes), by `jax.eval_shape`: nothing is allocated."""
  boxed = jax.eval_shape(init_fn)
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def init_sharded(init_fn: Callable[[], Any], mesh: Mesh, rules=RULES):
  """Run `init_fn()` (returning boxed params) under jit with out_shardings from
  the rules: every parameter is created already sharded. Returns (params, shardings)."""
  abstract, specs = logical_specs(init_fn)
  shardings = shardings_from_specs(specs, abstract, mesh, rules)
  params = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
  return params, shardings


_ACTIVATION_MESH = contextvars.ContextVar("mfjax_activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Optional[Mesh], rules=RULES):
  """While tracing within, `constrain` pins activations to `mesh` by `rules`
  (None: no constraints). Trace-time only: enter it inside the jitted function.

  A function jitted on its own and called inside caches its trace by its
  arguments alone, so its first trace, pinned or not, would serve every later
  call: it must run its plain implementation while `pinning()` (as
  `mfjax.sampling` does)."""
  token = _ACTIVATION_MESH.set(None if mesh is None else (mesh, rules))
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def pinning() -> bool:
  """Whether `constrain` pins here (inside an `activation_sharding` with a mesh)."""
  return _ACTIVATION_MESH.get() is not None


def with_activation_sharding(fn: Callable, mesh: Optional[Mesh], rules=RULES) -> Callable:
  """`fn` run under `activation_sharding(mesh, rules)` (wrap it before `jax.jit`)."""
  def wrapped(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)
  # named as `fn` (a partial: its function), so that jit names the program (profiles, dumps) as before
  wrapped.__name__ = wrapped.__qualname__ = getattr(getattr(fn, "func", fn), "__name__", "wrapped")
  wrapped.__doc__ = fn.__doc__
  return wrapped


def constrain(x: jax.Array, names: Sequence[str]) -> jax.Array:
  """`x` with a sharding constraint from its logical `names` (one per dim) on the
  mesh of the enclosing `activation_sharding`; `x` itself outside one. A dim that
  its mesh axes do not divide stays unsplit (as for parameters)."""
  active = _ACTIVATION_MESH.get()
  if active is None or active[0].size == 1:  # one device: nothing to place
    return x
  mesh, rules = active
  spec, _ = logical_to_spec(tuple(names), x.shape, mesh, rules, where="activation")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays [E, ...]: events split over data x fsdp, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_events(events: int, mesh: Mesh, what: str = "batch") -> None:
  """`events` must split evenly over the mesh's data x fsdp shards and over the processes."""
  n = batch_shards(mesh)
  if events % n or events % jax.process_count():
    raise ShardingError(f"{what}={events} events do not split over the mesh's data x fsdp = {n} shards "
                        f"({jax.process_count()} processes); use a multiple of {n} or set parallel.data / "
                        "parallel.fsdp")


def opt_state_shardings(tx: optax.GradientTransformation, params_abstract, param_shardings, mesh: Mesh):
  """Shardings of `tx.init(params)`: a leaf whose path ends with a parameter's
  path and has its shape (Adam's moments) follows that parameter; the rest
  (step counts) is replicated."""
  state = jax.eval_shape(tx.init, params_abstract)
  by_path = {}
  for (path, s), a in zip(jax.tree_util.tree_flatten_with_path(
      param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0], jax.tree.leaves(params_abstract)):
    by_path[jax.tree_util.keystr(path)] = (s, tuple(a.shape))

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    for p, (s, shape) in by_path.items():
      if key.endswith(p) and tuple(leaf.shape) == shape:
        return s
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, state)


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Global arrays [E, ...] sharded over events from each process's own rows
  (`jax.make_array_from_process_local_data`; with one process, local = global)."""
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    global_rows = v.shape[0] * jax.process_count()
    check_events(global_rows, mesh, f"batch[{k!r}]")
    out[k] = jax.make_array_from_process_local_data(sharding, v, (global_rows, *v.shape[1:]))
  return out


def process_rows(events: int) -> slice:
  """The rows [E] of a global batch this process supplies."""
  n = jax.process_count()
  if events % n:
    raise ShardingError(f"{events} events do not split over {n} processes")
  per = events // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)

