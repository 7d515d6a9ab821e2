"""A tiny policy + mean-field encoder and random step tensors for the core tests."""

import contextlib

import jax
import numpy as np

from mfjax.ibtune import train as ibtune_train
from mfjax.meanfield import MeanFieldConfig, MeanFieldEncoder, init_encoder
from mfjax.meanfield.text import TextMFSpec
from mfjax.model import Decoder, LoraConfig, init_params, tiny
from mfjax.model.lora import add_lora
from mfjax.rollout import ContextSpec

V, PAD, EOS = 64, 0, 2
E, T, B, P, A = 2, 4, 3, 5, 4


def make_model(seed=0, width=32):
  model = Decoder(tiny("qwen2", vocab_size=V, hidden_size=width, num_heads=4, num_kv_heads=2, head_dim=width // 4,
                       intermediate_size=2 * width, init_std=0.2, eos_token_id=EOS, pad_token_id=PAD,
                       bos_token_id=1))
  lm = init_params(model, jax.random.PRNGKey(seed))
  model, lm = add_lora(model, lm, LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), jax.random.PRNGKey(seed + 1))
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=2, width=width, feature_size=16, hidden_size=24,
                                             attention_queries=2, init_logvar=-3.0))
  mf = init_encoder(encoder, jax.random.PRNGKey(seed + 2), width)
  return model, encoder, {"lm": lm, "mf": mf}


def make_batch(seed=0, e=E, t=T, b=B, empty_last=True):
  """Random step tensors in the batching layout: prompts left-padded, actions
  right-padded ending in eos, some empty agent slots, parent links."""
  rng = np.random.default_rng(seed)
  p_len = rng.integers(2, P + 1, (e, t, b))
  a_len = rng.integers(1, A, (e, t, b))  # real tokens before eos
  cols_p, cols_a = np.arange(P), np.arange(A)
  prompt_mask = (cols_p >= P - p_len[..., None]).astype(np.int32)
  prompt_ids = np.where(prompt_mask == 1, rng.integers(3, V, (e, t, b, P)), PAD).astype(np.int32)
  action_mask = (cols_a <= a_len[..., None]).astype(np.int32)
  action_ids = np.where(cols_a < a_len[..., None], rng.integers(3, V, (e, t, b, A)), EOS)
  action_ids = np.where(action_mask == 1, action_ids, PAD).astype(np.int32)
  agent_mask = np.ones((e, t, b), bool)
  if empty_last:
    agent_mask[:, -1, -1] = False  # the last step of every event lacks an agent
    for x in (prompt_ids, action_ids):
      x[:, -1, -1] = PAD
    prompt_mask[:, -1, -1] = 0
    action_mask[:, -1, -1] = 0
  idx = np.arange(t * b).reshape(t, b)
  parent = np.where(rng.random((e, t, b)) < 0.5, rng.integers(0, np.maximum(idx, 1)), -1)
  parent = np.where(idx[None] > 0, parent, -1).astype(np.int32)
  return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "action_ids": action_ids,
          "action_mask": action_mask, "agent_mask": agent_mask, "parent": parent}


def with_topic(batch, topic_len: int, seed: int = 0):
  """`batch` with a topic block in front of every prompt (`BatchConfig.topic_len`): `topic_len` tokens, left-padded,
  one per event, the same for all its agents (empty slots included, as `make_step_batch` lays them out)."""
  rng = np.random.default_rng(seed)
  e, t, b = batch["agent_mask"].shape
  n = rng.integers(1, topic_len + 1, (e,))
  mask = (np.arange(topic_len) >= topic_len - n[:, None]).astype(np.int32)
  ids = np.where(mask == 1, rng.integers(3, V, (e, topic_len)), PAD).astype(np.int32)
  spread = lambda x: np.broadcast_to(x[:, None, None], (e, t, b, topic_len))
  return {**batch, "prompt_ids": np.concatenate([spread(ids), batch["prompt_ids"]], -1),
          "prompt_mask": np.concatenate([spread(mask), batch["prompt_mask"]], -1)}


CONTEXT = ContextSpec(header=(5, 6), sep=(7,), eos_id=EOS, k=2, action_len=A)
# the text mean field's layout (summary of S = 3 tokens) over the same vocabulary
TEXT = TextMFSpec(summary_header=(5, 6), writer_header=(8,), actions_header=(10, 11), writer_end=(12,), sep=(7,),
                  eos_id=EOS, pad_id=PAD, summary_len=3, action_len=A, agents=B)


@contextlib.contextmanager
def crash_at_step(step: int):
  """Within: a training stage raises KeyboardInterrupt ("simulated crash") as it asks for the batch
  of step `step` (0-based; a crash after the checkpoint at `step`, if one is due there)."""
  real = ibtune_train.batch_at

  def crashing(*args, **kw):
    if kw["step"] == step:
      raise KeyboardInterrupt("simulated crash")
    return real(*args, **kw)

  ibtune_train.batch_at = crashing
  try:
    yield
  finally:
    ibtune_train.batch_at = real
