"""Experiment configs: `path/to/experiment.py[:arg]` modules exposing
`get_config(arg) -> ml_collections.ConfigDict`, plus `--set key=value` overrides.

The ConfigDict is locked before overrides are applied, so a misspelt key is an
error naming it (with the closest known keys), never a silently new field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import os

import ml_collections

from mfjax.errors import UserError


class ConfigError(UserError):
  """A config file, key or value that cannot be used; the message names it."""


# The from-scratch model's sizes in the pipeline's and the LM demo's configs (each at least 1)
MODEL_SIZES = ("model.hidden_size", "model.num_layers", "model.num_heads", "model.num_kv_heads",
               "model.intermediate_size")


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every key of `cfg`, nested ones dotted ('model.remat')."""
  keys = []
  for k, v in cfg.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys += flat_keys(v, prefix + k + ".")
  return keys


def load_module(path: str):
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"mfjax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{path}:{e.lineno}: {e.msg}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config(arg) function")
  return module


def parse_value(text: str):
  """Python literal if it parses as one (1, 0.1, True, None, [1, 2]), else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(cfg: ml_collections.ConfigDict, assignment: str) -> None:
  key, sep, raw = assignment.partition("=")
  if not sep:
    raise ConfigError(f"override {assignment!r} is not of the form key=value")
  known = flat_keys(cfg)
  if key not in known:
    close = difflib.get_close_matches(key, known, n=3)
    raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {close}?" if close else ""))
  *parents, leaf = key.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  value = parse_value(raw)
  old = node[leaf]
  if isinstance(old, bool) and raw.strip().lower() in ("true", "false"):  # a shell-style true/false too
    value = raw.strip().lower() == "true"
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, str) and value is not None and not isinstance(value, str):
    value = raw  # a text field takes the text as written: ib.sweep=0,0.01 (not the tuple), data.path=2024
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f"config key {key!r}: cannot set {value!r} ({e})") from None


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Config from `file.py[:arg]`, locked, with `key=value` overrides applied."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  takes_arg = bool(inspect.signature(module.get_config).parameters)  # ml_collections' plain get_config() too
  if arg and not takes_arg:
    raise ConfigError(f"{spec}: {path}'s get_config() takes no argument")
  try:
    cfg = module.get_config(arg) if takes_arg else module.get_config()
  except ValueError as e:  # an experiment file's way to refuse an argument it does not know
    raise ConfigError(f"{spec}: {e}") from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
  cfg.lock()
  for o in overrides:
    apply_override(cfg, o)
  return cfg


def get(cfg: ml_collections.ConfigDict, key: str):
  """The value of a dotted key ('model.remat')."""
  for part in key.split("."):
    cfg = cfg[part]
  return cfg


def check(key: str, ok_or_fn, message: str = "") -> None:
  """ConfigError naming `key` when `ok_or_fn` is false, or, for a callable (a
  library constructor or parser that validates), when it raises ValueError or
  TypeError (its message, prefixed by the key unless it already starts with it)."""
  if callable(ok_or_fn):
    try:
      ok_or_fn()
    except (ValueError, TypeError) as e:
      text = str(e)
      raise ConfigError(text if text.startswith(key) else f"{key}: {text}") from None
  elif not ok_or_fn:
    raise ConfigError(f"{key}: {message}")


def check_at_least(cfg: ml_collections.ConfigDict, low, *keys: str) -> None:
  """ConfigError naming the first of `keys` whose value is below `low`."""
  for key in keys:
    value = get(cfg, key)
    check(key, value >= low, f"must be >= {low}, got {value!r}")
