#!/usr/bin/env bash
# The default model from nothing, in one command: world data -> UPN -> ChatRex stage 0 (vision towers)
# -> stage 1 (alignment) -> stage 2 (instruction tuning, LoRA) -> one model directory.
#
#   bash recipes/train_default.sh                 # everything; safe to run again: finished stages are skipped
#   SLICE_S=510 bash recipes/train_default.sh     # stop after about 510 s with checkpoints (exit 75);
#                                                 # the same command continues where it stopped
#   STAGES="upn" bash recipes/train_default.sh    # some stages only (data upn stage0 stage1 stage2 assemble)
#
# Exit status: 0 when the model is assembled (or the chosen stages are done), 75 when the slice ended
# first (run the same command again), anything else on an error.
#
# Time: the stages' budgets (seconds of training on one GPU, compilation and start-up included) are
# UPN_S, S0_S, S1_S, S2_S; a time budget fixes each stage's learning-rate schedule from its measured speed,
# and it counts the time of every slice, so a sliced run trains as one that never stopped (the step at
# which a budgeted schedule ends may differ by the speed measured in each slice).
# Everything lives under RUNS (default runs/default) and DATA (default data/world); remove RUNS to start
# again from nothing. Extra --set options per stage: UPN_ARGS, S0_ARGS, S1_ARGS, S2_ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/world}
RUNS=${RUNS:-runs/default}
N_TRAIN=${N_TRAIN:-32000}
N_TEST=${N_TEST:-500}
WORKERS=${WORKERS:-$(nproc)}
UPN_S=${UPN_S:-1200}
S0_S=${S0_S:-240}
S1_S=${S1_S:-150}
S2_S=${S2_S:-900}
SLICE_S=${SLICE_S:-0}                # 0: no slices
STAGES=${STAGES:-data upn stage0 stage1 stage2 assemble}
FILTER_ARGS=${FILTER_ARGS:---min-score 0 --nms 0.8}
UPN_ARGS=${UPN_ARGS:-}; S0_ARGS=${S0_ARGS:-}; S1_ARGS=${S1_ARGS:-}; S2_ARGS=${S2_ARGS:-}
CHATREX=${CHATREX:-chatrex}
PAUSED=75
MARGIN_S=${MARGIN_S:-45}             # a stage gets the slice's rest minus this (start-up and its last save)
START=$(date +%s)

log() { echo "[$(date +%H:%M:%S)] $*"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
# seconds left in this slice for a stage, or nothing without slices
slice_left() { [ "$SLICE_S" -gt 0 ] && echo $(( START + SLICE_S - $(date +%s) - MARGIN_S )); }

# run_stage NAME KIND RECIPE BUDGET [--set ...]: train into $RUNS/NAME unless its final/ exists
run_stage() {
  local name=$1 kind=$2 recipe=$3 budget=$4; shift 4
  local out="$RUNS/$name"
  if [ -d "$out/final" ]; then log "$name: done already"; return 0; fi
  local stop=() left
  left=$(slice_left)
  if [ -n "$left" ]; then
    if [ "$left" -lt 30 ]; then log "$name: not started, the slice is over"; exit $PAUSED; fi
    stop=(--set "train.stop_after_s=$left")
  fi
  mkdir -p "$out"
  log "$name: training (budget ${budget} s${left:+, ${left} s in this slice})"
  $CHATREX train "$kind" "$recipe" --set task.data.files="[\"$DATA/train.jsonl\"]" \
    --set train.output_dir="$out" --set train.time_budget_s="$budget" "${stop[@]}" "$@" >> "$out/train.log" 2>&1
  local rc=$?
  if [ $rc -eq $PAUSED ]; then log "$name: paused (checkpoint in $out/checkpoints)"; exit $PAUSED; fi
  if [ $rc -ne 0 ]; then log "$name: FAILED with status $rc (see $out/train.log)"; tail -5 "$out/train.log"; exit $rc; fi
  log "$name: done"
}

mkdir -p "$RUNS"
if want data; then
  if [ -f "$DATA/.complete" ]; then log "data: done already"; else
    log "data: $N_TRAIN train scenes, $N_TEST each of val, test and test-comp"
    $CHATREX world generate --n "$N_TRAIN" --split train --out "$DATA" --workers "$WORKERS" || exit $?
    for split in val test test-comp; do
      $CHATREX world generate --n "$N_TEST" --split "$split" --out "$DATA" --workers "$WORKERS" || exit $?
    done
    touch "$DATA/.complete"
  fi
fi
# shellcheck disable=SC2086  # the *_ARGS are lists of options
want upn && run_stage upn upn recipes/default/upn.json "$UPN_S" $UPN_ARGS
want stage0 && run_stage stage0 vision recipes/default/stage0.json "$S0_S" $S0_ARGS
want stage1 && run_stage stage1 chatrex recipes/default/stage1.json "$S1_S" \
  --set task.vision_init="$RUNS/stage0/final" $S1_ARGS
want stage2 && run_stage stage2 chatrex recipes/default/stage2.json "$S2_S" \
  --set task.init_from="$RUNS/stage1/final" $S2_ARGS
if want assemble; then
  # shellcheck disable=SC2086
  $CHATREX train assemble "$RUNS/upn/final" "$RUNS/stage2/final" "$RUNS/model" $FILTER_ARGS || exit $?
  log "model assembled in $RUNS/model"
fi
exit 0
