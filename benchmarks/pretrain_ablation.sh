#!/bin/bash
# One row of docs/LOG.md's "pre-training at a fixed wall clock" ablation (issue 18): an 8-step
# throughput probe sizes max_steps so that the run trains for BUDGET_S seconds, then the run.
# Needs the demo's tokenizer and shards (make demo). Run rows one at a time on a quiet machine.
#   benchmarks/pretrain_ablation.sh NAME BUDGET_S TOKENS_PER_STEP [overrides...]
#   benchmarks/pretrain_ablation.sh d3-muon 240 2048 trainer.compile=false preset=lmforge-d3 \
#       trainer.lr=4e-3 trainer.optimizer=muon
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; budget=$2; tps=$3; shift 3
out=${ABLATION_DIR:-runs/ablation}
lmf=${LMF:-.venv/bin/lmforge}
common=(--config configs/demo/pretrain.yaml tokenizer=runs/demo/tokenizer data.path=data/curated
        data.shards=runs/demo/pretrain/shards trainer.progress=false samples.max_new_tokens=1
        trainer.checkpoint_every=0 trainer.micro_batch_size=8 trainer.grad_accum_steps=$((tps / 2048)))
"$lmf" pretrain "${common[@]}" out_dir="$out/$name-probe" trainer.max_steps=8 trainer.warmup_steps=1 \
  trainer.eval_every=0 data.eval_batches=1 trainer.log_every=2 "$@" > "$out-$name-probe.log" 2>&1
tok=$(python3 -c "import json;print(json.load(open('$out/$name-probe/summary.json'))['tokens_per_second'])")
steps=$(python3 -c "print(int($budget * $tok / $tps))")
echo "$name: probe $tok tok/s -> $steps steps"
"$lmf" pretrain "${common[@]}" out_dir="$out/$name" trainer.max_steps="$steps" \
  trainer.warmup_steps=$((steps / 10)) trainer.eval_every=0 trainer.log_every=20 "$@" > "$out-$name.log" 2>&1
python3 -c "import json;d=json.load(open('$out/$name/summary.json'));print('$name', d['steps'], 'steps, val bpb %.3f, %.0f tok/s, %.0f s' % (d['val_bpb'], d['tokens_per_second'], d['wall_seconds']))"
