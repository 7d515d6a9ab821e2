"""Events: the canonical record and its loaders.

An `Event` is a topic (the original post) and its `Action`s in time order.
`load_events(path, format="auto")` streams events from:

- `ced`: the converted CED files (one JSON event per line, `.jsonl[.gz]`,
  actions with mid/uid/t/parent/text), as in `../shared/data/ced/`;
- `ced-raw`: the original CED_Dataset folder (original-microblog/,
  rumor-repost/, non-rumor-repost/) of thunlp/Chinese_Rumor_Dataset;
- `rumdect`: the Weibo format of Ma et al. 2016 (one JSON file per event, a
  list of posts, the first being the source post), optionally with a
  `Weibo.txt` label file beside the folder or in it;
- `jsonl`: the canonical record as JSON lines, for any other domain.

A malformed line or file raises `EventFormatError` naming file, line and field;
with `skip_errors=True` it is skipped and counted in a `LoadReport`.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import gzip
import hashlib
import json
import os
from typing import Any, Callable, Iterable, Iterator, Optional

from mfjax.errors import UserError

FORMATS = ("ced", "ced-raw", "rumdect", "jsonl")
_CST = datetime.timezone(datetime.timedelta(hours=8))  # CED dates are Beijing time


@dataclasses.dataclass(frozen=True)
class Action:
  """One repost/comment. Empty `text` is a plain repost (share)."""

  id: str  # unique within the event (Weibo mid)
  agent: str  # who acted (uid)
  time: Optional[float]  # unix seconds
  text: str
  parent: str = ""  # id of the action it answers; "" = the original post
  profile: dict = dataclasses.field(default_factory=dict)  # the agent's fields, where the source has them


@dataclasses.dataclass(frozen=True)
class Event:
  eid: str
  topic: str  # text of the original post
  time: Optional[float]
  label: Optional[str]  # e.g. "rumor" / "non-rumor"
  actions: tuple[Action, ...]  # in time order
  meta: dict = dataclasses.field(default_factory=dict)  # source-specific extras (poster profile, counts, ...)


class EventFormatError(UserError):
  """A malformed record; the message names file, line (if any) and field."""

  def __init__(self, path: str, line: Optional[int], field: Optional[str], problem: str):
    where = path + (f":{line}" if line is not None else "") + (f" field {field!r}" if field else "")
    super().__init__(f"{where}: {problem}")
    self.path, self.line, self.field = path, line, field


@dataclasses.dataclass
class LoadReport:
  """What a load with `skip_errors=True` read and skipped."""

  loaded: int = 0
  skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)  # first 100 messages

  def add_error(self, e: Exception) -> None:
    self.skipped += 1
    if len(self.errors) < 100:
      self.errors.append(str(e))


def split_of(eid: str) -> str:
  """The stable split of an event: sha256(eid) mod 100 < 80 train, < 90 val,
  else holdout (reproduces ../shared/data/ced exactly)."""
  h = int(hashlib.sha256(eid.encode()).hexdigest(), 16) % 100
  return "train" if h < 80 else "val" if h < 90 else "holdout"


# ----------------------------------------------------------------------------- parsing helpers


def _need(record: dict, key: str, path: str, line: Optional[int], types, prefix: str = ""):
  if not isinstance(record, dict):
    raise EventFormatError(path, line, prefix.rstrip(".") or None, f"expected an object, got {type(record).__name__}")
  if key not in record:
    raise EventFormatError(path, line, prefix + key, "missing")
  value = record[key]
  if not isinstance(value, types):
    raise EventFormatError(path, line, prefix + key, f"expected {_names(types)}, got {type(value).__name__}")
  return value


def _names(types) -> str:
  types = types if isinstance(types, tuple) else (types,)
  return " or ".join("null" if t is type(None) else t.__name__ for t in types)


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))


def _time(record: dict, key: str, path: str, line: Optional[int], prefix: str = "") -> Optional[float]:
  """Unix seconds from a number, null, or Weibo's 'Wed Aug 08 13:25:02 +0800 2012'
  (some CED originals hold that string)."""
  value = _need(record, key, path, line, (int, float, str, type(None)), prefix)
  if isinstance(value, str):
    try:
      return datetime.datetime.strptime(value, "%a %b %d %H:%M:%S %z %Y").timestamp()
    except ValueError:
      raise EventFormatError(path, line, prefix + key, f"unparseable time {value!r}") from None
  return value


def _sorted(actions: list[Action]) -> tuple[Action, ...]:
  return tuple(sorted(actions, key=lambda a: (a.time is None, a.time or 0.0)))


def _open_text(path: str):
  return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _json_lines(path: str) -> Iterator[tuple[int, Any]]:
  with _open_text(path) as f:
    for i, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        yield i, json.loads(raw)
      except json.JSONDecodeError as e:
        yield i, EventFormatError(path, i, None, f"invalid JSON ({e.msg} at column {e.colno})")


# ----------------------------------------------------------------------------- formats


def parse_ced(record: dict, path: str = "<ced>", line: Optional[int] = None) -> Event:
  """One converted-CED event (see ../shared/data/ced/README.md)."""
  actions = []
  for j, a in enumerate(_need(record, "actions", path, line, list)):
    p = f"actions[{j}]."
    actions.append(Action(id=_need(a, "mid", path, line, str, p), agent=_need(a, "uid", path, line, str, p),
                          time=_need(a, "t", path, line, _OPT_NUM, p), text=_need(a, "text", path, line, str, p),
                          parent=_need(a, "parent", path, line, str, p)))
  meta = {k: record[k] for k in ("user", "counts", "source", "has_url") if k in record}
  return Event(eid=_need(record, "eid", path, line, str), topic=_need(record, "topic", path, line, str),
               time=_time(record, "time", path, line), label=_need(record, "label", path, line, (str, type(None))),
               actions=_sorted(actions), meta=meta)


def parse_canonical(record: dict, path: str = "<jsonl>", line: Optional[int] = None) -> Event:
  """One event as `event_to_dict` writes it."""
  actions = []
  for j, a in enumerate(_need(record, "actions", path, line, list)):
    p = f"actions[{j}]."
    actions.append(Action(id=str(_need(a, "id", path, line, (str, int), p)), agent=str(_need(a, "agent", path, line, (str, int), p)),
                          time=_need(a, "time", path, line, _OPT_NUM, p), text=_need(a, "text", path, line, str, p),
                          parent=str(a.get("parent", "") or ""), profile=dict(a.get("profile") or {})))
  return Event(eid=str(_need(record, "eid", path, line, (str, int))), topic=_need(record, "topic", path, line, str),
               time=record.get("time"), label=record.get("label"), actions=_sorted(actions),
               meta=dict(record.get("meta") or {}))


def event_to_dict(e: Event) -> dict:
  """The canonical JSON record of an event (`jsonl` format)."""
  return {"eid": e.eid, "topic": e.topic, "time": e.time, "label": e.label, "meta": e.meta,
          "actions": [dataclasses.asdict(a) for a in e.actions]}


def event_to_ced(e: Event) -> dict:
  """The converted-CED record of an event (`ced` format, as in ../shared/data/ced)."""
  m = e.meta
  return {"eid": e.eid, "label": e.label, "topic": e.topic, "time": e.time, "user": m.get("user"),
          "counts": m.get("counts"), "source": m.get("source"), "has_url": m.get("has_url"),
          "actions": [{"mid": a.id, "uid": a.agent, "t": a.time, "parent": a.parent, "text": a.text}
                      for a in e.actions]}


def write_jsonl(events: Iterable[Event], path: str, *, as_ced: bool = False) -> int:
  """Write events as canonical JSON lines (or converted-CED records with
  `as_ced`), gzip if the path ends in .gz, atomically (a temp file, then rename)."""
  tmp, n = path + ".tmp", 0
  to_record = event_to_ced if as_ced else event_to_dict
  opener = gzip.open(tmp, "wt", encoding="utf-8") if path.endswith(".gz") else open(tmp, "w", encoding="utf-8")
  with opener as f:
    for e in events:
      f.write(json.dumps(to_record(e), ensure_ascii=False) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


_RUMDECT_PROFILE = ("user_description", "followers_count", "friends_count", "bi_followers_count", "verified",
                    "gender", "statuses_count", "reposts_count", "comments_count", "attitudes_count",
                    "user_location", "user_created_at", "verified_type", "city", "province", "username")


def _rumdect_labels(folder: str) -> dict[str, str]:
  """eid -> label from a Weibo.txt (`eid:123 label:1 ...`) beside or in the folder."""
  labels = {}
  for cand in (os.path.join(folder, "Weibo.txt"), os.path.join(os.path.dirname(folder.rstrip("/")), "Weibo.txt")):
    if os.path.exists(cand):
      with open(cand, encoding="utf-8") as f:
        for raw in f:
          fields = dict(tok.split(":", 1) for tok in raw.split() if ":" in tok)
          if "eid" in fields and "label" in fields:
            labels[fields["eid"]] = "rumor" if fields["label"] == "1" else "non-rumor"
      break
  return labels


def parse_rumdect(posts: list, path: str, label: Optional[str] = None) -> Event:
  """One rumdect event file: a list of posts, the first being the source post."""
  if not isinstance(posts, list) or not posts:
    raise EventFormatError(path, None, None, "expected a non-empty JSON list of posts")
  src = posts[0]
  actions = []
  for j, p in enumerate(posts[1:], start=1):
    pre = f"[{j}]."
    mid = p.get("mid", p.get("id")) if isinstance(p, dict) else None
    if mid is None:
      raise EventFormatError(path, None, pre + "mid", "missing")
    actions.append(Action(
        id=str(mid), agent=str(_need(p, "uid", path, None, (str, int), pre)),
        time=_need(p, "t", path, None, _NUM, pre), text=_need(p, "text", path, None, (str, type(None)), pre) or "",
        parent=str(p.get("parent") or ""), profile={k: p[k] for k in _RUMDECT_PROFILE if k in p}))
  eid = os.path.basename(path)[:-len(".json")]
  text = _need(src, "original_text", path, None, str, "[0].") if src.get("original_text") else \
      _need(src, "text", path, None, str, "[0].")
  meta = {"user": {k: src[k] for k in _RUMDECT_PROFILE if k in src}, "uid": str(src.get("uid", ""))}
  return Event(eid=eid, topic=text, time=_need(src, "t", path, None, _NUM, "[0]."), label=label,
               actions=_sorted(actions), meta=meta)


def _parse_cst(date: str) -> float:
  return datetime.datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_CST).timestamp()


def parse_ced_raw(original: dict, reposts: list, eid: str, label: str, path: str, original_path: str,
                  report: Optional[LoadReport] = None) -> Event:
  """One event of the original CED_Dataset layout (reposts with unparseable
  dates are dropped and counted, as in ../shared/data/ced)."""
  if not isinstance(reposts, list):
    raise EventFormatError(path, None, None, "expected a JSON list of reposts")
  actions = []
  for j, r in enumerate(reposts):
    pre = f"[{j}]."
    date = _need(r, "date", path, None, str, pre)
    try:
      t = _parse_cst(date)
    except ValueError:
      if report is not None:
        report.add_error(EventFormatError(path, None, pre + "date", f"unparseable date {date!r} (action dropped)"))
      continue
    actions.append(Action(id=_need(r, "mid", path, None, str, pre), agent=str(_need(r, "uid", path, None, (str, int), pre)),
                          time=t, text=_need(r, "text", path, None, (str, type(None)), pre) or "",
                          parent=_need(r, "parent", path, None, (str, type(None)), pre) or ""))
  # The raw files list reposts newest first; reversing before the stable sort by
  # time keeps same-second reposts in the order ../shared/data/ced has them.
  actions.reverse()
  topic = _need(original, "text", original_path, None, str)
  meta = {"user": original.get("user"), "counts": {k: original.get(k) for k in ("reposts", "comments", "likes", "pics")},
          "source": original.get("source"), "has_url": original.get("has_url")}
  return Event(eid=eid, topic=topic, time=_time(original, "time", original_path, None), label=label,
               actions=_sorted(actions), meta=meta)


def _ced_raw_files(folder: str) -> Iterator[tuple[str, str, str, str]]:
  """(eid, label, repost file, original-post file) of every event in the layout."""
  for label, sub in (("rumor", "rumor-repost"), ("non-rumor", "non-rumor-repost")):
    for rpath in sorted(glob.glob(os.path.join(folder, sub, "*.json"))):
      eid = os.path.basename(rpath)[:-len(".json")]
      yield eid, label, rpath, os.path.join(folder, "original-microblog", eid + ".json")


def _read_ced_raw(eid: str, label: str, rpath: str, opath: str, report: LoadReport) -> Event:
  if not os.path.exists(opath):
    raise EventFormatError(opath, None, None, f"missing original post for {rpath}")
  return parse_ced_raw(_load_json(opath), _load_json(rpath), eid, label, rpath, opath, report)


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise EventFormatError(path, e.lineno, None, f"invalid JSON ({e.msg})") from None


def detect_format(path: str) -> str:
  if os.path.isdir(path):
    if os.path.isdir(os.path.join(path, "original-microblog")):
      return "ced-raw"
    if glob.glob(os.path.join(path, "*.json")):
      return "rumdect"
    raise EventFormatError(path, None, None, "folder holds neither the CED_Dataset layout nor rumdect *.json files")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such event file or folder: {path}")
  for i, record in _json_lines(path):
    if isinstance(record, Exception):
      raise record
    actions = record.get("actions") if isinstance(record, dict) else None
    if isinstance(actions, list) and actions and isinstance(actions[0], dict):
      return "ced" if "uid" in actions[0] else "jsonl"
    if isinstance(record, dict) and "actions" in record:
      return "ced" if "counts" in record or "user" in record else "jsonl"
    raise EventFormatError(path, i, "actions", "cannot tell the format from the first record")
  raise EventFormatError(path, None, None, "empty file")


def load_events(path: str, format: str = "auto", *, skip_errors: bool = False,
                report: Optional[LoadReport] = None) -> Iterator[Event]:
  """Stream the events of `path` (see the module docstring for formats)."""
  fmt = detect_format(path) if format == "auto" else format
  if fmt not in FORMATS:
    raise ValueError(f"unknown event format {format!r}; use one of {FORMATS} or 'auto'")
  report = report if report is not None else LoadReport()

  def emit(make: Callable[[], Event]) -> Iterator[Event]:
    try:
      event = make()
    except EventFormatError as e:
      if not skip_errors:
        raise
      report.add_error(e)
      return
    report.loaded += 1
    yield event

  if fmt in ("ced", "jsonl"):
    parse = parse_ced if fmt == "ced" else parse_canonical
    for i, record in _json_lines(path):
      if isinstance(record, Exception):
        if not skip_errors:
          raise record
        report.add_error(record)
        continue
      yield from emit(lambda: parse(record, path, i))
  elif fmt == "rumdect":
    labels = _rumdect_labels(path)
    for fpath in sorted(glob.glob(os.path.join(path, "*.json"))):
      eid = os.path.basename(fpath)[:-len(".json")]
      yield from emit(lambda: parse_rumdect(_load_json(fpath), fpath, labels.get(eid)))
  else:
    for eid, label, rpath, opath in _ced_raw_files(path):
      yield from emit(lambda: _read_ced_raw(eid, label, rpath, opath, report))
