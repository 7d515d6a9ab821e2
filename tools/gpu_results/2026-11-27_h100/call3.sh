# Call 3 (a fresh machine; the working tree of commits 27d54ca and ee64c37): the stacked layers run as a loop
# (--unroll-stacked) against unstacked ones, the new test on the GPU, and Qwen2-1.5B's train-step memory with the
# loop and remat full against the scan
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
s() { local n=$1 l=$2 f=$3; shift 3; local t=$SECONDS; echo "== $n: $*" >>$OUT/log.txt
  timeout $l "$@" >>$OUT/$f 2>>$OUT/log.txt; echo "== $n: rc $? in $((SECONDS-t))s" | tee -a $OUT/log.txt; }
p="python3 tools/profile_step.py train --dtype bfloat16 --events 8 --top 12"
s stacked_loop 90 layers.jsonl $p --unroll-stacked
s unstacked 90 layers.jsonl $p --unroll-layers
s test 100 pytest.log env JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider \
  tests/test_model.py -k "unroll_stacked or scanned_equals_unrolled"
a="env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 python3 tools/aot_memory.py --config experiments/qwen2_lora.py --preset qwen2-1.5b --mesh 1,1,1 --execute --what train --events 2"
s aot_loop 100 aot.jsonl $a --set model.layer_loop=unroll
s aot_scan 100 aot.jsonl $a --set model.layer_loop=scan
grep -h '"what"' $OUT/layers.jsonl | cut -c1-400; tail -3 $OUT/pytest.log; cat $OUT/aot.jsonl
