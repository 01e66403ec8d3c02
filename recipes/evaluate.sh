#!/usr/bin/env bash
# Evaluate a model directory on the world's test and compositional splits (chatrex.md §7 protocols).
#   MODEL=runs/model bash recipes/evaluate.sh
#   EVAL_GPUS="0 1 2 3" MODEL=runs/model bash recipes/evaluate.sh   # jobs spread over 4 GPUs
# Every evaluation is one job; the jobs run side by side (PARALLEL=0: one after the other), each on the
# next GPU of EVAL_GPUS in turn, each stopped after EVAL_TIMEOUT seconds if set.
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-runs/model}
DATA=${DATA:-data/world}
EVAL_OUT=${EVAL_OUT:-runs/eval}   # not $OUT: device machines reserve that name
LIMIT=${LIMIT:-150}
CHATREX=${CHATREX:-chatrex}
SPLITS=${SPLITS:-test test-comp}
EVAL_GPUS=${EVAL_GPUS:-}
EVAL_TIMEOUT=${EVAL_TIMEOUT:-0}   # 0: no limit
CAPTION_LIMIT=${CAPTION_LIMIT:-100}  # images for the grounded-caption evaluation
POPE_LIMIT=${POPE_LIMIT:-100}        # images for POPE (about 6 questions per image and variant, 3 variants)
mkdir -p "$EVAL_OUT"

gpus=($EVAL_GPUS)
job=0
run() {
  local env=()
  if [ ${#gpus[@]} -gt 0 ]; then env=(env CUDA_VISIBLE_DEVICES="${gpus[$((job % ${#gpus[@]}))]}"); fi
  job=$((job + 1))
  echo "[$(date +%H:%M:%S)] eval $*"
  local cmd=("${env[@]}" timeout "$EVAL_TIMEOUT" $CHATREX eval "$@")
  if [ "${PARALLEL:-1}" = 1 ]; then
    ( "${cmd[@]}" > "$EVAL_OUT/$1-$job.log" 2>&1 || echo "FAILED: eval $*" ) &
  else
    "${cmd[@]}" > "$EVAL_OUT/$1-$job.log" 2>&1 || echo "FAILED: eval $*"
  fi
}
ask=(--limit "$LIMIT" --batch-size 16 --max-new-tokens 128)
for split in $SPLITS; do
  run proposals --model "$MODEL" --data "$DATA/$split.jsonl" --boxes instances --out "$EVAL_OUT/$split-proposals-instances.json"
  run proposals --model "$MODEL" --data "$DATA/$split.jsonl" --boxes all --out "$EVAL_OUT/$split-proposals-all.json"
  run detection --model "$MODEL" --data "$DATA/$split.jsonl" "${ask[@]}" --out "$EVAL_OUT/$split-detection.json"
  run referring --model "$MODEL" --data "$DATA/$split.jsonl" "${ask[@]}" --out "$EVAL_OUT/$split-referring.json"
  run region --model "$MODEL" --data "$DATA/$split.jsonl" "${ask[@]}" --out "$EVAL_OUT/$split-region.json"
done
# the same regions given as their masks (docs/regions.md); records written before masks have none and fail
run region --model "$MODEL" --data "$DATA/test.jsonl" "${ask[@]}" --regions masks --out "$EVAL_OUT/test-region-masks.json"
run counting --model "$MODEL" --data "$DATA/test.jsonl" "${ask[@]}" --out "$EVAL_OUT/test-counting.json"
run grounded-caption --model "$MODEL" --data "$DATA/test.jsonl" --limit "$CAPTION_LIMIT" --batch-size 16 --max-new-tokens 256 \
  --out "$EVAL_OUT/test-grounded-caption.json"
run object-tokens --model "$MODEL" --data "$DATA/test.jsonl" --limit 500 --out "$EVAL_OUT/test-object-tokens.json"
run pope --model "$MODEL" --data "$DATA/test.jsonl" --limit "$POPE_LIMIT" --batch-size 16 --max-new-tokens 128 --out "$EVAL_OUT/test-pope.json"
wait
$CHATREX eval summary "$EVAL_OUT"/*.json --out "$EVAL_OUT/summary.md"
echo "[$(date +%H:%M:%S)] evaluation done: $EVAL_OUT/summary.md"
