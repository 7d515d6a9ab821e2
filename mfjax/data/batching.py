"""Events -> fixed-shape step tensors [E, T, B, L] with masks.

The first T*B actions of each event (time order) are cut into T steps of B
consecutive agents. Shapes come from the config, never from the data, so one
compilation serves a whole run; what did not fit is counted in the report.

Prompts (topic + state, optional population context) are left-padded to
`prompt_len` (the sampler's layout) and keep their end when too long (the
state and the "评论：" cue sit there). With `topic_len` > 0 a prompt is two
blocks, each tokenised apart and left-padded in its place: the event's topic in
the first `topic_len` columns (its start kept when too long), the same for all
of the event's agents, then the agent's own part (context slot and state, its
end kept); the padding between them is masked, and positions count real tokens
only, so the model reads one contiguous prompt. Those first columns are what
the model may compute once for an event's agents (`mfjax.model.shared_extend`).
Actions are right-padded to `action_len`,
end with <eos>, and keep their beginning. Concatenating a step's prompt and
action gives one contiguous run of real tokens per agent, which is what
teacher-forced scoring needs.

Letters: E events, T steps, B agents per step, P prompt tokens, A action tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from mfjax.data.events import Event
from mfjax.data.prompts import (NUMBER_FEATURES, UidActivity, action_text, agent_numbers, agent_states,
                                policy_prompt, prompt_parts)


@dataclasses.dataclass(frozen=True)
class BatchConfig:
  steps: int = 12  # T: steps per event
  agents_per_step: int = 16  # B: consecutive actions per step
  prompt_len: int = 96  # P: tokens of topic + state (+ context)
  action_len: int = 32  # A: tokens of an action, <eos> included
  # Pt: the topic's own block at the prompt's start (0: one block, topic and state tokenised together)
  topic_len: int = 0

  def __post_init__(self):
    if not 0 <= self.topic_len < self.prompt_len:
      raise ValueError(f"topic_len {self.topic_len} must be in [0, prompt_len={self.prompt_len})")


@dataclasses.dataclass
class StepBatch:
  """Numpy arrays; `agent_mask` is False for steps/agents an event lacks."""

  prompt_ids: np.ndarray  # [E, T, B, P] int32, left-padded
  prompt_mask: np.ndarray  # [E, T, B, P] int32
  action_ids: np.ndarray  # [E, T, B, A] int32, right-padded, ends with eos
  action_mask: np.ndarray  # [E, T, B, A] int32
  agent_mask: np.ndarray  # [E, T, B] bool
  parent: np.ndarray  # [E, T, B] int32: slot t*B+b of the action it reposts, -1 = the original post / outside
  eids: list  # [E]
  texts: list  # [E][T*B] action texts (for labelling; "" past the end)
  report: dict  # what was truncated or missing
  # [E, T, B] int32: each action's joint category (mfjax.categories.CLASSES; -1 in empty slots), where the
  # run's population head needs them (`mfjax.pipeline.data.prepare` labels the texts)
  category: Optional[np.ndarray] = None
  # [E, T, B, F] float32: each agent's state as numbers (`mfjax.data.prompts.NUMBER_FEATURES`; 0 in empty
  # slots), where the run's population head reads them (mf.state_numbers: `step_numbers`)
  numbers: Optional[np.ndarray] = None
  # [E, T, B, C] float32: each agent's anchor log-probabilities, where the run's population head starts from a
  # given per-agent anchor (mf.anchor='agents': `mfjax.evaluation.bounds.AgentAnchor.logprobs`)
  anchor: Optional[np.ndarray] = None
  # [E, T, B, C] float32: the anchor of agents of whose events nothing is known (`AgentAnchor.blind`), which the
  # method 'blind' reads instead of `anchor` (the eval events' batch, where the run rolls 'blind' out)
  anchor_blind: Optional[np.ndarray] = None

  def arrays(self) -> dict:
    """The numeric fields, as the training and rollout functions take them (`category` where labelled,
    `numbers`, `anchor` and `anchor_blind` where set)."""
    return ({k: getattr(self, k) for k in ARRAY_FIELDS}
            | {k: getattr(self, k) for k in ("category", "numbers", "anchor", "anchor_blind")
               if getattr(self, k) is not None})


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
  return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def step_texts(events: Sequence[Event], steps: int, agents: int) -> tuple[list, np.ndarray]:
  """The raw action texts as `make_step_batch` lays them out ([E][T*B], "" past an event's end)
  and its agent mask [E, T, B], without tokenising: the first T*B actions, B consecutive ones a step."""
  n = [min(len(e.actions), steps * agents) for e in events]
  texts = [[a.text for a in e.actions[:k]] + [""] * (steps * agents - k) for e, k in zip(events, n)]
  mask = np.arange(steps * agents)[None] < np.asarray(n, np.int64).reshape(-1, 1)
  return texts, mask.reshape(len(events), steps, agents)


def step_numbers(events: Sequence[Event], steps: int, agents: int, activity: Optional[UidActivity] = None,
                 rows: Optional[Sequence[Sequence]] = None) -> np.ndarray:
  """[E, T, B, F] float32: `agent_numbers` of the first T*B actions of each event, laid out as
  `make_step_batch` lays out the actions (0 past an event's end); `rows`: [E][actions used] rows in
  their place (a forecast's agents to come)."""
  out = np.zeros((len(events), steps * agents, len(NUMBER_FEATURES)), np.float32)
  for e, event in enumerate(events):
    n = min(len(event.actions), steps * agents)
    got = agent_numbers(dataclasses.replace(event, actions=event.actions[:n]), activity) if rows is None \
        else list(rows[e][:n])
    if len(got) != n:
      raise ValueError(f"event {event.eid}: {len(got)} rows of agent numbers for {n} actions")
    if n:
      out[e, :n] = got
  return out.reshape(len(events), steps, agents, -1)


def make_step_batch(events: Sequence[Event], tokenizer, config: BatchConfig = BatchConfig(), *,
                    activity: Optional[UidActivity] = None, contexts: Optional[Sequence[Sequence[str]]] = None,
                    states: Optional[Sequence[Sequence[str]]] = None) -> StepBatch:
  """Tokenise and lay out events as fixed-shape step tensors.

  contexts: optional [E][T] population-context strings (one per step, shared by
  its agents), e.g. from a baseline; omitted = no context slot.
  states: optional [E][actions used] agent state lines in place of `agent_states` (a forecast's
  agents to come, whose states are not in the data: `mfjax.pipeline.forecast`).
  """
  E, T, B, P, A = len(events), config.steps, config.agents_per_step, config.prompt_len, config.action_len
  pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
  if pad is None or eos is None:
    raise ValueError("the tokenizer needs pad and eos tokens")
  prompt_ids = np.full((E, T, B, P), pad, np.int32)
  prompt_mask = np.zeros((E, T, B, P), np.int32)
  action_ids = np.full((E, T, B, A), pad, np.int32)
  action_mask = np.zeros((E, T, B, A), np.int32)
  texts_out, agent_mask = step_texts(events, T, B)
  parent = np.full((E, T, B), -1, np.int32)
  Pt = config.topic_len
  report = {"events": E, "actions_used": 0, "actions_dropped": 0, "agent_slots_empty": 0,
            "prompts_truncated": 0, "actions_truncated": 0} | ({"topics_truncated": 0} if Pt else {})
  for e, event in enumerate(events):  # Python over events only to build the arrays (data prep, not the hot path)
    n = min(len(event.actions), T * B)
    report["actions_used"] += n
    report["actions_dropped"] += len(event.actions) - n
    report["agent_slots_empty"] += T * B - n
    actions = event.actions[:n]
    lines = (agent_states(dataclasses.replace(event, actions=actions), activity) if states is None
             else list(states[e][:n]))
    if len(lines) != n:
      raise ValueError(f"event {event.eid}: {len(lines)} agent states for {n} actions")
    slot = {a.id: i for i, a in enumerate(actions)}
    parent[e].reshape(-1)[:n] = [slot.get(a.parent, -1) if a.parent else -1 for a in actions]
    ctx = contexts[e] if contexts is not None else None
    context = lambda i: ctx[i // B] if ctx is not None else ""
    if Pt:  # the topic's block, alike for every agent of the event; then each agent's own part
      topic_ids = _encode(tokenizer, [prompt_parts(event.topic, "")[0]])[0] if n else []
      if len(topic_ids) > Pt:
        report["topics_truncated"] += 1
        topic_ids = topic_ids[:Pt]
      prompt_ids[e, :, :, Pt - len(topic_ids):Pt] = topic_ids
      prompt_mask[e, :, :, Pt - len(topic_ids):Pt] = 1
      prompts = [prompt_parts(event.topic, s, context(i))[1] for i, s in enumerate(lines)]
    else:
      prompts = [policy_prompt(event.topic, s, context(i)) for i, s in enumerate(lines)]
    texts = [action_text(a) for a in actions]
    for i, (p_ids, a_ids) in enumerate(zip(_encode(tokenizer, prompts), _encode(tokenizer, texts))):
      t, b = divmod(i, B)
      if len(p_ids) > P - Pt:
        report["prompts_truncated"] += 1
        p_ids = p_ids[-(P - Pt):]
      a_ids = list(a_ids) + [eos]
      if len(a_ids) > A:
        report["actions_truncated"] += 1
        a_ids = a_ids[:A - 1] + [eos]
      prompt_ids[e, t, b, P - len(p_ids):] = p_ids
      prompt_mask[e, t, b, P - len(p_ids):] = 1
      action_ids[e, t, b, :len(a_ids)] = a_ids
      action_mask[e, t, b, :len(a_ids)] = 1
  return StepBatch(prompt_ids, prompt_mask, action_ids, action_mask, agent_mask, parent, [e.eid for e in events],
                   texts_out, report)


ARRAY_FIELDS = ("prompt_ids", "prompt_mask", "action_ids", "action_mask", "agent_mask", "parent")
