#!/usr/bin/env bash
# Reproduce the default model (UPN-small + ChatRex-small) end to end:
# world data -> [UPN training] || [ChatRex stage 0 -> stage 1 -> stage 2] -> assembled model.
# The UPN and the ChatRex chain are independent and run side by side. Every step resumes where it stopped.
#
#   bash recipes/reproduce.sh                   # everything, on one GPU (both runs share it)
#   bash recipes/reproduce.sh data              # only the world data
#   bash recipes/reproduce.sh train             # only the trainings and the assembly
#   bash recipes/reproduce.sh stage0            # only ChatRex stage 0 (the vision towers)
#   UPN_GPUS=0,1,2 CHATREX_GPU=3 bash recipes/reproduce.sh train   # UPN with DDP on 3 GPUs, ChatRex on the 4th
#   N_TRAIN=4000 UPN_BUDGET=300 bash recipes/reproduce.sh
#   UPN_DIR=chatrex/assets/chatrex-small/upn bash recipes/reproduce.sh chatrex   # only the ChatRex chain, with a given UPN
#   S0_DIR=runs/chatrex_stage0/final RUNS=runs/b bash recipes/reproduce.sh chatrex   # reuse stage-0 towers
# TRAIN_SEED_OFFSET=K draws the train scenes from seeds K.. instead of 0.. (a disjoint sample of the same
# train split): a run that continues an earlier one can see scenes it has not seen.
# S1_BUDGET=0 skips stage 1: stage 2 then starts from the stage-0 towers and fresh projectors.
# S2_INIT=DIR continues a stage-2 LoRA export (e.g. the shipped chatrex-small/chatrex) as stage 2: no
# stage 0 or 1; its LoRA factors go on training (the recipe's lora.r and alpha must be the export's).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/world}
RUNS=${RUNS:-runs}
N_TRAIN=${N_TRAIN:-40000}
N_TEST=${N_TEST:-500}
TRAIN_SEED_OFFSET=${TRAIN_SEED_OFFSET:-0}
WORKERS=${WORKERS:-$(nproc)}
UPN_BUDGET=${UPN_BUDGET:-900}       # seconds of UPN training
S0_BUDGET=${S0_BUDGET:-180}          # seconds of ChatRex stage 0 (vision towers)
S1_BUDGET=${S1_BUDGET:-210}          # seconds of ChatRex stage 1
S2_BUDGET=${S2_BUDGET:-480}          # seconds of ChatRex stage 2
S0_DIR=${S0_DIR:-}                   # a finished stage-0 export to use instead of training stage 0
S0_INIT=${S0_INIT:-}                 # a stage-0 export that stage 0 continues from (e.g. an earlier run's)
S2_INIT=${S2_INIT:-}                 # a stage-2 LoRA export that stage 2 continues (stages 0 and 1 skipped)
UPN_DIR=${UPN_DIR:-}                 # an exported UPN to assemble with (default: the one trained here)
FILTER_ARGS=${FILTER_ARGS:---min-score 0 --nms 0.8}  # proposal filter written into the model (the shipped one's;
                                     # chosen on the val split with scripts/sweep_proposal_filter.py)
UPN_GPUS=${UPN_GPUS:-}               # e.g. 0,1,2 (several: torchrun DDP); empty: the default device
CHATREX_GPU=${CHATREX_GPU:-}         # e.g. 3; empty: the default device
UPN_ARGS=${UPN_ARGS:-}; S0_ARGS=${S0_ARGS:-}; S1_ARGS=${S1_ARGS:-}; S2_ARGS=${S2_ARGS:-}  # extra --set options
WAIT_FOR=${WAIT_FOR:-}               # a file that must exist before stage 1 (e.g. the base LLM, copied in meanwhile)
CHATREX=${CHATREX:-chatrex}
STEP=${1:-all}

log() { echo "[$(date +%H:%M:%S)] $*"; }
files="[\"$DATA/train.jsonl\"]"
# run "$@" on the GPUs $1 (comma-separated), or on the default devices when $1 is empty
on_gpus() { local gpus=$1; shift; if [ -n "$gpus" ]; then CUDA_VISIBLE_DEVICES=$gpus "$@"; else "$@"; fi; }

data() {
  log "world data: $N_TRAIN train (seed offset $TRAIN_SEED_OFFSET), $N_TEST test, $N_TEST test-comp"
  $CHATREX world generate --n "$N_TRAIN" --split train --out "$DATA" --workers "$WORKERS" \
    --seed-offset "$TRAIN_SEED_OFFSET"
  $CHATREX world generate --n "$N_TEST" --split test --out "$DATA" --workers "$WORKERS"
  $CHATREX world generate --n "$N_TEST" --split test-comp --out "$DATA" --workers "$WORKERS"
}

upn() {
  local n launcher=$CHATREX
  n=$(echo "$UPN_GPUS" | tr ',' '\n' | grep -c . || true)
  if [ "$n" -gt 1 ]; then
    launcher="python3 -m torch.distributed.run --standalone --nproc_per_node $n -m chatrex.interfaces.cli"
  fi
  on_gpus "$UPN_GPUS" $launcher train upn recipes/upn_small.json \
    --set task.data.files="$files" --set train.output_dir="$RUNS/upn_small" --set train.time_budget_s="$UPN_BUDGET" \
    $UPN_ARGS > "$RUNS/upn.log" 2>&1
  log "UPN done"
}

stage0() {  # the vision towers, into $RUNS/chatrex_stage0/final (continuing from $S0_INIT when set)
  on_gpus "$CHATREX_GPU" $CHATREX train vision recipes/chatrex_small_stage0.json --set task.data.files="$files" \
    ${S0_INIT:+--set task.init_from="$S0_INIT"} \
    --set train.output_dir="$RUNS/chatrex_stage0" --set train.time_budget_s="$S0_BUDGET" $S0_ARGS > "$RUNS/stage0.log" 2>&1
}

chatrex_chain() {
  local gpu=$CHATREX_GPU
  local towers="$RUNS/chatrex_stage0/final"
  if [ -n "$S2_INIT" ]; then
    log "stages 0 and 1 skipped: stage 2 continues $S2_INIT"
  elif [ -n "$S0_DIR" ]; then
    towers=$S0_DIR
    log "stage 0 skipped: towers from $towers"
  elif stage0; then
    log "stage 0 done"
  else  # the towers then start from scratch and train in stage 1, as in the first default model
    log "stage 0 FAILED (see $RUNS/stage0.log); stage 1 starts the towers from scratch and trains them"
    towers=null
  fi
  local tower_args=(--set task.vision_init="$towers")
  [ "$towers" = null ] && tower_args+=(--set task.vision_lr_mult=1.0)  # the recipes freeze them otherwise
  if [ -n "$WAIT_FOR" ]; then
    while [ ! -e "$WAIT_FOR" ]; do sleep 5; done
  fi
  local start=(--set task.init_from="$RUNS/chatrex_stage1/final")
  if [ -n "$S2_INIT" ]; then
    start=(--set task.init_from="$S2_INIT")
  elif [ "$S1_BUDGET" = 0 ]; then
    log "stage 1 skipped (S1_BUDGET=0): stage 2 starts from the towers and fresh projectors"
    start=(--set task.init_from=null "${tower_args[@]}")
  else
    on_gpus "$gpu" $CHATREX train chatrex recipes/chatrex_small_stage1.json --set task.data.files="$files" \
      "${tower_args[@]}" --set train.output_dir="$RUNS/chatrex_stage1" \
      --set train.time_budget_s="$S1_BUDGET" $S1_ARGS > "$RUNS/stage1.log" 2>&1
    log "stage 1 done"
  fi
  on_gpus "$gpu" $CHATREX train chatrex recipes/chatrex_small_stage2.json --set task.data.files="$files" \
    "${start[@]}" --set train.output_dir="$RUNS/chatrex_stage2" \
    --set train.time_budget_s="$S2_BUDGET" $S2_ARGS > "$RUNS/stage2.log" 2>&1
  log "stage 2 done"
}

assemble() {
  $CHATREX train assemble "${UPN_DIR:-$RUNS/upn_small/final}" "$RUNS/chatrex_stage2/final" "$RUNS/model" $FILTER_ARGS
  log "model assembled in $RUNS/model"
}

train() {
  mkdir -p "$RUNS"
  log "UPN and the ChatRex chain (side by side)"
  upn &
  local upn_pid=$!
  chatrex_chain
  wait "$upn_pid"
  assemble
}

case "$STEP" in
  data) data ;;
  train) train ;;
  chatrex) mkdir -p "$RUNS"; chatrex_chain; assemble ;;
  stage0) mkdir -p "$RUNS"; stage0; log "stage 0 done" ;;
  all) data; train ;;
  *) echo "usage: bash recipes/reproduce.sh [data|train|chatrex|stage0|all]" >&2; exit 2 ;;
esac
