"""Agent states and policy prompts.

An agent's *state* is what the data holds about it when it acts, rendered as a
short Chinese line:

- profiles where the source has them (rumdect: gender, followers, friends,
  verified, description; the synthetic world: the agent's type);
- for CED, whose reposters have no profile: the cascade depth through parent
  links, the time since the original post, and how many actions the same uid
  made in the training events other than this one (`UidActivity`, fitted on
  training events only).

The policy prompt is topic, an optional population-context slot (filled by the
`recent` / `popular` baselines or a text mean field), and the state; the
action text follows it. A plain repost (empty text) is written as `SHARE_TEXT`
so that the policy has something to generate and labelers read it as a share.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable, Optional

from mfjax.data.events import Action, Event

SHARE_TEXT = "转发微博"

# The prompt is the event's part (the topic), then the agent's: a batch laid out with `BatchConfig.topic_len`
# tokenises them apart, so that every agent of an event reads the same topic tokens (computed once for them).
TOPIC_TEMPLATE = "话题：{topic}\n"
AGENT_TEMPLATE = "{context}用户：{state}\n评论："
DEFAULT_TEMPLATE = TOPIC_TEMPLATE + AGENT_TEMPLATE
CONTEXT_TEMPLATE = "群体动态：{context}\n"


def action_text(action: Action) -> str:
  """The text the policy writes for an action (a plain repost is SHARE_TEXT)."""
  return action.text if action.text.strip() else SHARE_TEXT


@dataclasses.dataclass
class UidActivity:
  """How many actions each uid made in the events it was fitted on, outside the event asked about:
  an agent of a fitted event does not count its own actions there, so that the state means the same
  for a training agent as for an agent of an event never seen (a held-out event's count is the
  whole count, none of it from that event)."""

  counts: dict = dataclasses.field(default_factory=dict)
  per_event: dict = dataclasses.field(default_factory=dict)  # eid -> {uid: actions in that event}

  @classmethod
  def fit(cls, events: Iterable[Event]) -> "UidActivity":
    c, per_event = collections.Counter(), {}
    for e in events:
      own = collections.Counter(a.agent for a in e.actions)
      per_event[e.eid] = per_event.get(e.eid, collections.Counter()) + own
      c.update(own)
    return cls(dict(c), {eid: dict(own) for eid, own in per_event.items()})

  def __call__(self, uid: str, eid: Optional[str] = None) -> int:
    """`uid`'s actions in the fitted events other than `eid`."""
    return self.counts.get(uid, 0) - self.per_event.get(eid, {}).get(uid, 0)


def cascade_depths(event: Event) -> list[int]:
  """Depth of each action in the repost tree (1 = answers the original post; a
  parent outside the event counts as the original)."""
  depth: dict[str, int] = {}
  out = []
  for a in event.actions:  # time order: a parent comes before its children
    d = depth.get(a.parent, 0) + 1 if a.parent else 1
    depth[a.id] = d
    out.append(d)
  return out


def _hours(seconds: Optional[float]) -> str:
  if seconds is None:
    return "未知"
  h = max(seconds, 0.0) / 3600
  return f"{h:.1f}小时" if h < 48 else f"{h / 24:.0f}天"


def _profile_state(p: dict) -> str:
  if "type" in p:  # synthetic world
    return f"性格{p['type']}"
  parts = []
  if p.get("gender") in ("m", "f"):
    parts.append("男" if p["gender"] == "m" else "女")
  for key, name in (("followers_count", "粉丝"), ("friends_count", "关注"), ("statuses_count", "微博")):
    if key in p and p[key] is not None:
      parts.append(f"{name}{p[key]}")
  if "verified" in p:
    parts.append("认证用户" if p["verified"] else "普通用户")
  if p.get("user_description"):
    parts.append(f"简介：{str(p['user_description'])[:40]}")
  return "，".join(parts)


def _since_post(a: Action, event: Event) -> Optional[float]:
  """Seconds from the original post to the action (None where either time is missing)."""
  return None if (a.time is None or event.time is None) else a.time - event.time


def agent_states(event: Event, activity: Optional[UidActivity] = None) -> list[str]:
  """One state line per action of the event."""
  depths = cascade_depths(event)
  out = []
  for a, d in zip(event.actions, depths):
    if a.profile:
      out.append(_profile_state(a.profile))
      continue
    parts = [f"转发层级{d}", f"发布后{_hours(_since_post(a, event))}"]
    if activity is not None:
      parts.append(f"历史活跃{activity(a.agent, event.eid)}次")
    out.append("，".join(parts))
  return out


# What `agent_numbers` gives of each action's agent, as numbers (the population head's `mf.state_numbers`).
NUMBER_FEATURES = ("log1p cascade depth", "log1p hours since the post", "hours unknown",
                   "log1p actions in other events")


def agent_numbers(event: Event, activity: Optional[UidActivity] = None) -> list[tuple[float, ...]]:
  """One row of NUMBER_FEATURES per action of the event: what the CED state line says, as numbers
  (the cascade depth, the hours since the original post, 0 with the flag where a time is missing, and
  the uid's actions in other events where `activity` is given, else 0). Every source has the depth."""
  out = []
  for a, d in zip(event.actions, cascade_depths(event)):
    seconds = _since_post(a, event)
    since = None if seconds is None else max(seconds, 0.0) / 3600
    count = 0 if activity is None else activity(a.agent, event.eid)
    out.append((math.log1p(d), 0.0 if since is None else math.log1p(since), float(since is None), math.log1p(count)))
  return out


def policy_prompt(topic: str, state: str, context: str = "", template: str = DEFAULT_TEMPLATE) -> str:
  """The policy's input text; `context` fills the population slot (or is omitted)."""
  return template.format(topic=topic, state=state, context=CONTEXT_TEMPLATE.format(context=context) if context else "")


def prompt_parts(topic: str, state: str, context: str = "") -> tuple[str, str]:
  """`policy_prompt` cut in two: the event's part (the topic) and the agent's (context slot and state)."""
  return TOPIC_TEMPLATE.format(topic=topic), policy_prompt(topic, state, context, AGENT_TEMPLATE)


# The tag an attribute-conditioned policy reads after its prompt: the action's joint class
# (`mfjax.categories.CLASSES`) as a few characters, one per dimension.
_TAG_CHARS = {"belief": {"believe": "信", "doubt": "疑"},
              "sentiment": {"negative": "负", "neutral": "中", "positive": "正"},
              "intent": {"question": "问", "promotion": "传", "opinion": "论"}}


def attribute_tag(labels: dict) -> str:
  """The tag of one action's categories ({dimension: category}): 〈转发〉 for a share, else 〈评论<belief>
  <sentiment><intent>〉, e.g. 〈评论疑负问〉 for a doubting, negative question."""
  if labels["behaviour"] == "share":
    return "〈转发〉"
  return "〈评论" + "".join(_TAG_CHARS[d][labels[d]] for d in ("belief", "sentiment", "intent")) + "〉"
