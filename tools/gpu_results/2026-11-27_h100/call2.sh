# Call 2 (same warm machine, commit f849895): bench.py train in bfloat16 at the size, unrolled against
# the reference, then scanned alone
export JAX_COMPILATION_CACHE_DIR=/tmp/mfjax-xla-cache XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
timeout 120 python3 tools/bench.py train --dtype bfloat16 --unroll-layers >> $OUT/train_bf16.jsonl
timeout 90 python3 tools/bench.py train --dtype bfloat16 --mfjax-only >> $OUT/train_bf16.jsonl
