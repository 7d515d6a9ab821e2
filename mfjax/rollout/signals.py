"""The population signal of a rollout: what its policy reads of the population.

At every step of the scan (`mfjax.rollout.simulate`) the policy's input gets a
signal of what the population did so far, and the step's actions then enter
it. A signal is a static (hashable) object, chosen from the rollout's spec, with
three methods:

  init(E, T, B, A) -> state
      the state before the first step; the scan carries it (and the PRNG key)
      and nothing else, so a method carries only the signal it reads;
  read(state, inputs, key, past) -> Reading
      the policy's part of the step: context tokens quoted before every
      agent's prompt, or prefix embeddings before its input; a latent mean
      field also gives q, which the rollout records. `past`: the rollout's
      sampled actions so far (tokens, mask) [E, T, B, A] (the steps before
      this one written), where the quoted history finds those it quotes;
  update(state, inputs, step, key) -> (state, written)
      the state after the step's actions (`Step`), and the summary written
      from them (recorded; None where a signal writes none).

`key` is one key a step: a signal draws from it in `read` or in `update`, not
in both. `inputs` (`Inputs`) holds what is the same at every step.

Signals: `NoSignal` (state, sft), `QuotedHistory` (recent, popular: which
slots hold an action so far, whether it was the real one, and its repost count,
but no tokens: a quoted action's are read from the real actions or from the
rollout's output, so the state grows with T by three numbers a slot; the traced
kind picks what is quoted, so both share one compilation), `LatentMeanField` (mf: m_{t-1} sampled from q and
read as K prefix vectors) and `TextMeanField` (mf_text: the latest summary
quoted, the next one written by the writer LM). A new kind of mean field is one
new class here and a branch in `simulate._signal`.

Letters: E events, T steps, B agents, P prompt, A action, C context, N = T * B
history slots, K slots, D width, S summary tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from mfjax.meanfield import text as text_mf
from mfjax.meanfield.encoder import MeanFieldEncoder, MFState, Posterior, agent_embeddings
from mfjax.model.transformer import Decoder
from mfjax.params_keys import PARAMS
from mfjax.rollout.context import NONE, ContextSpec, context_tokens, quoted_slots, repost_counts, selection_scores


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a signal reads besides its state and the step: the same at every step."""

  model: Decoder  # the policy's architecture, layers unrolled (`mfjax.model.transformer.unrolled`)
  params: dict  # the rollout's params by `PARAMS` key, LMs (lm, mf_lm) unrolled
  kind: jax.Array  # int32: what the quoted history quotes (`mfjax.rollout.context.KINDS`)
  real_actions: Optional[tuple]  # (ids, mask) [E, N, A]: the real actions, slot t * B + b (the quoted history's)
  temperature: jax.Array  # float32: of the policy's and the writer's samples
  top_k: int
  top_p: float
  topic_len: int = 0  # the prompts' first tokens, the event's topic, alike for its agents (`RolloutSpec.topic_len`)


@flax.struct.dataclass
class Step:
  """A step's actions as they enter the signal (per event)."""

  t: jax.Array  # int32: the step
  prompt_ids: jax.Array  # [E, B, P] int32
  prompt_mask: jax.Array  # [E, B, P]
  action_ids: jax.Array  # [E, B, A] int32: the real actions in warm-up and of forced agents, the sampled ones else
  action_mask: jax.Array  # [E, B, A]
  agent_mask: jax.Array  # [E, B] bool
  parent: jax.Array  # [E, B] int32: the real actions' parent slots (-1: the original post)
  real: jax.Array  # [E, B] bool: the action is the real one (warm-up or forced)
  category: jax.Array  # [E, B] int32: its joint category, the real label or the drawn class (-1: none)


@flax.struct.dataclass
class Reading:
  """The signal's part of the policy's input at a step (None: no such part)."""

  context: Optional[tuple] = None  # (ids, int32 mask) [E, C]: quoted before every agent's prompt
  prefix: Optional[jax.Array] = None  # [E, K, D]: embeddings before every agent's input
  posterior: Optional[Posterior] = None  # [E, K, D]: the latent q the prefix was sampled from (recorded)


class PopulationSignal(Protocol):
  """The interface (see the module docstring)."""

  def init(self, E: int, T: int, B: int, A: int) -> Any:
    ...

  def read(self, state, inputs: Inputs, key, past) -> Reading:
    ...

  def update(self, state, inputs: Inputs, step: Step, key) -> tuple[Any, Optional[tuple]]:
    ...


@dataclasses.dataclass(frozen=True)
class NoSignal:
  """The prompt alone (state, sft)."""

  def init(self, E, T, B, A):
    return ()

  def read(self, state, inputs, key, past):
    return Reading()

  def update(self, state, inputs, step, key):
    return state, None


@flax.struct.dataclass
class History:
  """Which actions so far a quote may take, and how (the quoted history's state; no tokens)."""

  valid: jax.Array  # [E, N] bool: slot holds an action of an earlier step
  real: jax.Array  # [E, N] bool: that action is the real one (warm-up, forced), else the agent's sample
  counts: jax.Array  # [E, N] float32: reposts of each slot (real parent links of real actions only)


@dataclasses.dataclass(frozen=True)
class QuotedHistory:
  """Actions so far quoted before the prompt (recent, popular; `mfjax.rollout.context`). A quoted
  action's tokens come from the real actions (`Inputs.real_actions`) where the history took the real
  one, else from the rollout's samples (`past`)."""

  context: ContextSpec

  def init(self, E, T, B, A):
    N = T * B
    return History(valid=jnp.zeros((E, N), bool), real=jnp.zeros((E, N), bool), counts=jnp.zeros((E, N), jnp.float32))

  def read(self, state: History, inputs, key, past):
    sampled_ids, sampled_mask = past
    E, T, B, A = sampled_ids.shape
    scores = jax.vmap(selection_scores, (None, 0))(inputs.kind, state.counts)
    idx, ok = jax.vmap(functools.partial(quoted_slots, self.context.k))(state.valid, scores)  # [E, k]
    take = lambda x: jnp.take_along_axis(x.reshape(E, T * B, A), idx[..., None], 1)
    real = jnp.take_along_axis(state.real, idx, 1)[..., None]
    real_ids, real_mask = inputs.real_actions
    ids = jnp.where(real, take(real_ids), take(sampled_ids))
    mask = jnp.where(real, take(real_mask) > 0, take(sampled_mask))
    ids, mask = jax.vmap(functools.partial(context_tokens, self.context))(ids, mask, ok)
    return Reading(context=(ids, mask * (inputs.kind != NONE)))

  def update(self, state: History, inputs, step, key):
    B, N = step.agent_mask.shape[1], state.counts.shape[1]
    put = lambda buf, v: jax.lax.dynamic_update_slice_in_dim(buf, v.astype(buf.dtype), step.t * B, axis=1)
    counts = state.counts + jax.vmap(lambda p, v: repost_counts(p, v, N))(step.parent, step.agent_mask & step.real)
    return History(valid=put(state.valid, step.agent_mask), real=put(state.real, step.real), counts=counts), None


@dataclasses.dataclass(frozen=True)
class LatentMeanField:
  """m_{t-1} ~ q read as K prefix vectors; the encoder updates its state from the step (mf)."""

  encoder: MeanFieldEncoder

  def _apply(self, inputs, method, *args):
    return self.encoder.apply({"params": inputs.params[PARAMS.mf]}, *args, method=method)

  def init(self, E, T, B, A):
    return MFState.zeros(self.encoder.cfg, (E,))

  def read(self, state: MFState, inputs, key, past):
    q = self._apply(inputs, MeanFieldEncoder.posterior, state)
    return Reading(prefix=q.sample(key), posterior=q)

  def update(self, state: MFState, inputs, step, key):
    pooled = agent_embeddings(inputs.model, inputs.params[PARAMS.lm], step.prompt_ids, step.prompt_mask,
                              step.action_ids, step.action_mask, shared=inputs.topic_len)
    category = step.category if self.encoder.cfg.category_features else None
    features = self._apply(inputs, MeanFieldEncoder.features, pooled, category)
    return self._apply(inputs, MeanFieldEncoder.update, state, features, step.agent_mask), None


@dataclasses.dataclass(frozen=True)
class TextMeanField:
  """The latest summary quoted before the prompt; the writer LM writes the next (mf_text; `mfjax.meanfield.text`)."""

  text: text_mf.TextMFSpec

  def init(self, E, T, B, A):
    return text_mf.empty_summary(self.text, (E,))  # (ids, mask) [E, S]

  def read(self, state, inputs, key, past):
    return Reading(context=text_mf.policy_context(self.text, *state))

  def update(self, state, inputs, step, key):
    w_ids, w_mask = text_mf.writer_prompt(self.text, *state, step.action_ids, step.action_mask, step.agent_mask)
    written = text_mf.write(inputs.model, inputs.params[PARAMS.mf_lm], self.text, w_ids, w_mask, rng=key,
                            temperature=inputs.temperature, top_k=inputs.top_k, top_p=inputs.top_p)
    summary = text_mf.next_summary(self.text, written, *state, step.agent_mask)
    return summary, summary
