"""mfjax against the reference implementation (transformers, PyTorch, CPU)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_reference import FAMILIES, make_checkpoint
from mfjax import sampling
from mfjax.model import hf

TOL = 1e-4  # max abs difference of float32 logits (issue 2)


def _batch(seed=0, B=4, L=12, vocab=128):
  """Random tokens with left padding (rows 1, 2) and right padding (row 3)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (B, L))
  mask = np.ones((B, L), np.int64)
  mask[1, :4] = 0
  mask[2, :L - 2] = 0
  mask[3, -3:] = 0
  tokens[mask == 0] = 0
  return tokens, mask


def left_padded_prompts(seed=0, lengths=(10, 6, 3), vocab=128):
  """Prompts of different lengths, left-padded to the longest (as generation expects)."""
  rng = np.random.default_rng(seed)
  L = max(lengths)
  mask = np.array([[0] * (L - n) + [1] * n for n in lengths], np.int64)
  return np.where(mask == 1, rng.integers(3, vocab, mask.shape), 0), mask


def _torch_logits(model, tokens, mask):
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0) * mask
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.float().numpy()


def _max_diff(a, b, mask):
  return float(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)].max())


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(hf_checkpoints, family, scan_layers):
  path, ref = hf_checkpoints[family]
  model, params = hf.load_pretrained(path, scan_layers=scan_layers)
  tokens, mask = _batch()
  ours = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask))
  assert ours.dtype == jnp.float32 and ours.shape == (4, 12, 128)
  assert _max_diff(ours, _torch_logits(ref, tokens, mask), mask) <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_generate_matches_transformers(hf_checkpoints, family):
  path, ref = hf_checkpoints[family]
  model, params = hf.load_pretrained(path)
  tokens, mask = left_padded_prompts(seed=1)
  with torch.no_grad():
    want = ref.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=20,
                        do_sample=False, eos_token_id=None, pad_token_id=0).numpy()[:, tokens.shape[1]:]
  got = sampling.generate(model, params, tokens, mask, rng=jax.random.PRNGKey(0), max_new_tokens=20,
                          temperature=0.0)
  np.testing.assert_array_equal(np.asarray(got.tokens), want)
  assert bool(np.asarray(got.mask).all())


def test_tied_embeddings_and_sharded_checkpoint(tmp_path):
  ref = make_checkpoint("qwen2", str(tmp_path), seed=3, tied=True, max_shard_size="40KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
  model, params = hf.load_pretrained(str(tmp_path))
  assert model.cfg.tie_word_embeddings and "lm_head" not in params
  tokens, mask = _batch(seed=2)
  assert _max_diff(model.apply({"params": params}, tokens, mask), _torch_logits(ref, tokens, mask), mask) <= TOL


def test_legacy_rope_spelling_loads_the_same(hf_checkpoints, tmp_path):
  """config.json written before transformers 5 (rope_theta + rope_scaling)."""
  path, ref = hf_checkpoints["llama"]
  shutil.copytree(path, tmp_path, dirs_exist_ok=True)
  cfg = json.loads((tmp_path / "config.json").read_text())
  rope = cfg.pop("rope_parameters")
  cfg["rope_theta"] = rope.pop("rope_theta")
  cfg["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  model, params = hf.load_pretrained(str(tmp_path))
  assert model.cfg.rope_scaling.kind == "llama3" and model.cfg.rope_theta == 500000.0
  tokens, mask = _batch(seed=4)
  assert _max_diff(model.apply({"params": params}, tokens, mask), _torch_logits(ref, tokens, mask), mask) <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_pretrained_is_read_by_transformers_and_round_trips(hf_checkpoints, family, tmp_path):
  path, ref = hf_checkpoints[family]
  model, params = hf.load_pretrained(path)
  out = str(tmp_path / "saved")
  hf.save_pretrained(model, params, out)
  # exact round trip
  model2, params2 = hf.load_pretrained(out)
  assert model2.cfg == model.cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
  # transformers reads it and computes the same function
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(reloaded) is type(ref)
  tokens, mask = _batch(seed=5)
  np.testing.assert_array_equal(_torch_logits(reloaded, tokens, mask), _torch_logits(ref, tokens, mask))
  with pytest.raises(FileExistsError):
    hf.save_pretrained(model, params, out)


def test_bfloat16_checkpoint_loads(hf_checkpoints, tmp_path):
  path, ref = hf_checkpoints["qwen3"]
  ref.to(torch.bfloat16).save_pretrained(str(tmp_path))
  ref.float()
  model, params = hf.load_pretrained(str(tmp_path), dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  state = {k: v.float().numpy() for k, v in transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.bfloat16).state_dict().items()}
  emb = np.asarray(params["embedder"]["embedding"], np.float32)
  np.testing.assert_array_equal(emb, state["model.embed_tokens.weight"])
  logits = model.apply({"params": params}, jnp.ones((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def _copy(hf_checkpoints, family, tmp_path):
  shutil.copytree(hf_checkpoints[family][0], tmp_path, dirs_exist_ok=True)
  return tmp_path


def _edit_config(folder, **changes):
  cfg = json.loads((folder / "config.json").read_text())
  cfg.update(changes)
  (folder / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(folder, fn):
  from mfjax.model import safetensors_io
  tensors = {k: np.array(v) for k, v in safetensors_io.read(str(folder / "model.safetensors")).items()}
  fn(tensors)
  safetensors_io.write(str(folder / "model.safetensors"), tensors)


def test_unknown_architecture_is_an_error(hf_checkpoints, tmp_path):
  folder = _copy(hf_checkpoints, "qwen2", tmp_path)
  _edit_config(folder, model_type="gpt2", architectures=["GPT2LMHeadModel"])
  with pytest.raises(hf.CheckpointError, match="model_type='gpt2'"):
    hf.load_pretrained(str(folder))


@pytest.mark.parametrize("change,match", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
])
def test_unsupported_config_option_is_an_error(hf_checkpoints, tmp_path, change, match):
  folder = _copy(hf_checkpoints, "qwen2", tmp_path)
  _edit_config(folder, **change)
  with pytest.raises(hf.CheckpointError, match=match):
    hf.load_pretrained(str(folder))


def test_missing_tensor_is_named(hf_checkpoints, tmp_path):
  folder = _copy(hf_checkpoints, "llama", tmp_path)
  _edit_tensors(folder, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
  with pytest.raises(hf.CheckpointError, match=r"missing tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"):
    hf.load_pretrained(str(folder))


def test_shape_mismatch_is_named(hf_checkpoints, tmp_path):
  folder = _copy(hf_checkpoints, "qwen3", tmp_path)
  _edit_config(folder, intermediate_size=100)  # the tensors say 96
  with pytest.raises(hf.CheckpointError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(96, 64\)"):
    hf.load_pretrained(str(folder))


def test_unexpected_tensor_is_named(hf_checkpoints, tmp_path):
  folder = _copy(hf_checkpoints, "mistral", tmp_path)
  _edit_tensors(folder, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(hf.CheckpointError, match="model.layers.0.mlp.extra.weight"):
    hf.load_pretrained(str(folder))


def test_folder_without_weights_or_config_is_an_error(tmp_path):
  with pytest.raises(hf.CheckpointError, match="no config.json"):
    hf.load_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(FAMILIES["qwen2"]().to_dict()))
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(hf.CheckpointError, match="pytorch_model.bin"):
    hf.load_pretrained(str(tmp_path))
