"""mfjax.runs and mfjax.workdir: where the CLI keeps compiled programs between runs, a
run folder's own files read back after a crash or a hand edit, and its rollout files."""

import json
import os
import re

import jax
import ml_collections
import numpy as np
import pytest

from mfjax.runs import (COMPILE_CACHE_ENV, COMPILE_CACHE_MAX_BYTES, RunFolderError, read_json, read_jsonl, resume_jsonl,
                        use_compile_cache)
from mfjax import workdir
from mfjax.workdir import WorkdirError, check_workdir


@pytest.fixture
def jax_cache_config():
  """The session's cache settings (conftest sets a per-run directory), restored after the test."""
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
  yield saved
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_compilation_cache_max_size", saved[1])


def test_compile_cache_goes_where_mfjax_compile_cache_says(monkeypatch, tmp_path, jax_cache_config):
  monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "xla"))
  jax.config.update("jax_compilation_cache_max_size", -1)
  assert use_compile_cache() == str(tmp_path / "xla")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  assert jax.config.jax_compilation_cache_max_size == COMPILE_CACHE_MAX_BYTES  # bounded, not -1


def test_compile_cache_keeps_a_directory_already_set_and_can_be_turned_off(monkeypatch, jax_cache_config):
  session_dir = jax_cache_config[0]
  assert session_dir  # tests run with a per-run cache (conftest)
  monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
  assert use_compile_cache() == session_dir and jax.config.jax_compilation_cache_dir == session_dir
  for off in ("off", "", "0"):
    monkeypatch.setenv(COMPILE_CACHE_ENV, off)
    assert use_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir == session_dir  # left as it was


def test_compile_cache_default_is_under_the_users_cache_folder(monkeypatch, tmp_path, jax_cache_config):
  monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  jax.config.update("jax_compilation_cache_dir", None)
  assert use_compile_cache() == os.path.join(str(tmp_path), ".cache", "mfjax", "xla")


def test_resume_jsonl_keeps_the_rows_up_to_the_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  resume_jsonl(str(path), 3)  # no log yet: nothing to do, nothing made
  assert not path.exists()
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4, 5)))
  resume_jsonl(str(path), 3)
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
  resume_jsonl(str(path), 0)  # no checkpoint yet: a rerun starts the log again
  assert path.read_text() == ""


def test_resume_jsonl_drops_a_last_line_cut_short_and_names_any_other_bad_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s}) + "\n" for s in (1, 2)]
  path.write_text("".join(rows) + '{"step": 3, "lo')  # the crash cut the third write
  resume_jsonl(str(path), 2)
  assert path.read_text() == "".join(rows)
  stamp = os.stat(path).st_mtime_ns
  resume_jsonl(str(path), 2)  # nothing to drop: the file is not written (another run may read it)
  assert os.stat(path).st_mtime_ns == stamp
  path.write_text(rows[0] + "{bad\n" + rows[1])
  with pytest.raises(RunFolderError, match=f"{path}:2: not valid JSON"):
    resume_jsonl(str(path), 2)
  path.write_text("".join(rows) + "{bad\n")  # a whole line (it ends the write): not a cut, an edit
  with pytest.raises(RunFolderError, match=f"{path}:3: not valid JSON"):
    resume_jsonl(str(path), 2)


def test_read_jsonl_reads_a_log_as_resume_jsonl_does(tmp_path):
  """What evaluate, the plots and the LM demo read: a cut last line is left out, a bad line named."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
  assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2, "loss": 0.5}]
  path.write_text('{"step": 1}\n{bad\n{"step": 2}\n')
  with pytest.raises(RunFolderError, match=f"{path}:2: not valid JSON"):
    read_jsonl(str(path))


def test_read_json_names_the_file_and_line(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{"a": 1}')
  assert read_json(str(path)) == {"a": 1}
  path.write_text('{"a": 1,\n "b": }')
  with pytest.raises(RunFolderError, match=f"{path}:2: not valid JSON"):
    read_json(str(path))


def test_every_value_error_mfjax_defines_is_a_user_error():
  """The CLI and the tools catch `BAD_INPUT`: an error class added later as a plain ValueError
  would reach users as a traceback."""
  import importlib
  import inspect
  import pkgutil

  import mfjax
  from mfjax.errors import UserError
  found = {}
  for info in pkgutil.walk_packages(mfjax.__path__, "mfjax."):
    if info.name == "mfjax.__main__":
      continue
    module = importlib.import_module(info.name)
    for name, obj in vars(module).items():
      if inspect.isclass(obj) and issubclass(obj, ValueError) and obj.__module__ == info.name:
        found[f"{info.name}.{name}"] = obj
  assert {"mfjax.configs.ConfigError", "mfjax.data.events.EventFormatError", "mfjax.runs.RunFolderError",
          "mfjax.model.hf.CheckpointError"} < set(found)
  assert [n for n, c in found.items() if not issubclass(c, UserError)] == []


def test_one_line_errors_turns_bad_input_into_one_line_and_lets_bugs_through(tmp_path):
  from mfjax.errors import one_line_errors
  with pytest.raises(SystemExit, match=r"^error: .*config.json:1: not valid JSON"):
    (tmp_path / "config.json").write_text("{")
    with one_line_errors():
      read_json(str(tmp_path / "config.json"))
  with pytest.raises(SystemExit, match=r"^error: .*No such file.*nope"):
    with one_line_errors():
      open(tmp_path / "nope")
  with pytest.raises(ValueError, match="a bug"):  # not the user's to fix: the traceback stays
    with one_line_errors():
      raise ValueError("a bug")


def test_a_refused_workdir_is_one_error_line(tmp_path):
  """runs raises WorkdirError (no "error: " of its own); the CLI's one_line_errors adds it once."""
  from mfjax.errors import one_line_errors
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(WorkdirError, match=r"^the workdir .*a_file is a file, not a folder; use another --workdir$"):
    check_workdir(str(tmp_path / "a_file"), ml_collections.ConfigDict())
  with pytest.raises(SystemExit) as e:
    with one_line_errors():
      check_workdir(str(tmp_path / "a_file"), ml_collections.ConfigDict())
  assert e.value.code == f"error: the workdir {tmp_path / 'a_file'} is a file, not a folder; use another --workdir"


def test_checked_flags_name_the_flag_and_the_range(capsys):
  import argparse

  from mfjax.errors import checked
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=checked(int, lambda v: v >= 1, "at least 1"))
  ap.add_argument("--p", type=checked(float, lambda v: 0 < v <= 1, "in (0, 1]"))
  assert ap.parse_args(["--n", "3", "--p", "1"]).n == 3
  for argv, message in ((["--n", "0"], "argument --n: must be at least 1, got 0"),
                        (["--n", "1.5"], "argument --n: '1.5' is not an integer"),
                        (["--p", "x"], "argument --p: 'x' is not a number"),
                        (["--p", "nan"], r"argument --p: must be in \(0, 1\], got nan")):
    with pytest.raises(SystemExit):
      ap.parse_args(argv)
    assert re.search(message, capsys.readouterr().err), argv


def test_a_rollout_is_saved_whole_under_its_key_list(tmp_path):
  """workdir.save_rollout writes ROLLOUT_ARRAYS (+ the text mean field's) atomically where load_rollout
  reads them; an array outside the key list, or one missing, is refused before anything is written."""
  arrays = {k: np.full((2, 3), i, np.float32) for i, k in enumerate(workdir.ROLLOUT_ARRAYS)}
  workdir.save_rollout(str(tmp_path), "mf", 2, arrays)
  got = workdir.load_rollout(str(tmp_path), "mf", 2)
  assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
  assert os.listdir(tmp_path / workdir.ROLLOUTS_DIR) == ["mf_seed2.npz"]  # no temporary file left
  for bad in ({**arrays, "extra": arrays["mask"]}, {k: v for k, v in arrays.items() if k != "mf_kl"}):
    with pytest.raises(ValueError, match="a rollout holds"):
      workdir.save_rollout(str(tmp_path), "state", 0, bad)
  assert not os.path.exists(workdir.rollout_path(str(tmp_path), "state", 0))


def test_a_run_folder_from_before_a_config_key_was_added_reads_as_its_old_value(tmp_path):
  from mfjax import configs
  quick = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "quickstart.py")
  before = [f"{k}={v}" for k, v in workdir.ADDED_KEYS.items()]  # the quickstart as it was before them
  cfg = configs.load_config(quick, before)
  old = json.loads(cfg.to_json())
  for key in workdir.ADDED_KEYS:  # a config.json written before these keys existed
    *parents, leaf = key.split(".")
    node = old
    for p in parents:
      node = node[p]
    del node[leaf]
  wd = tmp_path / "old"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps(old))
  check_workdir(str(wd), cfg)  # the same run: it resumes
  assert workdir.saved_config(str(wd / "config.json")) == json.loads(cfg.to_json())
  with pytest.raises(WorkdirError, match=r"keys \['ib.population_weight'\]"):
    check_workdir(str(wd), configs.load_config(quick, before + ["ib.population_weight=1.0"]))
  with pytest.raises(WorkdirError, match=r"keys \['ib.population_weight', 'mf.attributes', 'mf.category_features'\]"):
    check_workdir(str(wd), configs.load_config(quick))  # today's quickstart is another run
  # and its trained stages may be read by a run of the same config
  workdir.check_trained_from(str(wd), str(tmp_path / "new"), cfg, ())


def test_another_commands_config_gains_no_added_key(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"train": {"steps": 3}, "model": {"width": 8}}))  # e.g. the LM demo's
  assert workdir.saved_config(str(path)) == {"train": {"steps": 3}, "model": {"width": 8}}
  assert workdir.saved_config(str(path), like={"train": {"steps": 4}}) == {"train": {"steps": 3}, "model": {"width": 8}}


def test_every_config_key_is_an_old_one_or_added_with_its_old_value():
  """A key added to the pipeline's config without an ADDED_KEYS entry makes every earlier run folder read as
  another run (--trained-from and resuming refuse it): each key is one a run folder always had or in ADDED_KEYS."""
  from mfjax.pipeline_config import mf_llm_config
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config_keys_before_added.txt")
  with open(path, encoding="utf-8") as f:
    old = {line.strip() for line in f if line.strip() and not line.startswith("#")}
  keys = set(workdir._flat(json.loads(mf_llm_config().to_json())))
  assert keys - old - set(workdir.ADDED_KEYS) == set(), "add these keys to mfjax.workdir.ADDED_KEYS with their old value"
  assert old <= keys  # a key removed from the config is removed from the file too
