"""Tokenizers: load a model folder's tokenizer, or train a byte-level BPE on
your own texts (e.g. Chinese Weibo comments) for models trained from scratch.

Both return a `transformers` fast tokenizer; a trained one is saved so that
`transformers.AutoTokenizer.from_pretrained(path)` loads it unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mfjax.errors import UserError

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
MIN_VOCAB = 256 + 3  # the byte symbols and the special tokens
# a folder with none of these holds no tokenizer (fast, SentencePiece, BPE or WordPiece files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class TokenizerError(UserError):
  """Tokenizer files that cannot be read; the message names their folder."""


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str, *, min_frequency: int = 2,
                    padding_side: str = "left") -> transformers.PreTrainedTokenizerFast:
  """Train a byte-level BPE (any UTF-8 text round-trips; no unknown tokens)
  with special tokens <|pad|> (id 0), <|bos|> (1), <|eos|> (2), and save it to `path`."""
  if vocab_size < MIN_VOCAB:
    raise ValueError(f"vocab_size must cover the 256 byte symbols and 3 special tokens, got {vocab_size}")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, BOS, EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                              padding_side=padding_side)
  os.makedirs(path, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".saving-", dir=path)  # beside its files: os.replace stays on one filesystem
  fast.save_pretrained(tmp)
  # tokenizer.json last: a folder that has it has the whole tokenizer, even after a crash here (a rerun's test)
  for name in sorted(os.listdir(tmp), key=lambda n: n == "tokenizer.json"):
    os.replace(os.path.join(tmp, name), os.path.join(path, name))
  os.rmdir(tmp)
  return fast


def load_tokenizer(path: str, padding_side: str = "left"):
  """The tokenizer saved in a local folder (a model's, or one from
  `train_tokenizer`), padding on the left as the sampler expects."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
  if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
    # transformers would build an empty tokenizer here, which encodes every text to no tokens
    raise FileNotFoundError(f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
                            "give the folder of the model's tokenizer")
  try:
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  except Exception as e:  # a broken file: JSONDecodeError, or the `tokenizers` library's bare Exception
    raise TokenizerError(f"{path}: its tokenizer files cannot be read ({type(e).__name__}: {e})") from e
  if not tok("a")["input_ids"]:
    raise FileNotFoundError(f"{path}: the tokenizer there encodes text to no tokens (incomplete tokenizer files?)")
  tok.padding_side = padding_side
  if tok.pad_token is None:
    tok.pad_token = tok.eos_token
  return tok


def _byte_level_alphabet() -> dict:
  """The printable character that byte-level BPE writes for each byte (GPT-2's mapping): bytes that
  are printable and not a space stand for themselves, the others for 256 + their rank among them."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  out, extra = {}, 0
  for b in range(256):
    if b in printable:
      out[chr(b)] = b
    else:
      out[chr(256 + extra)] = b
      extra += 1
  return out


def token_bytes(tokenizer) -> list:
  """The bytes each token id stands for (None for special tokens), for byte-level BPE tokenizers
  (trained here, GPT-2, Qwen, Llama 3) and byte-fallback SentencePiece ones (<0xAB> pieces, ▁ for a
  space: Llama 2, Mistral); `mfjax.sampling.ValidUtf8` is built from them."""
  special = set(tokenizer.all_special_ids)
  spec = json.loads(tokenizer.backend_tokenizer.to_str())
  byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
  alphabet = _byte_level_alphabet()
  out = []
  for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
    if i in special or piece is None:
      out.append(None)
    elif byte_level:
      out.append(bytes(alphabet[c] for c in piece) if all(c in alphabet for c in piece) else piece.encode())
    elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
      out.append(bytes([int(piece[3:5], 16)]))
    else:
      out.append(piece.replace("▁", " ").encode())
  return out
