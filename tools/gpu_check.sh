#!/usr/bin/env bash
# One short accelerator check (run on a lent GPU machine from the repo root):
# versions, the test suite on the GPU, and the generate benchmark. Float32
# matmuls are kept at full precision (no TF32) so that parity tolerances and
# the PyTorch comparison mean the same as on CPU, and XLA's GPU reductions are
# made deterministic so that a resumed run is bit-identical (as on CPU).
# `tools/gpu_check.sh tests` runs the tests only. Writes logs to ${OUT:-/tmp}.
set -uo pipefail
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=highest TRANSFORMERS_VERBOSITY=error
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
if [ "${1:-}" != tests ]; then
python3 tools/bench_generate.py --repeats 5 2>&1 | grep '^{' | tee "$OUT/bench_generate.jsonl"
python3 tools/bench_generate.py --repeats 5 --batch 64 --width 1024 --layers 16 2>&1 | grep '^{' | tee -a "$OUT/bench_generate.jsonl"
fi
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log" | tail -15
