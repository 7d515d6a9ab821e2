"""The foundation's end-to-end job: outputs, resume after a crash, bad input."""

import json
import os
import re

import jax
import numpy as np
import pytest

from mf_setup import crash_at_step
from mfjax import configs, lm_demo, workdir
from mfjax.__main__ import main
from mfjax.data import train_tokenizer
from mfjax.model import ModelConfig, hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "experiments", "lm_demo.py") + ":smoke"
OVERRIDES = ["train.steps=40", "train.ckpt_every=20", "train.log_every=10"]


def test_run_writes_everything_and_crash_resume_is_exact(tmp_path):
  cfg = configs.load_config(SMOKE, OVERRIDES)
  full = lm_demo.run(cfg, str(tmp_path / "full"))
  for name in ("config.json", "metrics.jsonl", "results.json", "samples.jsonl", "plots/loss.png",
               "plots/doubt_rate.png", "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
    assert os.path.exists(tmp_path / "full" / name), name
  assert full["steps"] == 40 and np.isfinite(full["final_loss"])
  assert len(full["doubt_rate"]) == 6
  lines = [json.loads(x) for x in open(tmp_path / "full" / "metrics.jsonl")]
  assert [x["step"] for x in lines] == [10, 20, 30, 40]

  # crash at step 30 (after the step-20 checkpoint), then rerun the same command
  with crash_at_step(30), pytest.raises(KeyboardInterrupt):
    lm_demo.run(cfg, str(tmp_path / "crash"))
  assert not os.path.exists(tmp_path / "crash" / "results.json")
  resumed = lm_demo.run(cfg, str(tmp_path / "crash"))
  assert resumed["steps"] == 40
  _, p_full = hf.load_pretrained(str(tmp_path / "full" / "model"))
  _, p_resumed = hf.load_pretrained(str(tmp_path / "crash" / "model"))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p_full, p_resumed)
  assert resumed["doubt_rate"] == full["doubt_rate"]
  # step 30 was logged before the crash and again after the resume from 20: its log has it once
  assert [json.loads(x) for x in open(tmp_path / "crash" / "metrics.jsonl")] == lines


def test_generate_samples_from_an_exported_folder_and_refuses_one_without_a_tokenizer(tmp_path, capsys):
  """The demo's export (weights, config and tokenizer in one folder) is what `generate`
  reads. transformers loads that tokenizer as Qwen2's class, with one added token past
  the model's vocabulary that text never produces: it must still be accepted. Weights
  without a tokenizer are refused (transformers would build an empty tokenizer)."""
  cfg = configs.load_config(SMOKE, ["train.steps=21", "train.ckpt_every=21", "train.log_every=21",
                                    "sample.n_per_topic=2"])
  lm_demo.run(cfg, str(tmp_path / "demo"))
  capsys.readouterr()
  prompts = ["某地发生地震", "网传明天停课"]
  main(["generate", "--model", str(tmp_path / "demo" / "model"), "--max-new-tokens", "4",
        *[x for p in prompts for x in ("--prompt", p)]])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and all(line.startswith(p) for line, p in zip(lines, prompts))
  model, params = hf.load_pretrained(str(tmp_path / "demo" / "model"))
  hf.save_pretrained(model, params, str(tmp_path / "weights_only"))
  with pytest.raises(SystemExit, match="weights_only: no tokenizer files"):
    main(["generate", "--model", str(tmp_path / "weights_only"), "--prompt", "x"])


def test_workdir_of_another_config_is_refused(tmp_path):
  workdir.check_workdir(str(tmp_path), configs.load_config(SMOKE, OVERRIDES))
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(workdir.WorkdirError, match=r"different config \(keys \['train.steps'\]\)"):
    workdir.check_workdir(str(tmp_path), configs.load_config(SMOKE, OVERRIDES + ["train.steps=41"]))
  assert (tmp_path / "config.json").read_text() == before


def test_config_overrides_and_errors():
  cfg = configs.load_config(SMOKE, ["train.lr=1", "model.family=llama", "sample.top_p=0.9"])
  assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.model.family == "llama"
  with pytest.raises(configs.ConfigError, match=r"unknown config key 'train.stepz'; did you mean \['train.steps'"):
    configs.load_config(SMOKE, ["train.stepz=3"])
  with pytest.raises(configs.ConfigError, match="not of the form key=value"):
    configs.load_config(SMOKE, ["train.steps"])
  with pytest.raises(configs.ConfigError, match="cannot set"):
    configs.load_config(SMOKE, ["train.steps=abc"])
  for raw, want in (("false", False), ("TRUE", True), ("False", False)):  # shell-style or Python booleans
    assert configs.load_config(SMOKE, [f"model.tie_word_embeddings={raw}"]).model.tie_word_embeddings is want
  with pytest.raises(configs.ConfigError, match="cannot set"):
    configs.load_config(SMOKE, ["model.tie_word_embeddings=yes"])
  # a text field takes the text as written, even where it reads as a Python literal (a tuple, a number)
  for raw in ("qwen2,llama", "2024", "1e-3"):
    assert configs.load_config(SMOKE, [f"model.family={raw}"]).model.family == raw
  with pytest.raises(configs.ConfigError, match="does not exist"):
    configs.load_config("experiments/nope.py")
  with pytest.raises(configs.ConfigError, match=r"lm_demo.py:smok: unknown argument 'smok' for lm_demo"):
    configs.load_config(SMOKE[:-1])


def test_a_users_config_file_in_ml_collections_style_or_broken(tmp_path):
  plain = tmp_path / "plain.py"  # ml_collections' own form: get_config() without an argument
  plain.write_text("import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict({'a': 1})\n")
  assert configs.load_config(str(plain), ["a=2"]).a == 2
  with pytest.raises(configs.ConfigError, match="plain.py:x: .*get_config\\(\\) takes no argument"):
    configs.load_config(f"{plain}:x")
  broken = tmp_path / "broken.py"
  broken.write_text("import ml_collections\n\ndef get_config(:\n")
  with pytest.raises(configs.ConfigError, match="broken.py:3: "):
    configs.load_config(str(broken))
  (tmp_path / "none.py").write_text("x = 1\n")
  with pytest.raises(configs.ConfigError, match="none.py has no get_config"):
    configs.load_config(str(tmp_path / "none.py"))


def test_the_demos_own_configs_pass_the_check():
  lm_demo.check_config(configs.load_config(SMOKE[:-len(":smoke")], []))
  lm_demo.check_config(configs.load_config(SMOKE, []))


@pytest.mark.parametrize("override,message", [
    ("train.steps=10", r"train.steps: must exceed train.warmup=20"),
    ("train.lr=0.0", "train.lr: must be > 0"),
    ("model.num_heads=0", "model.num_heads: must be >= 1"),
    ("model.num_heads=3", "model: num_heads=3 is not a multiple of num_kv_heads=2"),
    ("model.family=gpt", "model: family 'gpt' is not supported"),
    ("sample.top_p=2.0", r"sample.top_p: must be in \(0, 1\]"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size: must be >= 259"),
])
def test_bad_values_are_errors_naming_the_key_before_anything_is_written(tmp_path, override, message):
  with pytest.raises(SystemExit, match="error: " + message):
    main(["lm-demo", "--config", SMOKE, "--workdir", str(tmp_path / "w"), "--set", override])
  assert not os.path.exists(tmp_path / "w")


def test_texts_longer_than_max_len_are_an_error_naming_the_key(tmp_path):
  """Found only once the tokenizer has read the corpus: the error names the key and the length needed."""
  with pytest.raises(SystemExit, match=r"error: data.max_len: \d+ of \d+ sequences are longer than 8 tokens "
                                       r"\(the longest has \d+\); raise it"):
    main(["lm-demo", "--config", SMOKE, "--workdir", str(tmp_path / "w"), "--set", "data.max_len=8"])
  assert not os.path.exists(tmp_path / "w")  # so that the corrected command runs there
  os.makedirs(tmp_path / "kept")  # a folder the user made (or an earlier run's) is left as it is
  (tmp_path / "kept" / "notes.txt").write_text("mine")
  with pytest.raises(SystemExit, match="data.max_len"):
    main(["lm-demo", "--config", SMOKE, "--workdir", str(tmp_path / "kept"), "--set", "data.max_len=8"])
  assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
  with pytest.raises(SystemExit, match="unknown config key 'train.stepz'"):
    main(["lm-demo", "--config", SMOKE, "--workdir", str(tmp_path), "--set", "train.stepz=1"])
  with pytest.raises(SystemExit, match="no config.json"):
    main(["generate", "--model", str(tmp_path), "--prompt", "x"])
  model = tmp_path / "model"  # a model folder whose weights file was cut short
  model.mkdir()
  tiny = ModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                     intermediate_size=64)
  (model / "config.json").write_text(json.dumps(hf.config_to_hf(tiny, "float32")))
  train_tokenizer(["转发微博，别信谣言"] * 20, 300, str(model))
  (model / "model.safetensors").write_bytes(b"\x10")
  with pytest.raises(SystemExit, match="model.safetensors: too short to be a safetensors file"):
    main(["generate", "--model", str(model), "--prompt", "x"])
  with pytest.raises(SystemExit) as e:
    main(["lm-demo", "--help"])
  assert e.value.code == 0 and "--workdir" in capsys.readouterr().out


def test_ctrl_c_ends_the_cli_with_a_line_saying_how_to_resume(tmp_path, monkeypatch, capsys):
  def interrupted(cfg, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(lm_demo, "run", interrupted)
  with pytest.raises(SystemExit) as e:
    main(["lm-demo", "--config", SMOKE, "--workdir", str(tmp_path)])
  assert e.value.code == 130  # as a shell reports Ctrl-C
  assert "interrupted: the same command resumes from the last checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,message", [
    ("--dtype", "float33", "invalid choice: 'float33'"), ("--max-new-tokens", "0", "must be at least 1, got 0"),
    ("--top-p", "0", r"must be in \(0, 1\], got 0"), ("--temperature", "-1", "must be at least 0, got -1"),
    ("--temperature", "nan", "must be at least 0, got nan"), ("--top-k", "x", "'x' is not an integer")])
def test_generate_refuses_bad_sampling_flags_before_reading_the_model(tmp_path, capsys, flag, value, message):
  with pytest.raises(SystemExit) as e:  # the model folder does not exist: the flag is checked first
    main(["generate", "--model", str(tmp_path / "none"), "--prompt", "x", flag, value])
  assert e.value.code == 2
  assert re.search(f"argument {flag}: {message}", capsys.readouterr().err)
