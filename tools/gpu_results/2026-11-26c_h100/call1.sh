#!/usr/bin/env bash
# session 11 device run: the bf16 train step scanned / unrolled / remat dots_with_no_batch_dims_saveable (profiles),
# float32 train at the size with remat none / dots (mfjax only), heads-major-q simulate A/B, bf16 rollout bench
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"; log=$out/log.txt
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
T0=$SECONDS
step() { local name=$1 limit=$2 file=$3; shift 3; local t0=$SECONDS
  echo "== $name (limit ${limit}s, at $((SECONDS-T0))s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$out/$file" 2>>"$log"; local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$log"
  grep -h '^{' "$out/$file" 2>/dev/null | tail -n 1 | cut -c1-400; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c 'import sys, jax, jaxlib, flax, optax, orbax.checkpoint as ocp, transformers, torch
print(sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax", ocp.__version__, "transformers", transformers.__version__, "torch", torch.__version__)
print("jax devices:", jax.devices(), "torch cuda:", torch.cuda.is_available())' 2>&1; git log -1 --format=%H 2>&1; git status --short 2>&1 | head; } > "$out/env.txt"
cat "$out/env.txt"
rm -rf /tmp/hmq && mkdir /tmp/hmq && cp -r mfjax tools experiments /tmp/hmq/ && (cd /tmp/hmq && patch -p1 < "$OLDPWD/tools/gpu_results/2026-11-26b_h100/heads_major_q.diff") >>"$log" 2>&1 || echo "PATCH FAILED" | tee -a "$log"
P="python3 tools/profile_step.py train --dtype bfloat16 --events 8 --top 500"
step train_scan 70 profile_train_scan.jsonl $P
step train_unroll 70 profile_train_unroll.jsonl $P --unroll-layers
step train_remat 70 profile_train_remat.jsonl $P --remat-policy dots_with_no_batch_dims_saveable
step train_scan_again 60 profile_train_scan_again.jsonl $P --top 5
for pol in none dots_with_no_batch_dims_saveable; do
  step "f32_train_$pol" 80 f32_train.jsonl python3 tools/bench.py train --dtype float32 --mfjax-only --remat-policy $pol
done
S="tools/profile_step.py simulate --dtype bfloat16 --events 64 --runs 1 --top 60"
step sim_base 50 profile_sim_base.jsonl python3 $S
step sim_hmq 50 profile_sim_hmq.jsonl python3 /tmp/hmq/$S
step rollout_bf16 130 rollout_bf16.jsonl python3 tools/bench.py rollout --dtype bfloat16
echo "total $((SECONDS-T0))s"; ls -la "$out"
