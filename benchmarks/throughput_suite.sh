#!/usr/bin/env bash
# Training throughput of each stage on one GPU, this checkout against a baseline checkout, in one run:
# the numbers of benchmarks/RESULTS.md ("Training throughput"). Every line goes to $LOG and a JSON line per
# measurement to $JSON.
#
#   bash benchmarks/throughput_suite.sh data            # world scenes for the benchmarks (data/bench)
#   BASE=path/to/old/checkout bash benchmarks/throughput_suite.sh upn     # UPN: baseline vs this checkout
#   bash benchmarks/throughput_suite.sh upn_profile     # the UPN step's top kernels, busy share and MFU
#
# BASE is a folder holding an older `chatrex` package (e.g. `git archive <commit> chatrex | tar -x -C DIR`);
# empty: no baseline rows.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/bench}
LOG=${LOG:-runs/throughput.log}
JSON=${JSON:-runs/throughput.jsonl}
STEPS=${STEPS:-60}
BASE=${BASE:-}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
mkdir -p "$(dirname "$LOG")" "$(dirname "$JSON")"
LOG=$(realpath -m "$LOG"); JSON=$(realpath -m "$JSON")  # the profile step runs from benchmarks/
tp() { python3 benchmarks/train_throughput.py --data "$DATA/train.jsonl" --steps "$STEPS" --json "$JSON" "$@" 2>&1 | tail -1 | tee -a "$LOG"; }
upn_tp() { tp --kind upn --recipe recipes/upn_small.json --set train.num_workers="$WORKERS" "$@"; }

case "${1:-}" in
data)
  python3 -m chatrex.interfaces.cli world generate --n "${N:-4000}" --split train --out "$DATA" --workers "$(nproc)" 2>&1 | tail -1
  ;;
upn)
  [ -n "$BASE" ] && upn_tp --python "$BASE" --label "baseline, batch 16"
  upn_tp --label "batch 16"
  upn_tp --label "batch 16, decoded on the GPU" --set task.data.decode_on_device=true
  upn_tp --label "batch 64, decoded on the GPU" --set task.data.decode_on_device=true --set train.batch_size=64
  ;;
upn_profile)
  (cd benchmarks && python3 upn_train_step.py --data "../$DATA/train.jsonl" --recipe ../recipes/upn_small.json \
    --batch "${BATCH:-64}" --steps 6 --profile --set task.data.decode_on_device=true --json "$JSON" 2>&1 | tail -45 | tee -a "$LOG")
  ;;
*)
  echo "usage: $0 data|upn|upn_profile" >&2; exit 2
  ;;
esac
