"""A synthetic mean-field world with exact ground truth (the embedded default data).

Each event is a post (a rumor or not) and T steps of B agents. Agent i has a
private type k_i in {credulous, neutral, sceptical} (z_k = -1, 0, +1, shown in
its profile). Before step t the population signal is the history so far:

  S_t   share fraction among all earlier actions        (0.5 before any)
  D_t   doubt fraction among earlier comments            (0.5 before any)
  N_t, P_t  negative / positive fractions among earlier comments (1/3 before any)

and agent i acts (independently given the history) by these equations
(sigma = logistic; every coefficient is a field of `WorldConfig`):

  share    ~ Bernoulli(sigma(share_bias + share_herding * (S_t - 0.5)))
  a share is an empty text: believe, neutral, promotion (as labelers read it)
  doubt    ~ Bernoulli(sigma(doubt_bias + rumor_shift * r + type_weight * z_k
                             + herding * (D_t - 0.5)))       r = +1 rumor, -1 not
  sentiment ~ softmax([neg_bias + doubt_neg * doubt + mood_herding * (N_t - 1/3),
                       0,
                       pos_bias - doubt_pos * doubt + mood_herding * (P_t - 1/3)])
  intent   ~ softmax([question_bias + doubt_question * doubt, promotion_bias, 0])

With herding > 0 the doubt path is self-reinforcing: early chance decides
whether an event's population drifts to doubt or belief. Two events with the
same topic label and the same agent types then have different step
distributions, which a policy that sees only (topic, state) cannot tell apart;
a policy that also sees the population signal (D_t, ...) can match each one.
The exact per-step ground truth (`GroundTruth.probs`) is the mean over the
step's agents of their category probabilities given the realised history.

Texts are Chinese templates per (belief, sentiment, intent), built so that
`RuleLabeler` recovers every attribute exactly.

With an `Intervention` (`mfjax.data.intervention`) the world's own answer to
it is exact too: `generate(..., intervention=iv, labels=...)` makes the same
events with the intervention's agents forced to the injected action's labels
(its text in their place). Every random draw of the agents' attributes is the
same as without it, so the steps up to the intervention are identical and the
later ones differ only through what the injected actions changed in the history.

`run_free(truth, warmup, seed)` runs the world on from a generated batch's first
`warmup` real steps with draws of its own: the perfect simulator, which a rollout
of the pipeline can at best match (`mfjax.evaluation.bounds`, `world`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mfjax.categories import DIMENSIONS, SHARE_LABELS
from mfjax.data.events import Action, Event
from mfjax.data.intervention import Intervention

TYPES = ("轻信", "中立", "多疑")  # credulous, neutral, sceptical: z = -1, 0, +1
TYPE_Z = np.array([-1.0, 0.0, 1.0])

RUMOR_TOPICS = (
    "网传某市自来水被污染，明天起全面停水三天，请大家提前储水",
    "网传某品牌奶粉检出致癌物，已有多名婴儿住院",
    "网传吃香蕉和酸奶同食会中毒，转给家人看看",
    "网传某地明天将发生七级地震，专家已经证实",
    "网传某超市鸡蛋是人造的，煮熟后会反弹",
)
TRUE_TOPICS = (
    "气象台发布暴雨橙色预警，明天全市中小学停课一天",
    "某地发生4.5级地震，暂无人员伤亡报告",
    "新地铁线路将于下月正式开通运营，共设十二座车站",
    "国家队今晚三比零获胜，晋级决赛",
    "市卫健委通报：本周流感病例较上周有所下降",
)

# Phrases per (belief, intent); sentiment is added as an emoticon. None of them
# holds a sentiment word, and only the doubt ones hold a doubt marker.
_PHRASES = {
    ("believe", "question"): ("这是哪里发生的？", "有人知道具体情况吗？", "官方什么时候通知的？", "后续怎么样了？"),
    ("believe", "promotion"): ("扩散一下", "大家注意", "转给身边的人看看", "请大家互相转告"),
    ("believe", "opinion"): ("这件事值得关注", "说得对", "希望尽快处理", "明白了，记下了"),
    ("doubt", "question"): ("真的假的？", "求真相，有人知道吗？", "是不是PS的？", "这个消息可信吗？"),
    ("doubt", "promotion"): ("别信谣言，扩散", "大家注意，这是谣言", "辟谣了，转给大家看看", "提醒大家别信"),
    ("doubt", "opinion"): ("感觉是谣言", "不靠谱", "又是假新闻", "有待证实"),
}
_EMOTICONS = {"negative": ("[怒]", "[泪]", "[衰]"), "neutral": ("",), "positive": ("[赞]", "[鼓掌]", "[哈哈]")}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Coefficients of the world's equations (module docstring)."""

  steps: int = 12  # T
  agents_per_step: int = 16  # B
  rumor_fraction: float = 0.5  # share of events that are rumors
  type_probs: tuple[float, float, float] = (0.3, 0.4, 0.3)  # credulous, neutral, sceptical
  share_bias: float = -0.4
  share_herding: float = 2.0
  doubt_bias: float = -0.5
  rumor_shift: float = 0.6
  type_weight: float = 1.0
  herding: float = 6.0  # how strongly the population's doubt so far pulls each agent
  neg_bias: float = -0.5
  doubt_neg: float = 1.5
  pos_bias: float = -0.3
  doubt_pos: float = 1.0
  mood_herding: float = 3.0
  question_bias: float = -0.8
  doubt_question: float = 1.2
  promotion_bias: float = -0.2


@dataclasses.dataclass
class GroundTruth:
  """Exact quantities of a generated batch of E events."""

  probs: dict  # dimension -> [E, T, C]: expected category proportions of each step given its history
  attributes: dict  # dimension -> [E, T, B] realised category ids (indices into DIMENSIONS[dim])
  agent_type: np.ndarray  # [E, T, B] type index into TYPES
  rumor: np.ndarray  # [E] bool
  signal: dict  # "share", "doubt", "negative", "positive" -> [E, T] population signal before each step
  config: WorldConfig  # the world whose equations made them


# Category index of a plain share in each dimension (as the labelers read it), and of doubt.
_SHARE_ID = {d: DIMENSIONS[d].index(c) for d, c in SHARE_LABELS.items()}
_DOUBT = DIMENSIONS["belief"].index("doubt")
SIGNALS = ("share", "doubt", "negative", "positive")  # GroundTruth.signal's keys: S_t, D_t, N_t, P_t


@dataclasses.dataclass
class _History:
  """Each event's counts [E] of the actions before the current step: what the population signal is made of."""

  actions: np.ndarray
  share: np.ndarray
  comment: np.ndarray
  doubt: np.ndarray
  negative: np.ndarray
  positive: np.ndarray

  @classmethod
  def empty(cls, events: int) -> "_History":
    return cls(*(np.zeros(events) for _ in dataclasses.fields(cls)))

  def signal(self) -> tuple:
    """(S_t, D_t, N_t, P_t), each [E, 1] (module docstring)."""
    frac = lambda n, of, before: np.where(of > 0, n / np.maximum(of, 1), before)[:, None]
    return (frac(self.share, self.actions, 0.5), frac(self.doubt, self.comment, 0.5),
            frac(self.negative, self.comment, 1 / 3), frac(self.positive, self.comment, 1 / 3))

  def add(self, share, doubt, sentiment) -> None:
    """Counts in one step's actions ([E, B] each: share and doubt bool, sentiment ids)."""
    comment = ~share
    self.actions += share.shape[1]
    self.share += share.sum(1)
    self.comment += comment.sum(1)
    self.doubt += doubt.sum(1)
    self.negative += (comment & (sentiment == 0)).sum(1)
    self.positive += (comment & (sentiment == 2)).sum(1)


def _step_law(c: WorldConfig, history: _History, r, z_ExB, signal: dict, t: int) -> tuple[dict, tuple]:
  """One step's equations given the history: (dimension -> [E, B, C] each agent's exact category
  probabilities, the law `_draw` samples from); writes the signal before step t into `signal`."""
  S, D, N, P = history.signal()
  for k, v in zip(SIGNALS, (S, D, N, P)):
    signal[k][:, t] = v[:, 0]
  E, B = z_ExB.shape
  p_share = np.broadcast_to(_sigmoid(c.share_bias + c.share_herding * (S - 0.5)), (E, B))
  p_doubt = _sigmoid(c.doubt_bias + c.rumor_shift * r + c.type_weight * z_ExB + c.herding * (D - 0.5))
  mood = lambda doubt: _softmax(np.stack(np.broadcast_arrays(
      c.neg_bias + c.doubt_neg * doubt + c.mood_herding * (N - 1 / 3), np.zeros((E, B)),
      c.pos_bias - c.doubt_pos * doubt + c.mood_herding * (P - 1 / 3)), -1))
  aim = lambda doubt: _softmax(np.stack(np.broadcast_arrays(
      c.question_bias + c.doubt_question * doubt, np.full((E, B), c.promotion_bias), np.zeros((E, B))), -1))
  sent_d, sent_b = mood(1.0), mood(0.0)
  int_d, int_b = aim(1.0), aim(0.0)
  # exact per-agent category probabilities (a share is believe/neutral/promotion)
  pc = (1 - p_share)[..., None]
  agent = {
      "behaviour": np.stack([p_share, 1 - p_share], -1),
      "belief": np.stack([1 - pc[..., 0] * p_doubt, pc[..., 0] * p_doubt], -1),
      "sentiment": pc * (p_doubt[..., None] * sent_d + (1 - p_doubt[..., None]) * sent_b)
      + p_share[..., None] * np.eye(3)[_SHARE_ID["sentiment"]],
      "intent": pc * (p_doubt[..., None] * int_d + (1 - p_doubt[..., None]) * int_b)
      + p_share[..., None] * np.eye(3)[_SHARE_ID["intent"]],
  }
  return agent, (p_share, p_doubt, sent_d, sent_b, int_d, int_b)


def _draw(rng: np.random.Generator, law: tuple) -> tuple:
  """One step's realised actions [E, B]: (share, doubt) bool, (sentiment, intent) ids."""
  p_share, p_doubt, sent_d, sent_b, int_d, int_b = law
  share = rng.random(p_share.shape) < p_share
  doubt = (rng.random(p_doubt.shape) < p_doubt) & ~share
  sentiment = np.where(doubt, _categorical(rng, sent_d), _categorical(rng, sent_b))
  intent = np.where(doubt, _categorical(rng, int_d), _categorical(rng, int_b))
  sentiment = np.where(share, _SHARE_ID["sentiment"], sentiment)
  intent = np.where(share, _SHARE_ID["intent"], intent)
  return share, doubt, sentiment, intent


def _record(probs: dict, attrs: dict, t: int, agent: dict, share, doubt, sentiment, intent) -> None:
  for d in DIMENSIONS:
    probs[d][:, t] = agent[d].mean(1)
  attrs["behaviour"][:, t] = np.where(share, _SHARE_ID["behaviour"], 1 - _SHARE_ID["behaviour"])
  attrs["belief"][:, t] = np.where(doubt, _DOUBT, 1 - _DOUBT)
  attrs["sentiment"][:, t] = sentiment
  attrs["intent"][:, t] = intent


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _categorical(rng, p):
  """Vectorised draws from the last axis of p."""
  u = rng.random(p.shape[:-1] + (1,))
  return np.minimum((np.cumsum(p, -1) < u).sum(-1), p.shape[-1] - 1)


def text_for(rng: np.random.Generator, belief: str, sentiment: str, intent: str) -> str:
  phrases = _PHRASES[(belief, intent)]
  emos = _EMOTICONS[sentiment]
  return phrases[rng.integers(len(phrases))] + emos[rng.integers(len(emos))]


def _forced_attributes(labels: dict) -> dict:
  """dimension -> category id of an injected action with `labels` (dimension -> category name), checked
  to be one the world can take: a plain share is share / believe / neutral / promotion."""
  ids = {}
  for d, cats in DIMENSIONS.items():
    if labels.get(d) not in cats:
      raise ValueError(f"labels[{d!r}] must be one of {cats}, got {labels.get(d)!r}")
    ids[d] = cats.index(labels[d])
  if labels["behaviour"] == "share" and any(ids[d] != i for d, i in _SHARE_ID.items()):
    raise ValueError(f"a share is {SHARE_LABELS} in the world, got {labels}")
  return ids


def generate(n_events: int, seed: int = 0, config: WorldConfig = WorldConfig(),
             intervention: Optional[Intervention] = None,
             labels: Optional[dict] = None) -> tuple[list[Event], GroundTruth]:
  """`n_events` events and their exact ground truth; deterministic in `seed`.
  intervention: its agents act as its text, labelled `labels` (dimension ->
  category, as the labeler reads the text), with every random draw unchanged
  (module docstring)."""
  c, rng = config, np.random.default_rng(seed)
  if intervention is not None:
    intervention.check(c.steps, c.agents_per_step)
    if labels is None:
      raise ValueError("an intervention needs the labels of its text")
    forced = _forced_attributes(labels)
  E, T, B = n_events, c.steps, c.agents_per_step
  rumor = rng.random(E) < c.rumor_fraction
  r = np.where(rumor, 1.0, -1.0)[:, None]
  types = rng.choice(3, size=(E, T, B), p=np.asarray(c.type_probs))
  z = TYPE_Z[types]
  attrs = {d: np.zeros((E, T, B), np.int64) for d in DIMENSIONS}
  probs = {d: np.zeros((E, T, len(v))) for d, v in DIMENSIONS.items()}
  signal = {k: np.zeros((E, T)) for k in SIGNALS}
  history = _History.empty(E)
  for t in range(T):  # T is small (tens); everything inside is vectorised over events and agents
    agent, law = _step_law(c, history, r, z[:, t], signal, t)
    share, doubt, sentiment, intent = _draw(rng, law)
    if intervention is not None and t == intervention.step:  # its agents act as told, surely
      last = slice(B - intervention.agents, B)
      for d in DIMENSIONS:
        agent[d][:, last] = np.eye(len(DIMENSIONS[d]))[forced[d]]
      share[:, last] = forced["behaviour"] == _SHARE_ID["behaviour"]
      doubt[:, last] = forced["belief"] == _DOUBT
      sentiment[:, last], intent[:, last] = forced["sentiment"], forced["intent"]
    _record(probs, attrs, t, agent, share, doubt, sentiment, intent)
    history.add(share, doubt, sentiment)

  events = []
  topic_ids = rng.integers(0, len(RUMOR_TOPICS), E)
  for e in range(E):  # building Python records (not a hot path): texts per agent
    topics = RUMOR_TOPICS if rumor[e] else TRUE_TOPICS
    actions = []
    for t in range(T):
      for b in range(B):
        if intervention is not None and t == intervention.step and b >= B - intervention.agents:
          text = intervention.text
        elif attrs["behaviour"][e, t, b] == 0:
          text = ""
        else:
          text = text_for(rng, DIMENSIONS["belief"][attrs["belief"][e, t, b]],
                          DIMENSIONS["sentiment"][attrs["sentiment"][e, t, b]],
                          DIMENSIONS["intent"][attrs["intent"][e, t, b]])
        i = t * B + b
        actions.append(Action(id=f"{e}-{i}", agent=f"u{e}-{i}", time=float(60 * (i + 1)), text=text,
                              profile={"type": TYPES[types[e, t, b]]}))
    events.append(Event(eid=f"synthetic-{seed}-{e}", topic=topics[topic_ids[e]], time=0.0,
                        label="rumor" if rumor[e] else "non-rumor", actions=tuple(actions),
                        meta={"world": "synthetic", "seed": seed}))
  return events, GroundTruth(probs=probs, attributes=attrs, agent_type=types, rumor=rumor, signal=signal,
                             config=c)


def run_free(truth: GroundTruth, warmup: int, seed) -> GroundTruth:
  """The world's own continuation of `truth`'s events past their first `warmup` steps: the same
  equations, agent types and rumor flags, the real actions up to the warm-up, and from there its
  own draws (`seed`: what np.random.default_rng takes), each step reading the history it made
  itself. This is the perfect simulator a rollout aims at (a policy sees the agent's type and the
  topic; the mean field, the actions so far): scored against the real events, it is the best a
  faithful simulator can expect, where the real course past the warm-up is itself one draw among
  many. An intervention in `truth` is not applied again past the warm-up."""
  E, T, B = truth.agent_type.shape
  if not 0 <= warmup <= T:
    raise ValueError(f"warm-up {warmup} is not within the events' {T} steps")
  rng = np.random.default_rng(seed)
  attrs = {d: np.array(v) for d, v in truth.attributes.items()}
  probs = {d: np.array(v) for d, v in truth.probs.items()}
  signal = {k: np.array(v) for k, v in truth.signal.items()}
  r = np.where(truth.rumor, 1.0, -1.0)[:, None]
  z = TYPE_Z[truth.agent_type]
  history = _History.empty(E)
  for t in range(T):
    if t >= warmup:
      agent, law = _step_law(truth.config, history, r, z[:, t], signal, t)
      _record(probs, attrs, t, agent, *_draw(rng, law))
    history.add(attrs["behaviour"][:, t] == _SHARE_ID["behaviour"], attrs["belief"][:, t] == _DOUBT,
                attrs["sentiment"][:, t])
  return GroundTruth(probs=probs, attributes=attrs, agent_type=truth.agent_type, rumor=truth.rumor, signal=signal,
                     config=truth.config)
