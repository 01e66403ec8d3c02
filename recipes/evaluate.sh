#!/usr/bin/env bash
# Evaluate a model directory on the world's test and compositional splits (chatrex.md §7 protocols).
#   MODEL=runs/model bash recipes/evaluate.sh
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-runs/model}
DATA=${DATA:-data/world}
EVAL_OUT=${EVAL_OUT:-runs/eval}   # not $OUT: device machines reserve that name
LIMIT=${LIMIT:-150}
CHATREX=${CHATREX:-chatrex}
mkdir -p "$EVAL_OUT"
run() { echo "[$(date +%H:%M:%S)] eval $*"; $CHATREX eval "$@" || echo "FAILED: eval $*"; }
SPLITS=${SPLITS:-test test-comp}
eval_split() {
  local split=$1
  run proposals --model "$MODEL" --data "$DATA/$split.jsonl" --boxes instances --out "$EVAL_OUT/$split-proposals-instances.json"
  run proposals --model "$MODEL" --data "$DATA/$split.jsonl" --boxes all --out "$EVAL_OUT/$split-proposals-all.json"
  run detection --model "$MODEL" --data "$DATA/$split.jsonl" --limit "$LIMIT" --batch-size 16 --max-new-tokens 128 --out "$EVAL_OUT/$split-detection.json"
  run referring --model "$MODEL" --data "$DATA/$split.jsonl" --limit "$LIMIT" --batch-size 16 --max-new-tokens 128 --out "$EVAL_OUT/$split-referring.json"
  run region --model "$MODEL" --data "$DATA/$split.jsonl" --limit "$LIMIT" --batch-size 16 --max-new-tokens 128 --out "$EVAL_OUT/$split-region.json"
}
# the splits run side by side (PARALLEL=0 runs them one after the other)
for split in $SPLITS; do
  if [ "${PARALLEL:-1}" = 1 ]; then eval_split "$split" & else eval_split "$split"; fi
done
run counting --model "$MODEL" --data "$DATA/test.jsonl" --limit "$LIMIT" --batch-size 16 --max-new-tokens 128 --out "$EVAL_OUT/test-counting.json"
run grounded-caption --model "$MODEL" --data "$DATA/test.jsonl" --limit 100 --batch-size 16 --max-new-tokens 256 --out "$EVAL_OUT/test-grounded-caption.json"
run pope --model "$MODEL" --data "$DATA/test.jsonl" --limit 100 --batch-size 16 --max-new-tokens 128 --out "$EVAL_OUT/test-pope.json"
wait
$CHATREX eval summary "$EVAL_OUT"/*.json --out "$EVAL_OUT/summary.md"
echo "[$(date +%H:%M:%S)] evaluation done: $EVAL_OUT/summary.md"
