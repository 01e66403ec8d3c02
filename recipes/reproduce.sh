#!/usr/bin/env bash
# Reproduce the default model (UPN-small + ChatRex-small) end to end on one GPU:
# world data -> UPN training || ChatRex stage 1 -> ChatRex stage 2 -> evaluation.
# UPN and ChatRex stage 1 are independent and share the GPU. Every step resumes where it stopped.
#
#   bash recipes/reproduce.sh                # defaults below
#   N_TRAIN=4000 UPN_BUDGET=300 bash recipes/reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/world}
RUNS=${RUNS:-runs}
N_TRAIN=${N_TRAIN:-20000}
N_TEST=${N_TEST:-500}
WORKERS=${WORKERS:-$(nproc)}
UPN_BUDGET=${UPN_BUDGET:-780}        # seconds of UPN training
S1_BUDGET=${S1_BUDGET:-240}          # seconds of ChatRex stage 1
S2_BUDGET=${S2_BUDGET:-540}          # seconds of ChatRex stage 2
CHATREX=${CHATREX:-chatrex}

log() { echo "[$(date +%H:%M:%S)] $*"; }

log "world data: $N_TRAIN train, $N_TEST test, $N_TEST test-comp"
$CHATREX world generate --n "$N_TRAIN" --split train --out "$DATA" --workers "$WORKERS"
$CHATREX world generate --n "$N_TEST" --split test --out "$DATA" --workers "$WORKERS"
$CHATREX world generate --n "$N_TEST" --split test-comp --out "$DATA" --workers "$WORKERS"

mkdir -p "$RUNS"
log "UPN and ChatRex stage 1 (in parallel)"
$CHATREX train upn recipes/upn_small.json --set task.data.files="[\"$DATA/train.jsonl\"]" \
  --set train.output_dir="$RUNS/upn_small" --set train.time_budget_s="$UPN_BUDGET" > "$RUNS/upn.log" 2>&1 &
UPN_PID=$!
$CHATREX train chatrex recipes/chatrex_small_stage1.json --set task.data.files="[\"$DATA/train.jsonl\"]" \
  --set train.output_dir="$RUNS/chatrex_stage1" --set train.time_budget_s="$S1_BUDGET" > "$RUNS/stage1.log" 2>&1
log "stage 1 done"
$CHATREX train chatrex recipes/chatrex_small_stage2.json --set task.data.files="[\"$DATA/train.jsonl\"]" \
  --set task.init_from="$RUNS/chatrex_stage1/final" --set train.output_dir="$RUNS/chatrex_stage2" \
  --set train.time_budget_s="$S2_BUDGET" > "$RUNS/stage2.log" 2>&1
log "stage 2 done"
wait "$UPN_PID"
log "UPN done"
$CHATREX train assemble "$RUNS/upn_small/final" "$RUNS/chatrex_stage2/final" "$RUNS/model"
log "model assembled in $RUNS/model"
