"""Data: events and their loaders, the synthetic world, agent states and
prompts, step batching, interventions, tokenizers, the built-in demo corpus."""

from mfjax.data import synthetic
from mfjax.data.batching import BatchConfig, StepBatch, make_step_batch, step_numbers, step_texts
from mfjax.data.events import (FORMATS, Action, Event, EventFormatError, LoadReport, detect_format, load_events,
                               split_of, write_jsonl)
from mfjax.data.intervention import Intervention, forced_mask, inject
from mfjax.data.prompts import (NUMBER_FEATURES, SHARE_TEXT, UidActivity, action_text, agent_numbers, agent_states,
                                cascade_depths, policy_prompt)
from mfjax.data.tokenizers import BOS, EOS, PAD, load_tokenizer, train_tokenizer

__all__ = [
    "synthetic", "BatchConfig", "StepBatch", "make_step_batch", "step_numbers", "step_texts", "FORMATS", "Action",
    "Event", "EventFormatError", "LoadReport", "detect_format", "load_events", "split_of", "write_jsonl", "SHARE_TEXT",
    "NUMBER_FEATURES", "UidActivity", "action_text", "agent_numbers", "agent_states", "cascade_depths", "policy_prompt",
    "BOS", "EOS", "PAD", "load_tokenizer", "train_tokenizer", "Intervention", "forced_mask", "inject",
]
