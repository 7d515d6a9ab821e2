#!/usr/bin/env bash
# An accelerator's numbers and checks in one run (from the repo root of a machine
# with a GPU), most important first, each step under its own time limit so that
# one failure or overrun leaves the others' results:
#
#   tools/gpu_check.sh [STEP...]      STEP: profile mfu topk layers rollout bench aot generate tests meshes shared
#                                     (default: all but rollout, which bench includes, meshes and shared, in this
#                                     order)
#
# Times of each step on one H100 (most of it compiling): profile 70-90 s, mfu 62-80 s,
# topk 30 s (its first version), layers 27-61 s a variant (156 s for four), rollout
# (bench's bfloat16 rollout) 115-117 s, float32 train 125 s and float32 mfu 200 s (a float32 train
# step alone at full precision did not compile within 70-80 s); aot's Qwen2-1.5B train step with
# the layers looped (model.layer_loop=unroll) did not finish within 100 s. The whole default run
# takes longer than a 15-minute device lease, so name the steps a run needs.
#
#   env.txt            the device, driver and package versions (always)
#   profile.jsonl      profile:  tools/profile_step.py train and simulate in bfloat16 at the mfu step's sizes:
#                                the GPU kernels' time per XLA op (where bfloat16 MFU is lost)
#   mfu.jsonl          mfu:      tools/bench.py mfu --dtype bfloat16 at a batch that fills the chip better
#   topk.jsonl         topk:     tools/bench_top_k.py: the sampler's top-k against the other ways to take it
#   layers.jsonl       layers:   the bfloat16 train step's profile (the profile step's size) five ways, in one
#                                process each: scanned layers, --unroll-stacked (a loop over the stacked weights'
#                                slices: a GPU run's default, model.layer_loop=auto), --unroll-layers (unstacked
#                                weights), --remat-policy dots_with_no_batch_dims_saveable (attention recomputed,
#                                not saved), and the loop with it: compare their op_ms_per_run (kernel time)
#   rollout.jsonl      rollout:  tools/bench.py rollout --dtype bfloat16 alone (bench's first part, 115 s on an
#                                H100), for a lease too short for the whole bench step
#   bench.jsonl        bench:    tools/bench.py all --dtype bfloat16 (the issue's sizes), then
#                                tools/bench.py train, mfu and rollout --dtype float32 (full-precision
#                                matmuls on both sides), one process each
#   aot.jsonl          aot:      tools/aot_memory.py --execute: Qwen2-1.5B + LoRA (experiments/qwen2_lora.py)
#                                on one device, XLA's compiled figure beside the allocator's measured peak; then
#                                its train step with the layers looped (model.layer_loop=unroll) and remat full
#   generate.jsonl     generate: tools/bench_generate.py at the issue's size and at a larger one
#   pytest.log         tests:    the test suite on the GPU
#   shared.jsonl       shared:   tools/bench.py shared --topic 96 --dtype bfloat16: a 96-token topic computed once
#                                per step and for every agent, the same prompts, one process (issue 36), at the
#                                bench's size, then at Qwen2-1.5B's width, depth and vocabulary (bench.py's Qwen2:
#                                24 heads of 64, 6 kv heads, MLP 3x the width, where the real one has 12 of 128,
#                                2 and 8960); LIMIT_SHARED (default 300 s) each
#   meshes.jsonl       meshes:   on a host with several GPUs only: tools/aot_memory.py --sweep (all of them)
#                                --execute --repeats 3 for Qwen2-1.5B + LoRA: every (data, fsdp, tensor) mesh's
#                                measured peak, step time and collective traffic (docs/scale.md, "Which mesh")
#   log.txt            every step's stderr and exit status
#
# OUT (default /tmp/gpu_check, a folder outside the repository) is where the raw files go; PYTHON chooses the interpreter;
# BENCH_ARGS adds tools/bench.py flags (e.g. smaller sizes to try the script on a CPU), PROFILE_ARGS
# tools/profile_step.py flags;
# LIMIT_BENCH (each bench process; the float32 ones get 1.5x it), LIMIT_AOT, LIMIT_MFU, LIMIT_PROFILE, LIMIT_TOPK,
# LIMIT_GENERATE, LIMIT_TESTS, LIMIT_MESHES (seconds) the limits.
#
# Float32 matmuls run at full precision (no TF32) in the float32 bench, generate and
# tests, so that parity tolerances and the PyTorch comparison mean the same as on
# CPU; the tests also make XLA's GPU reductions deterministic, so that a resumed run
# is bit-identical (as on CPU), and keep XLA's own compile settings
# (MFJAX_TEST_XLA_DEFAULTS=1; on CPU the suite compiles at -O0 to save time). They run
# in one process (-n 0): each pytest-xdist worker would claim its own share of the GPU.
set -u
out=$(realpath -m "${OUT:-/tmp/gpu_check}")
cd "$(dirname "$0")/.."
case "$out/" in  # raw output stays out of the source tree: a measured table goes to docs/benchmarks.md
  "$(pwd -P)"/*) echo "error: OUT=$out is inside the repository; give a folder outside it" >&2; exit 2 ;;
esac
mkdir -p "$out"
py=${PYTHON:-python3}
steps=${*:-profile mfu topk layers bench aot generate tests}
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
# Compiled programs (and the GPU autotuning) kept on the machine's disk, so that a second call on
# the same warm machine skips the compiles that take most of each step's time
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/mfjax-xla-cache}
# JAX and PyTorch share the device in the benchmarks: JAX takes half, not its default 75%
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
log="$out/log.txt"
bench_args=${BENCH_ARGS:-}
profile_args=${PROFILE_ARGS:-}

step() {  # step NAME LIMIT_S FILE CMD...: run CMD, stdout appended to FILE, stderr to log.txt
  local name=$1 limit=$2 file=$3
  shift 3
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$out/$file" 2>>"$log"
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$log"
  grep -h '^{' "$out/$file" 2>/dev/null | tail -n 12
}

for s in $steps; do
  case $s in
    bench | aot | mfu | profile | topk | layers | rollout | generate | tests | meshes | shared) ;;
    *) echo "unknown step $s (profile mfu topk layers rollout bench aot generate tests meshes shared)" >&2; exit 2 ;;
  esac
done

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

for s in $steps; do
  case $s in
    bench)
      step bench_bf16 "${LIMIT_BENCH:-200}" bench.jsonl "$py" tools/bench.py all --dtype bfloat16 $bench_args
      f32_limit=$(( ${LIMIT_BENCH:-200} * 3 / 2 ))  # float32 compiles took 125 and 200 s of these on an H100
      for b in train mfu rollout; do
        step "bench_f32_$b" "$f32_limit" bench.jsonl "$py" tools/bench.py "$b" --dtype float32 $bench_args
      done ;;
    rollout)
      step rollout_bf16 "${LIMIT_BENCH:-200}" rollout.jsonl "$py" tools/bench.py rollout --dtype bfloat16 $bench_args ;;
    aot)
      # no PyTorch here: JAX may take 90% of the device. Events per device as a (1, 4, 2)
      # mesh gives each device: 8 / 4 in training, 16 / 4 in rollouts
      aot=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "$py" tools/aot_memory.py --config experiments/qwen2_lora.py
           --preset qwen2-1.5b --mesh 1,1,1 --execute)
      step aot_train "${LIMIT_AOT:-110}" aot.jsonl "${aot[@]}" --what train --events 2
      step aot_rollout "${LIMIT_AOT:-110}" aot.jsonl "${aot[@]}" --what rollout --rollout-events 4
      step aot_train_loop $(( ${LIMIT_AOT:-110} * 2 )) aot.jsonl "${aot[@]}" --what train --events 2 \
        --set model.layer_loop=unroll ;;
    mfu)
      step mfu_big "${LIMIT_MFU:-90}" mfu.jsonl "$py" tools/bench.py mfu --dtype bfloat16 --train-events 8 \
        --mfu-events 64 $bench_args ;;
    profile)
      step profile_train "${LIMIT_PROFILE:-120}" profile.jsonl "$py" tools/profile_step.py train --dtype bfloat16 \
        --events 8 $profile_args
      step profile_simulate "${LIMIT_PROFILE:-120}" profile.jsonl "$py" tools/profile_step.py simulate \
        --dtype bfloat16 --events 64 $profile_args ;;
    topk)
      step topk "${LIMIT_TOPK:-90}" topk.jsonl "$py" tools/bench_top_k.py ;;
    layers)
      remat="--remat-policy dots_with_no_batch_dims_saveable"
      for flags in "" "--unroll-stacked" "--unroll-layers" "$remat" "--unroll-stacked $remat"; do
        step "layers_train ${flags:-scanned}" "${LIMIT_PROFILE:-120}" layers.jsonl "$py" tools/profile_step.py train \
          --dtype bfloat16 --events 8 $flags $profile_args
      done ;;
    generate)
      gen=(env JAX_DEFAULT_MATMUL_PRECISION=highest "$py" tools/bench_generate.py --repeats 5)
      step generate "${LIMIT_GENERATE:-300}" generate.jsonl "${gen[@]}"
      step generate_big "${LIMIT_GENERATE:-300}" generate.jsonl "${gen[@]}" --batch 64 --width 1024 --layers 16 ;;
    meshes)
      n=$("$py" -c 'import jax; print(jax.device_count())' 2>>"$log")
      if [ "${n:-0}" -lt 2 ]; then
        echo "== meshes: skipped, it needs several devices (this host has ${n:-none})" | tee -a "$log"
      else
        step meshes "${LIMIT_MESHES:-1800}" meshes.jsonl env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "$py" \
          tools/aot_memory.py --config experiments/qwen2_lora.py --preset qwen2-1.5b --sweep "$n" --execute --repeats 3
      fi ;;
    shared)
      step shared "${LIMIT_SHARED:-300}" shared.jsonl "$py" tools/bench.py shared --topic 96 --dtype bfloat16 $bench_args
      step shared_1.5b "${LIMIT_SHARED:-300}" shared.jsonl "$py" tools/bench.py shared --topic 96 --dtype bfloat16 \
        --width 1536 --layers 28 --vocab 151936 $bench_args ;;
    tests)
      step tests "${LIMIT_TESTS:-1500}" pytest.log env JAX_DEFAULT_MATMUL_PRECISION=highest MFJAX_TEST_XLA_DEFAULTS=1 \
        XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" "$py" -m pytest -q -p no:cacheprovider -n 0 tests
      tail -n 15 "$out/pytest.log" ;;
  esac
done
