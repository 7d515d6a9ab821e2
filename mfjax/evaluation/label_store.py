"""Labels of the real texts kept on disk for later runs.

A CED run labels every real action it reads: the training events' (the population head's targets
and its anchor, the reference simulators), the validation and eval events'. With the learned
labeler that is about 75 s for the 474,000 actions of the default's data step on 2 CPU cores, and
the same again when the run scores, for labels that are the same in every run with that labeler.
`LabelStore` keeps them: each text's category ids under a digest of the text, in one file per
labeler, in the labeler cache's folder (`mfjax.evaluation.fit_cache`: $MFJAX_LABELER_CACHE, 'off'
turns it off). A labeler has a store only where it names everything its labels depend on
(`labeler_key`): the rule labeler (its version and code), the trained labeler (its fit's key: the
hand labels, the code and the library versions); any other labeler (an LLM's, with its own cache)
has none. Only real texts are kept (`CachedLabeler.ids(..., keep=True)`): a run's sampled actions
are new every run and would only grow the file.

The file is written whole or not at all, merged with what is on disk at the time (two runs may add
at once; an entry one of them adds may be lost, and is labelled again later). A file that cannot be
read, or holds another key, is replaced."""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
from typing import Optional

from mfjax.categories import DIMENSIONS
from mfjax.evaluation import fit_cache

KIND = "labels"


def labeler_key(labeler) -> Optional[str]:
  """What `labeler`'s labels depend on, or None where that is not known (no store)."""
  key = getattr(labeler, "cache_key", None)
  if key is None:
    from mfjax.evaluation.labelers import RuleLabeler
    if type(labeler) is not RuleLabeler:
      return None
    key = f"{labeler.version} code {fit_cache.code_digest(inspect.getfile(RuleLabeler))}"
  return f"{key} | categories {sorted((d, tuple(c)) for d, c in DIMENSIONS.items())}"


def text_digest(text: str) -> bytes:
  return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class LabelStore:
  """{text digest: category ids in DIMENSIONS' order} of one labeler, read from disk once."""

  def __init__(self, key: str):
    self.key, self.path = key, fit_cache.path_of(KIND, key)
    self.entries: dict[bytes, tuple] = self._read() if self.path else {}
    self.added = 0

  @classmethod
  def of(cls, labeler) -> Optional["LabelStore"]:
    """`labeler`'s store, or None (no key, or the cache turned off)."""
    key = labeler_key(labeler)
    if key is None or fit_cache.directory() is None:
      return None
    return cls(key)

  def _read(self) -> dict:
    if not os.path.exists(self.path):
      return {}
    try:
      with open(self.path, "rb") as f:
        stored_key, entries = pickle.load(f)
      if stored_key == self.key and isinstance(entries, dict):
        return entries
    except Exception:  # noqa: BLE001 (a truncated or foreign file: labelled again, then replaced)
      pass
    return {}

  def get(self, texts: list[str]) -> dict[str, dict]:
    """{text: {dimension: category id}} of the `texts` it holds."""
    out = {}
    for t in texts:
      ids = self.entries.get(text_digest(t))
      if ids is not None:
        out[t] = dict(zip(DIMENSIONS, ids))
    return out

  def add(self, texts: list[str], ids: dict) -> None:
    for i, t in enumerate(texts):
      self.entries[text_digest(t)] = tuple(int(ids[d][i]) for d in DIMENSIONS)
    self.added += len(texts)

  def save(self) -> None:
    """Written if anything was added, merged with the file's entries of now."""
    if not self.added or self.path is None:
      return
    merged = {**self._read(), **self.entries}
    fit_cache.keep(self.path, (self.key, merged))
    self.entries, self.added = merged, 0
