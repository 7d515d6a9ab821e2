"""Interventions (the paper's second application): inject actions, e.g.
counter-rumor comments, at one step of every event, and compare the population
that follows with the one that follows without them.

An `Intervention` says that the last `agents` agents of step `step` write
`text` instead of their own action: the step's latest actions, which the next
step sees first (and the `recent` baseline quotes). `inject` applies it to
events (everything but those actions' texts is kept: agent, time, profile,
parent), and
`forced_mask` marks those agents in a step batch: a rollout takes their
(injected) actions into the history as it takes real ones during warm-up
(`mfjax.rollout.simulate`, batch key `forced`), and samples the rest. Run with
the same rollout key as the run without, the two differ only through what the
injected actions changed.

Letters: E events, T steps, B agents per step.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mfjax.data.events import Event


@dataclasses.dataclass(frozen=True)
class Intervention:
  text: str  # the injected action ("" would be a plain repost)
  step: int  # the step that gets it
  agents: int  # how many of that step's agents (the last ones) write it

  def check(self, steps: int, agents_per_step: int, warmup: int = 0) -> None:
    """ValueError unless the intervention falls on a rolled-out step of a
    [T=steps, B=agents_per_step] batch and leaves a later step to measure."""
    if not warmup <= self.step < steps - 1:
      raise ValueError(f"step {self.step} must be a rollout step (>= the warm-up, {warmup}) before the last of "
                       f"{steps} steps, so that a later step shows its effect")
    if not 1 <= self.agents <= agents_per_step:
      raise ValueError(f"agents {self.agents} must be 1 to the {agents_per_step} agents of a step")


def inject(events: Sequence[Event], intervention: Intervention, agents_per_step: int) -> list[Event]:
  """The events with the intervention's actions in place (an event without
  an action in such a slot gets none there)."""
  iv, B = intervention, agents_per_step
  slots = range((iv.step + 1) * B - iv.agents, (iv.step + 1) * B)
  out = []
  for e in events:
    acts = list(e.actions)
    for i in slots:
      if i < len(acts):
        acts[i] = dataclasses.replace(acts[i], text=iv.text)
    out.append(dataclasses.replace(e, actions=tuple(acts)))
  return out


def forced_mask(agent_mask_ExTxB: np.ndarray, intervention: Intervention) -> np.ndarray:
  """[E, T, B] bool: the agents whose actions are the injected ones (those the events have)."""
  forced = np.zeros(agent_mask_ExTxB.shape, bool)
  forced[:, intervention.step, forced.shape[2] - intervention.agents:] = True
  return forced & np.asarray(agent_mask_ExTxB, bool)
