"""Shared fixtures: 8 forced CPU devices, tiny HF reference checkpoints written by
transformers, the real CED data."""

import os
import sys

# Set before JAX starts, and passed on to the tests' subprocesses through the environment:
# - Sharding tests need several devices: 8 CPU devices (single-device code runs on the
#   first and is unaffected).
# - Compiling dominates the suite's time on CPU (hundreds of small programs, each run a
#   few times), so XLA:CPU compiles with LLVM at -O0 and its older fusion emitters: the
#   same programs, generated faster. The two together cut one train-step test from 63 s
#   to 25 s. MFJAX_TEST_XLA_DEFAULTS=1 runs the suite with XLA's own settings, as users'
#   runs have them (tools/gpu_check.sh does on a GPU).
DEVICES = "--xla_force_host_platform_device_count=8"
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_flags = os.environ.get("XLA_FLAGS", "").split()
for _flag in (DEVICES,) + (() if os.environ.get("MFJAX_TEST_XLA_DEFAULTS") else FAST_COMPILE):
  if _flag.split("=")[0] not in " ".join(_flags):
    _flags.append(_flag)
os.environ["XLA_FLAGS"] = " ".join(_flags)

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

from hf_reference import FAMILIES, make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """{family: (path, torch model)} for every supported family, made once."""
  out = {}
  for family in FAMILIES:
    path = str(tmp_path_factory.mktemp(f"hf_{family}"))
    out[family] = (path, make_checkpoint(family, path))
  return out


TEST_CACHE_ENV = "MFJAX_TEST_XLA_CACHE"
LABELER_CACHE_ENV = "MFJAX_LABELER_CACHE"  # mfjax.evaluation.fit_cache


def pytest_configure(config):
  # Tests compile many small, identical XLA programs from different closures;
  # a per-run persistent cache lets them share compiled executables. The first
  # process makes it; pytest-xdist's workers inherit its path through the
  # environment and share it. A size limit turns on JAX's file lock, so that no
  # worker reads an entry that another is still writing.
  import tempfile

  import jax
  if TEST_CACHE_ENV not in os.environ:
    os.environ[TEST_CACHE_ENV] = config.mfjax_cache = tempfile.mkdtemp(prefix="mfjax-xla-cache-")
    # the fitted labelers likewise (mfjax.evaluation.fit_cache): one fit per run, never the user's folder
    os.environ[LABELER_CACHE_ENV] = config.mfjax_labelers = tempfile.mkdtemp(prefix="mfjax-labeler-cache-")
  jax.config.update("jax_compilation_cache_dir", os.environ[TEST_CACHE_ENV])
  jax.config.update("jax_compilation_cache_max_size", 4 << 30)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  """The process that made the run's cache removes it."""
  import shutil
  if getattr(config, "mfjax_cache", None):
    for folder in (config.mfjax_cache, config.mfjax_labelers):
      shutil.rmtree(folder, ignore_errors=True)
    del os.environ[TEST_CACHE_ENV], os.environ[LABELER_CACHE_ENV]


CED_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ced"))


@pytest.fixture(scope="session")
def ced_dir():
  """../shared/data/ced beside the checkout. Absent: skip, unless
  MFJAX_REQUIRE_DATA is set (CI), where its absence is a failure."""
  if not os.path.exists(os.path.join(CED_DIR, "val.jsonl.gz")):
    msg = f"real CED data not found at {CED_DIR} (get it with: python tools/download_data.py)"
    if os.environ.get("MFJAX_REQUIRE_DATA"):
      pytest.fail(msg + "; MFJAX_REQUIRE_DATA is set, so this is an error")
    pytest.skip(msg)
  return CED_DIR
