#!/usr/bin/env bash
# The GPU checks, in one device call: the GPU fast path first, then training at scale, then the
# engine under concurrency. Each check has its own time box and writes its JSON to $OUT (7 files
# in all: the device tool brings back 8); its output goes to checks.log. A check that fails or
# runs out of time leaves its log there, and the others still run.
#
#   search   exact search over 1M x 1024 vectors on the GPU (torch) vs one and many queries
#   bench7b  latentrag bench, qwen2.5-7b shape, 1M documents, batch 1, 8 and 32, three methods
#            interleaved, stage breakdown, the PNG chart
#   train    one 7B-shaped training setting (scripts/gpu_train_check.sh's micro4)
#   engine   latentrag bench --concurrency 1,8,32 on the same shape (LatentRAG and the explicit
#            agent against one engine each)
#
# On the GPU machine (no network): carry wheels of faiss-cpu and pydantic (see docs/benchmarks.md)
# in .whl/, e.g. run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=560).
# GPU_CHECK_SMOKE=1 runs every check on tiny shapes on the CPU, in about a minute (a test does).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  SHAPE=tiny RETRIEVER=minilm DOCS=2000 DIM=384 DEVICE=cpu QUESTIONS=2 LEVELS=1,2
  TRAIN="--shape tiny --tower tiny-qwen3-emb --seq-len 600 --steps 1 --micro-batch 2 --batch 2 --device cpu"
else
  SHAPE=qwen2.5-7b RETRIEVER=qwen3-emb-0.6b DOCS=1000000 DIM=1024 DEVICE=cuda QUESTIONS=10
  LEVELS=1,8,32 TRAIN="--micro-batch 4 --steps 3"
fi
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/summary.txt" 2>&1

check() {  # check NAME SECONDS COMMAND...: run COMMAND within SECONDS (fewer if the budget ends)
  local name=$1 want=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - start)))
  local box=$((want < left ? want : left))
  if ((box < 20)); then
    echo "skip $name: ${left}s left of ${BUDGET_S}s" | tee -a "$OUT/summary.txt"
    return
  fi
  local t0=$(date +%s)
  echo "== $name" >>"$OUT/checks.log"
  timeout "$box" "$@" >>"$OUT/checks.log" 2>&1
  echo "$name: exit $? in $(($(date +%s) - t0))s (box ${box}s)" | tee -a "$OUT/summary.txt"
}

check search 60 python3 -c "
import json, sys
from latentrag_plugins.bench.search_bench import search_bench
rep = search_bench($DOCS, $DIM, (1, 8, 32), device='$DEVICE', repeats=5)
json.dump(rep, open('$OUT/search.json', 'w'), indent=1, default=str)
print(json.dumps(rep['best_ms'], indent=1))
"
check bench7b 210 python3 -m latentrag_plugins.cli.main bench --shape "$SHAPE" \
  --retriever "$RETRIEVER" --corpus-size "$DOCS" --questions "$QUESTIONS" --batch 1,8,32 \
  --device "$DEVICE" --json "$OUT/bench7b.json" --plot "$OUT/bench7b.png"
check train 150 python3 -m latentrag_plugins.training.scale_check --out /tmp/gpu_check_train \
  --name train $TRAIN
cp /tmp/gpu_check_train/train.json "$OUT/" 2>/dev/null
check engine 150 python3 -m latentrag_plugins.cli.main bench --concurrency "$LEVELS" \
  --rounds 2 --shape "$SHAPE" --retriever "$RETRIEVER" --corpus-size "$DOCS" \
  --device "$DEVICE" --json "$OUT/engine.json"
