"""The decoder LM family (Qwen2/Qwen3/Llama/Mistral), LoRA and HF checkpoints."""

from mfjax.model.config import (FAMILIES, LORA_TARGETS, PRESETS, LoraConfig, ModelConfig, RopeScaling,
                                llama3_8b, qwen2_1_5b, qwen2_5_7b, scratch, tiny)
from mfjax.model.transformer import (Decoder, KVCache, count_params, init_params, param_specs,
                                     positions_from_mask, prompt_queries_from, shared_extend, stack_layers, unrolled,
                                     unstack_layers)

__all__ = [
    "FAMILIES", "LORA_TARGETS", "PRESETS", "LoraConfig", "ModelConfig", "RopeScaling", "llama3_8b",
    "qwen2_1_5b", "qwen2_5_7b", "scratch", "tiny", "Decoder", "KVCache", "count_params", "init_params", "param_specs",
    "positions_from_mask", "prompt_queries_from", "shared_extend", "stack_layers", "unrolled", "unstack_layers",
]
