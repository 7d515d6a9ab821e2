#!/usr/bin/env bash
# session 10 device run 2: top-k strategies on the GPU, then simulate profiles with chunked top-k and with the plain sort
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"; log=$out/log.txt
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
T0=$SECONDS
step() { local name=$1 limit=$2 file=$3; shift 3; local t0=$SECONDS
  echo "== $name (limit ${limit}s, at $((SECONDS-T0))s): $*" | tee -a "$log"
  timeout "$limit" "$@" >>"$out/$file" 2>>"$log"; local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s" | tee -a "$log"; }
git log -1 --format=%H > "$out/env.txt"; git diff --stat >> "$out/env.txt"
step topk 100 topk.jsonl python3 .devrun/topk_bench.py 1024 128 16
grep rows "$out/topk.jsonl" | cut -c1-160
CH=$(python3 -c "
import json; r=[json.loads(l) for l in open('$out/topk.jsonl')]
r=[x for x in r if x.get('rows')==1024 and x['variant'] in ('chunk128','chunk256','chunk512','chunk1024','chunk2048') and x.get('equal')]
print(min(r, key=lambda x: x['ms_per_call'])['variant'][5:] if r else 512)")
echo "chunk $CH" | tee -a "$log"
rm -rf /tmp/vc /tmp/vs; mkdir /tmp/vc /tmp/vs; cp -r mfjax tools /tmp/vc/; cp -r mfjax tools /tmp/vs/
sed -i "s/^GPU_TOP_K_CHUNK = .*/GPU_TOP_K_CHUNK = $CH/" /tmp/vc/mfjax/sampling.py
sed -i "s/  if k <= GPU_TOP_K_ROUND:/  if True:/" /tmp/vs/mfjax/sampling.py
grep -c "if True:" /tmp/vs/mfjax/sampling.py >> "$log"
step prof_chunk 75 prof_chunk.jsonl python3 /tmp/vc/tools/profile_step.py simulate --dtype bfloat16 --events 64 --runs 1 --top 40
head -c 600 "$out/prof_chunk.jsonl"; echo
step prof_sort 75 prof_sort.jsonl python3 /tmp/vs/tools/profile_step.py simulate --dtype bfloat16 --events 64 --runs 1 --top 40
head -c 600 "$out/prof_sort.jsonl"; echo
echo "total $((SECONDS-T0))s"
