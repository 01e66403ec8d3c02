#!/usr/bin/env bash
# The small CPU experiment of the README (Default model): does stage 1 teach the LLM to read object
# tokens when the towers are frozen and the <objK> rows start distinct? 112 / 256 px towers, region
# categories only, 1-3 boxes per prompt. About 50 minutes on 2 cores; set the same on a GPU to go faster.
#   bash recipes/cpu_object_path.sh
#   TRUNK=1 bash recipes/cpu_object_path.sh   # also the object-trunk run (recipes/cpu_object_path_stage2.json)
set -euo pipefail
cd "$(dirname "$0")/.."
CHATREX=${CHATREX:-chatrex}
$CHATREX world generate --n 4000 --split train --out data/cpu_world --workers "${WORKERS:-2}"
[ -f data/world/test.jsonl ] || $CHATREX world generate --n 500 --split test --out data/world --workers "${WORKERS:-2}"
$CHATREX train vision recipes/cpu_object_path_stage0.json --set train.time_budget_s=420
$CHATREX train chatrex recipes/cpu_object_path_stage1.json   # 560 steps; watch loss_task/region_category
# the object trunk (docs/object_path.md): LoRA from the towers, the object features read through the frozen
# stage-0 trunk; loss_task/region_category goes below the floor within a few hundred steps
[ -n "${TRUNK:-}" ] && $CHATREX train chatrex recipes/cpu_object_path_stage2.json
$CHATREX train assemble chatrex/assets/chatrex-small/upn runs/cpu_stage1/final runs/cpu_model
# the box-blind floor of the answer loss is about 0.47 (category entropy 3.40 nats over ~7.3 tokens)
$CHATREX eval object-tokens --model runs/cpu_model --data data/world/test.jsonl --limit 500 --device cpu \
  --out runs/cpu_eval/object-tokens.json
$CHATREX eval region --model runs/cpu_model --data data/world/test.jsonl --tasks category --level instance --limit 80 --device cpu \
  --max-new-tokens 24 --out runs/cpu_eval/region.json
