#!/usr/bin/env bash
# session 10 device run: bf16 profiles with op names (after top-k rounds), MFU, heads-major-q A/B, bf16 rollout bench
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"; log=$out/log.txt
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
T0=$SECONDS
step() { local name=$1 limit=$2 file=$3; shift 3; local t0=$SECONDS
  echo "== $name (limit ${limit}s, at $((SECONDS-T0))s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$out/$file" 2>>"$log"; local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$log"
  grep -h '^{' "$out/$file" 2>/dev/null | tail -n 3 | cut -c1-300; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c 'import sys, jax, jaxlib, flax, optax, orbax.checkpoint as ocp, transformers, torch
print(sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax", ocp.__version__, "transformers", transformers.__version__, "torch", torch.__version__)
print("jax devices:", jax.devices(), "torch cuda:", torch.cuda.is_available())' 2>&1; git log -1 --format=%H 2>&1; } > "$out/env.txt"
cat "$out/env.txt"
rm -rf /tmp/hmq && mkdir /tmp/hmq && cp -r mfjax tools experiments /tmp/hmq/ && (cd /tmp/hmq && patch -p1 < "$OLDPWD/.devrun/hmq.diff") >>"$log" 2>&1 || echo "PATCH FAILED" | tee -a "$log"
step profile_train 80 profile.jsonl python3 tools/profile_step.py train --dtype bfloat16 --events 8 --top 500
step profile_simulate 80 profile.jsonl python3 tools/profile_step.py simulate --dtype bfloat16 --events 64 --runs 1 --top 500
step mfu_bf16 80 mfu.jsonl python3 tools/bench.py mfu --dtype bfloat16 --train-events 8 --mfu-events 64
step hmq_mfu_bf16 80 hmq_mfu.jsonl python3 /tmp/hmq/tools/bench.py mfu --dtype bfloat16 --train-events 8 --mfu-events 64
step hmq_profile_train 60 hmq_profile.jsonl python3 /tmp/hmq/tools/profile_step.py train --dtype bfloat16 --events 8 --top 500
step rollout_bf16 150 bench.jsonl python3 tools/bench.py rollout --dtype bfloat16
echo "total $((SECONDS-T0))s"; ls -la "$out"
