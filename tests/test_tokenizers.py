"""Byte-level BPE trained on Chinese Weibo-like text, loaded by AutoTokenizer."""

import os

import pytest
import transformers

from mfjax.data import EOS, PAD, load_tokenizer, train_tokenizer
from mfjax.data.tokenizers import TokenizerError

TEXTS = ["这是谣言吧？[怒]", "转发微博", "真的吗？求真相 [泪]", "太好了[哈哈] 支持！", "是不是PS的？别信谣言",
         "辟谣：官方已经说明了", "心疼[泪][泪]", "//@某用户: 转发"] * 40


def test_trained_tokenizer_round_trips_through_autotokenizer(tmp_path):
  trained = train_tokenizer(TEXTS, 320, str(tmp_path))
  loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert len(loaded) == 320
  assert (loaded.pad_token, loaded.eos_token) == (PAD, EOS)
  assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
  for text in TEXTS[:8] + ["没见过的字：龘 and emoji 🙂"]:
    ids = loaded(text)["input_ids"]
    assert ids == trained(text)["input_ids"]
    assert loaded.decode(ids) == text  # byte-level: nothing is unknown
  # merges learnt something: frequent phrases take fewer tokens than bytes
  assert len(loaded("谣言")["input_ids"]) < len("谣言".encode())


def test_load_tokenizer_pads_on_the_left(tmp_path):
  train_tokenizer(TEXTS, 300, str(tmp_path))
  tok = load_tokenizer(str(tmp_path))
  batch = tok(["转发微博", "真的吗？求真相 [泪]"], padding=True)
  assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1
  assert batch["input_ids"][0][0] == tok.pad_token_id


def test_bad_tokenizer_arguments(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    train_tokenizer(TEXTS, 100, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(str(tmp_path / "nope"))
  # a model folder without tokenizer files: transformers would build an empty tokenizer
  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "config.json").write_text('{"model_type": "qwen2"}')
  with pytest.raises(FileNotFoundError, match="model: no tokenizer files"):
    load_tokenizer(str(tmp_path / "model"))


def test_a_trained_tokenizer_appears_whole_and_a_broken_one_is_an_error_naming_its_folder(tmp_path, monkeypatch):
  moved, replace = [], os.replace
  monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(os.path.basename(b)), replace(a, b)))
  train_tokenizer(TEXTS, 300, str(tmp_path / "tok"))
  # tokenizer.json, what a rerun looks for, comes last: a crash while saving leaves no half tokenizer behind it
  assert len(moved) > 1 and moved[-1] == "tokenizer.json"
  assert sorted(os.listdir(tmp_path / "tok")) == sorted(moved)  # no temporary folder left
  with open(tmp_path / "tok" / "tokenizer.json", "r+") as f:
    f.truncate(100)
  with pytest.raises(TokenizerError, match=f"{tmp_path / 'tok'}: its tokenizer files cannot be read"):
    load_tokenizer(str(tmp_path / "tok"))


def test_token_bytes_are_what_each_token_decodes_to(tmp_path):
  from mfjax.data.tokenizers import token_bytes
  tok = train_tokenizer(TEXTS, 320, str(tmp_path))
  pieces = token_bytes(tok)
  assert len(pieces) == len(tok) and all(pieces[i] is None for i in tok.all_special_ids)
  whole = [i for i, b in enumerate(pieces) if b is not None and b.decode("utf-8", "ignore").encode() == b]
  assert len(whole) > 50  # whole characters and words, beside the lone bytes
  for i in whole:
    assert pieces[i].decode() == tok.decode([i])
  ids = tok("真的吗？求真相 [泪]", add_special_tokens=False)["input_ids"]
  assert b"".join(pieces[i] for i in ids).decode() == "真的吗？求真相 [泪]"


def test_token_bytes_of_a_byte_fallback_sentencepiece_vocabulary():
  from mfjax.data.tokenizers import token_bytes

  class Fallback:  # what token_bytes reads of a Llama-2-style tokenizer
    all_special_ids = [0, 1]
    backend_tokenizer = type("B", (), {"to_str": lambda self: '{"decoder": {"type": "Sequence", "decoders": '
                                                             '[{"type": "ByteFallback"}]}}'})()
    pieces = ["<unk>", "<s>", "<0xE4>", "<0xB8>", "▁真的", "吗"]

    def __len__(self):
      return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
      return [self.pieces[i] for i in ids]

  assert token_bytes(Fallback()) == [None, None, b"\xe4", b"\xb8", " 真的".encode(), "吗".encode()]
