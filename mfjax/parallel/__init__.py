"""Parallelism: logical axis names, the (data, fsdp, tensor) mesh and its
sharding rules (`mesh`), and multi-host start-up (`distributed`)."""

from mfjax.parallel import axes
from mfjax.parallel.mesh import (AXES, RULES, MeshConfig, ShardingError, batch_sharding, global_batch, init_sharded,
                                 logical_specs, make_mesh, opt_state_shardings, replicated, shardings_from_specs)

__all__ = ["axes", "AXES", "RULES", "MeshConfig", "ShardingError", "batch_sharding", "global_batch", "init_sharded",
           "logical_specs", "make_mesh", "opt_state_shardings", "replicated", "shardings_from_specs"]
