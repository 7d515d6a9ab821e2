#!/usr/bin/env bash
# Accelerator numbers in one run, most important first, each step under its own
# time limit so that one failure or overrun leaves the others' results:
#
#   1. env.txt            the device, driver and package versions
#   2. bench_bf16.jsonl   tools/bench.py all --dtype bfloat16 (the issue's sizes)
#   3. aot.jsonl          tools/aot_memory.py --execute: Qwen2-1.5B + LoRA (experiments/qwen2_lora.py)
#                         on one device, XLA's compiled figure beside the allocator's measured peak
#   4. mfu_big.jsonl      tools/bench.py mfu --dtype bfloat16 at a batch that fills the chip better
#   5. bench_f32.jsonl    tools/bench.py --dtype float32 (full-precision matmuls on both sides):
#                         train right after step 2 (the two frameworks' losses side by side), the rest last
#   log.txt               every step's stderr and exit status
#
#   tools/gpu_bench.sh OUT_DIR
#
# PYTHON chooses the interpreter; BENCH_ARGS adds tools/bench.py flags (e.g. smaller
# sizes to try the script on a CPU); LIMIT_BENCH, LIMIT_F32_TRAIN, LIMIT_AOT, LIMIT_MFU (seconds) the limits.
#
# Results are JSON lines (see tools/bench.py and tools/aot_memory.py for the fields).
set -u
out=${1:?usage: tools/gpu_bench.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the device in the benchmarks: JAX takes half, not its default 75%
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
log="$out/log.txt"

step() {  # step NAME LIMIT_S FILE CMD...
  local name=$1 limit=$2 file=$3
  shift 3
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$out/$file" 2>>"$log"
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$log"
  grep -h '^{' "$out/$file" 2>/dev/null | tail -n 12
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  "$py" -c 'import sys, jax, jaxlib, flax, optax, orbax.checkpoint as ocp, transformers, torch
print(sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "orbax", ocp.__version__, "transformers", transformers.__version__,
      "torch", torch.__version__)
print("jax devices:", jax.devices(), "torch cuda:", torch.cuda.is_available())' 2>&1
} >"$out/env.txt"
cat "$out/env.txt"

step bench_bf16 ${LIMIT_BENCH:-200} bench_bf16.jsonl "$py" tools/bench.py all --dtype bfloat16 ${BENCH_ARGS:-}
step bench_f32_train ${LIMIT_F32_TRAIN:-60} bench_f32.jsonl "$py" tools/bench.py train --dtype float32 ${BENCH_ARGS:-}
# no PyTorch in these two: JAX may take 90% of the device. Events per device as a (1, 4, 2)
# mesh gives each device: 8 / 4 in training, 16 / 4 in rollouts
aot=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "$py" tools/aot_memory.py --config experiments/qwen2_lora.py
     --preset qwen2-1.5b --mesh 1,1,1 --execute)
step aot_train ${LIMIT_AOT:-110} aot.jsonl "${aot[@]}" --what train --events 2
step aot_rollout ${LIMIT_AOT:-110} aot.jsonl "${aot[@]}" --what rollout --rollout-events 4
step mfu_big ${LIMIT_MFU:-90} mfu_big.jsonl "$py" tools/bench.py mfu --dtype bfloat16 --train-events 8 \
  --mfu-events 64 ${BENCH_ARGS:-}
step bench_f32_rollout ${LIMIT_BENCH:-200} bench_f32.jsonl "$py" tools/bench.py rollout --dtype float32 ${BENCH_ARGS:-}
step bench_f32_mfu ${LIMIT_MFU:-90} bench_f32.jsonl "$py" tools/bench.py mfu --dtype float32 ${BENCH_ARGS:-}
