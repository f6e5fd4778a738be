#!/usr/bin/env bash
# Measure `latentrag train` at the paper's scale on one GPU: a random Qwen2.5-7B-shaped LLM with
# LoRA r=16 on all projections, a Qwen3-Embedding-0.6B-shaped query tower, gradient
# checkpointing, bf16, batch 16 of 3,000-token trajectories, a few optimizer steps.
#
# Runs `python -m latentrag_plugins.training.scale_check` a few times (each in a fresh process)
# and writes NAME.json (figures, device, versions) and NAME.log per run to $OUT (7 files in all;
# the scratch runs stay in $WORK), then prints a table. Needs torch, transformers, peft and
# accelerate; nothing from a model hub.
#   micro16   the whole batch of 16 in one pass
#   micro4    4 x 4 with gradient accumulation
#   fp32base  micro4 with the frozen LLM weights in float32 (what bf16 frozen weights save)
# A run that runs out of memory says so in its JSON. Runs are skipped once BUDGET_S (420 s) is
# near. EXTRA is appended to every run, e.g. for a CPU try:
#   EXTRA="--shape tiny --tower tiny-qwen3-emb --seq-len 600 --steps 2 --device cpu" \
#     OUT=/tmp/check bash scripts/gpu_train_check.sh
set -u
OUT=${OUT:-/tmp/gpu_train_check}
WORK=${WORK:-/tmp/gpu_train_check_work}
BUDGET_S=${BUDGET_S:-420}
EXTRA=${EXTRA:-}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.csv" 2>&1 || true
start=$(date +%s)

run() {  # run NAME MIN_SECONDS_LEFT ARGS...: one check, if enough of the budget is left
  local name=$1 need=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - start)))
  if ((left < need)); then
    echo "skip $name: ${left}s left of ${BUDGET_S}s"
    return
  fi
  echo "== $name (${left}s left)"
  # shellcheck disable=SC2086  # EXTRA is a list of options
  timeout "$left" python3 -m latentrag_plugins.training.scale_check --out "$WORK" --name "$name" \
    "$@" $EXTRA >"$OUT/$name.log" 2>&1
  echo "   exit $?"
  cp "$WORK/$name.json" "$OUT/" 2>/dev/null || echo "   no report (see $name.log)"
}

run micro16 150 --micro-batch 16 --steps 3
run micro4 150 --micro-batch 4 --steps 3
run fp32base 120 --micro-batch 4 --steps 2 --base-dtype float32

python3 - "$OUT" <<'PY'
import json, pathlib, sys
rows = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    s, p = r["settings"], r.get("projection", {})
    rows.append([f.stem, f"{s['batch']}={s['micro_batch']}x{s['batch'] // s['micro_batch']}",
                 r.get("peak_memory_gib"), r.get("seconds_per_step"), r.get("tokens_per_second"),
                 p.get("hours_1_gpu_at_mean_tokens"), p.get("hours_8_gpus_at_mean_tokens"),
                 r.get("error", "")])
    env = r["environment"]
print(f"device: {env['device']}, torch {env['torch']}, transformers {env['transformers']}"
      if rows else "no report")
head = ["run", "batch", "peak GiB", "s/step", "tokens/s", "h (1 GPU)", "h (8 GPUs)", "error"]
for row in [head, *rows]:
    print(" | ".join(str(x) for x in row))
PY
