"""Placing the policy's parameters, the train state and outputs on a mesh.

The parameter tree is {"lm": decoder params, "mf": encoder params (if any),
"mf_lm" and "prior": the text mean field's writer and its prior, LMs like "lm"
(if any)}; its logical names come from the modules (`param_specs`, `encoder_specs`), the
mesh axes from `mfjax.parallel.mesh.RULES`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mfjax.meanfield.encoder import MeanFieldEncoder, encoder_specs, init_encoder
from mfjax.model.transformer import Decoder, init_params, param_specs
from mfjax.parallel.mesh import RULES, shardings_from_specs
from mfjax.params_keys import PARAMS


def policy_specs(model: Decoder, encoder: Optional[MeanFieldEncoder] = None, keys=(PARAMS.lm, PARAMS.mf)) -> dict:
  """Logical PartitionSpecs of a {"lm", "mf"} parameter tree (only `keys` present)."""
  out = {PARAMS.lm: param_specs(model)}
  out[PARAMS.mf_lm] = out[PARAMS.prior] = out[PARAMS.lm]
  if PARAMS.mf in keys:
    if encoder is None:
      raise ValueError("params have an 'mf' subtree but no encoder was given")
    out[PARAMS.mf] = encoder_specs(encoder)
  return {k: out[k] for k in keys}


def abstract_policy(model: Decoder, encoder: Optional[MeanFieldEncoder] = None, keys=(PARAMS.lm, PARAMS.mf)) -> dict:
  """ShapeDtypeStructs of a {"lm", "mf"} parameter tree (only `keys`), by `jax.eval_shape`."""
  out = {PARAMS.lm: jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))}
  out[PARAMS.mf_lm] = out[PARAMS.prior] = out[PARAMS.lm]
  if PARAMS.mf in keys:
    if encoder is None:
      raise ValueError("params have an 'mf' subtree but no encoder was given")
    out[PARAMS.mf] = jax.eval_shape(lambda: init_encoder(encoder, jax.random.PRNGKey(0), model.cfg.hidden_size))
  return {k: out[k] for k in keys}


def policy_shardings(model: Decoder, encoder: Optional[MeanFieldEncoder], params, mesh: Mesh, rules=RULES, *,
                     notes: Optional[list] = None) -> dict:
  """NamedShardings for `params` ({"lm", "mf"}; arrays or ShapeDtypeStructs).
  A parameter the model does not declare (e.g. from another model) is an error."""
  specs = policy_specs(model, encoder, tuple(params))
  want = jax.tree.structure(specs, is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec))
  have = jax.tree.structure(params)
  if want != have:
    got = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    exp = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec))[0]}
    raise ValueError(f"parameters do not match the model: missing {sorted(exp - got)[:5]}, "
                     f"unexpected {sorted(got - exp)[:5]}")
  return shardings_from_specs(specs, params, mesh, rules, notes=notes)


def place(tree, shardings):
  """`tree` laid out as `shardings`. Host (numpy) leaves are cut per device
  (`make_array_from_callback`: each device receives only its slice, also across
  processes); device arrays are resharded (a no-op where they already match)."""
  def put(x, s):
    if isinstance(x, jax.Array):
      return jax.device_put(x, s)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def to_host(tree) -> Any:
  """Numpy copies of (possibly multi-process) global arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
