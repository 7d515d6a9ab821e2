#!/usr/bin/env bash
# session 11 device run 2: the unrolled bf16 train profile again (its file did not come back), and float32 train
# (the size, full precision) with remat none / dots_with_no_batch_dims_saveable, profiled
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"; log=$out/log.txt
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
T0=$SECONDS
step() { local name=$1 limit=$2 file=$3; shift 3; local t0=$SECONDS
  echo "== $name (limit ${limit}s, at $((SECONDS-T0))s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$out/$file" 2>>"$log"; local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$log"
  head -n 1 "$out/$file" 2>/dev/null | cut -c1-700; }
git log -1 --format=%H > "$out/env.txt"
step train_unroll 65 profile_train_unroll.jsonl python3 tools/profile_step.py train --dtype bfloat16 --events 8 --top 300 --unroll-layers
for pol in none dots_with_no_batch_dims_saveable; do
  step "f32_train_$pol" 70 "profile_f32_train_$pol.jsonl" env JAX_DEFAULT_MATMUL_PRECISION=highest python3 tools/profile_step.py train --dtype float32 --top 300 --remat-policy $pol
done
echo "total $((SECONDS-T0))s"
