# Call 1 (commit f849895): the four layer forms of the bfloat16 train step and the bfloat16 rollout
# bench, then bench.py mfu with unrolled layers
OUT=$OUT bash tools/gpu_check.sh layers rollout
JAX_COMPILATION_CACHE_DIR=/tmp/mfjax-xla-cache XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 110 \
  python3 tools/bench.py mfu --dtype bfloat16 --train-events 8 --mfu-events 64 --unroll-layers >> $OUT/mfu_unrolled.jsonl
