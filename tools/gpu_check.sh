#!/usr/bin/env bash
# One short accelerator check (run on a lent GPU machine from the repo root):
# versions, the test suite on the GPU, and the generate benchmark. Float32
# matmuls are kept at full precision (no TF32) so that parity tolerances and
# the PyTorch comparison mean the same as on CPU. Writes logs to ${OUT:-/tmp}.
set -uo pipefail
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=highest TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
python3 tools/bench_generate.py --repeats 5 2>&1 | grep '^{' | tee "$OUT/bench_generate.jsonl"
python3 tools/bench_generate.py --repeats 5 --batch 64 --width 1024 --layers 16 2>&1 | grep '^{' | tee -a "$OUT/bench_generate.jsonl"
python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log" | tail -15
