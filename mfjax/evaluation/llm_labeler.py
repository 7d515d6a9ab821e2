"""The paper's labelling: an LLM behind an OpenAI-compatible endpoint labels
batches of comments with JSON output.

Batched (`batch_size` comments a request), retried with exponential backoff on
transport errors, HTTP 429/5xx and malformed answers, and cached on disk by
sha256(prompt version + text), so a rerun asks only for texts it has not seen.
Plain shares (empty or forwarding-only texts) are labelled locally, without a
request. Standard library only (urllib).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from typing import Optional, Sequence

from mfjax.categories import DIMENSIONS, SHARE_LABELS
from mfjax.evaluation.labelers import collate, is_share

PROMPT_VERSION = "weibo-labels-v1"
SYSTEM_PROMPT = (
    "You label Chinese Weibo comments about a news post. For each numbered comment give: "
    "belief (believe: accepts the post; doubt: questions or denies it, e.g. calls it a rumor), "
    "sentiment (negative, neutral, positive), intent (question: asks something; promotion: spreads or "
    "tells others; opinion: states a view). Answer with JSON only: "
    '{"labels": [{"i": <number>, "belief": ..., "sentiment": ..., "intent": ...}, ...]} '
    "with one entry per comment."
)


class LabelerError(RuntimeError):
  pass


class OpenAICompatLabeler:
  """Labels texts with a chat model at `base_url` (e.g. http://localhost:8000/v1)."""

  def __init__(self, base_url: str, model: str, *, api_key: Optional[str] = None, batch_size: int = 20,
               cache_dir: Optional[str] = None, max_retries: int = 4, timeout: float = 60.0,
               backoff: float = 1.0, prompt_version: str = PROMPT_VERSION):
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model, self.api_key, self.batch_size = model, api_key or os.environ.get("OPENAI_API_KEY"), batch_size
    self.max_retries, self.timeout, self.backoff, self.prompt_version = max_retries, timeout, backoff, prompt_version
    self.requests = 0  # HTTP requests made (for reports and tests)
    self.cache: dict[str, dict] = {}
    self.cache_path = None
    if cache_dir:
      os.makedirs(cache_dir, exist_ok=True)
      self.cache_path = os.path.join(cache_dir, f"labels-{prompt_version}.jsonl")
      if os.path.exists(self.cache_path):
        with open(self.cache_path, encoding="utf-8") as f:
          for line in f:
            if line.strip():
              row = json.loads(line)
              self.cache[row["key"]] = row["labels"]

  def _key(self, text: str) -> str:
    return hashlib.sha256(f"{self.prompt_version}\n{text}".encode()).hexdigest()

  def _post(self, payload: dict) -> dict:
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
    self.requests += 1
    with urllib.request.urlopen(req, timeout=self.timeout) as resp:
      return json.loads(resp.read())

  def _ask(self, texts: list[str]) -> list[dict]:
    listing = "\n".join(f"{i}. {t}" for i, t in enumerate(texts))
    payload = {"model": self.model, "temperature": 0, "response_format": {"type": "json_object"},
               "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": listing}]}
    last = None
    for attempt in range(self.max_retries + 1):
      if attempt:
        time.sleep(self.backoff * 2 ** (attempt - 1))
      try:
        answer = self._post(payload)
        return self._parse(answer, len(texts))
      except urllib.error.HTTPError as e:
        last = f"HTTP {e.code}"
        if e.code not in (408, 409, 429) and e.code < 500:
          raise LabelerError(f"{self.url}: {last} (not retried)") from None
      except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        last = f"connection error: {e}"
      except (LabelerError, ValueError, KeyError, TypeError) as e:
        last = f"malformed answer: {e}"
    raise LabelerError(f"{self.url}: gave up on a batch of {len(texts)} after {self.max_retries + 1} tries ({last})")

  @staticmethod
  def _parse(answer: dict, n: int) -> list[dict]:
    content = answer["choices"][0]["message"]["content"]
    rows = json.loads(content)["labels"]
    out: list[Optional[dict]] = [None] * n
    for row in rows:
      i = int(row["i"])
      if not 0 <= i < n:
        raise LabelerError(f"index {i} out of range")
      labels = {"behaviour": "comment"}
      for d in ("belief", "sentiment", "intent"):
        if row.get(d) not in DIMENSIONS[d]:
          raise LabelerError(f"comment {i}: {d}={row.get(d)!r} is not one of {DIMENSIONS[d]}")
        labels[d] = row[d]
      out[i] = labels
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
      raise LabelerError(f"no labels for comments {missing}")
    return out  # type: ignore[return-value]

  def label(self, texts: Sequence[str]) -> dict[str, list[str]]:
    todo = sorted({t for t in texts if not is_share(t) and self._key(t) not in self.cache})
    for start in range(0, len(todo), self.batch_size):
      chunk = todo[start:start + self.batch_size]
      labels = self._ask(chunk)
      rows = [{"key": self._key(t), "labels": lab} for t, lab in zip(chunk, labels)]
      for row in rows:
        self.cache[row["key"]] = row["labels"]
      if self.cache_path:
        with open(self.cache_path, "a", encoding="utf-8") as f:
          f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return collate([SHARE_LABELS if is_share(t) else self.cache[self._key(t)] for t in texts])
