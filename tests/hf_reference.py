"""Tiny random Hugging Face checkpoints of each family, written by transformers
itself (the reference implementation for parity tests)."""

import torch
import transformers

# Configs small enough for milliseconds on CPU, large enough to exercise GQA,
# biases, q/k norms, llama3 rope scaling and Mistral's sliding window.
_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=512,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)

FAMILIES = {
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=24,
                                              rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "llama": lambda: transformers.LlamaConfig(**_COMMON, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=6,
                                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
_MODELS = {"qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
           "llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}


def make_checkpoint(family: str, path: str, seed: int = 0, tied: bool = False, **save_kw):
  """Save a random `family` model with transformers to `path`; return it (eval, float32)."""
  torch.manual_seed(seed)
  cfg = FAMILIES[family]()
  cfg.tie_word_embeddings = tied
  model = _MODELS[family](cfg).eval()
  model.save_pretrained(path, **save_kw)
  return model
