"""mfjax.runs: where the CLI keeps compiled programs between runs."""

import os

import jax
import pytest

from mfjax.runs import COMPILE_CACHE_ENV, COMPILE_CACHE_MAX_BYTES, use_compile_cache


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
