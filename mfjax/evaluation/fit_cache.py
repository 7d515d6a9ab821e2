"""Fitted labelers kept on disk for later runs.

The learned labeler (`TrainedLabeler.from_hand_labels`) and its cross-validated confusion
(`quality.correction`) are fitted with scikit-learn from the hand labels and the CED train
comments: about a minute on 2 CPU cores, the same result every time from the same files.
`cached(kind, key, make)` keeps what `make()` returns, pickled, under a name made from
`key`, and gives it back to any later call with the same key instead of calling `make`.
A key names everything the result depends on: the digest of the files read, the
versions of scikit-learn, NumPy and Python, and the digest of the code that fits
(`code_digest`), so that a stale entry is never used; an entry that cannot be read is
made again and replaced. Where: $MFJAX_LABELER_CACHE ('off' or '' turns it off), else
~/.cache/mfjax/labelers (the tests use a temporary one per run)."""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import tempfile
import warnings
from typing import Callable, Optional, TypeVar

LABELER_CACHE_ENV = "MFJAX_LABELER_CACHE"
DEFAULT = os.path.join("~", ".cache", "mfjax", "labelers")
T = TypeVar("T")


def directory() -> Optional[str]:
  """The cache's folder, or None where $MFJAX_LABELER_CACHE turns it off."""
  setting = os.environ.get(LABELER_CACHE_ENV)
  if setting is not None and setting.strip().lower() in ("", "0", "off", "none"):
    return None
  return os.path.abspath(os.path.expanduser(setting or DEFAULT))


def files_digest(paths) -> str:
  """The sha256 (hex) of the files `paths`, read in order."""
  digest = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def code_digest(*paths: str) -> str:
  """A digest of the files `paths` (the modules whose code makes an entry)."""
  return files_digest(paths)[:16]


def libraries() -> str:
  """The versions a pickled scikit-learn model depends on."""
  import numpy
  import sklearn
  return f"scikit-learn {sklearn.__version__}, numpy {numpy.__version__}, python {platform.python_version()}"


def path_of(kind: str, key: str) -> Optional[str]:
  """Where the entry of (kind, key) lives (None with the cache off)."""
  folder = directory()
  if folder is None:
    return None
  return os.path.join(folder, f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pkl")


def cached(kind: str, key: str, make: Callable[[], T]) -> T:
  """What `make()` returns, from the cache where an entry of (kind, key) is there, else made and kept.
  An entry holds its key, checked on reading (a name collision or a truncated file is made again)."""
  path = path_of(kind, key)
  if path is not None and os.path.exists(path):
    try:
      with open(path, "rb") as f:
        stored_key, value = pickle.load(f)
      if stored_key == key:
        return value
    except Exception:  # noqa: BLE001 (a truncated or foreign file: made again below)
      pass
  value = make()
  if path is not None:
    keep(path, (key, value))
  return value


def keep(path: str, entry) -> None:
  """`entry` written to `path` (`_write`); a folder that cannot be written is a warning, and the run goes on
  without keeping it."""
  try:
    _write(path, entry)
  except OSError as e:
    warnings.warn(f"the labeler cache could not keep {path}: {e} (set {LABELER_CACHE_ENV} to another folder, "
                  "or to off)")


def _write(path: str, entry) -> None:
  """Written whole or not at all: to a temporary file in the folder, then renamed over `path` (another
  process may write the same entry at the same time; either copy is the same)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".pkl")
  try:
    with os.fdopen(fd, "wb") as f:
      pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
