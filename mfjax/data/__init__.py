"""Data: tokenizers (events, prompts and batching arrive with the data issue)."""

from mfjax.data.tokenizers import BOS, EOS, PAD, load_tokenizer, train_tokenizer

__all__ = ["BOS", "EOS", "PAD", "load_tokenizer", "train_tokenizer"]
