#!/usr/bin/env bash
# Every benchmark, one after the other (they must not share the machine), one JSON line each,
# saved to benchmarks/results/<UTC time>.jsonl; RESULTS.md quotes those lines.
#   bash benchmarks/run_all.sh           # the quick set: smaller cohorts and fewer steps (about 11 minutes on 2 cores)
#   bash benchmarks/run_all.sh --full    # each script's defaults, as RESULTS.md's main tables
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export MPLCONFIGDIR=${MPLCONFIGDIR:-$(mktemp -d)}
unset MLFLOW_TRACKING_URI
mkdir -p benchmarks/results
out=benchmarks/results/$(date -u +%Y-%m-%dT%H-%M-%S).jsonl
full=false; [ "${1:-}" = "--full" ] && full=true
gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))")

run() {  # run <script> <quick args...>: its defaults with --full
  local script=$1; shift
  local args=("$@"); $full && args=()
  echo "== $script ${args[*]}" >&2
  local start=$SECONDS
  $PY "benchmarks/$script" "${args[@]}" 2>>"$out.log" | tail -n1 | tee -a "$out"
  echo "   $((SECONDS - start)) s" >&2
}

run startup.py --repeats 3
run framework_overhead.py --subjects 500 --steps 20 --warmup 3 --rounds 3
run fusion_cost.py --steps 10 --fusions attention concat gated
run data_throughput.py --subjects 1000 --batches 100 --steps 10 --ddp-steps 20 --volume-subjects 100
run logging_overhead.py --steps 100
run ddp_weak_scaling.py --subjects 1000 --steps 20
run scale.py --steps 3 --warmup 1
run sandbox_scale.py --subjects 2000 --variants 2000
if [ "$gpu" = 1 ]; then
  run text_encoder_mfu.py
else
  run text_encoder_mfu.py --device cpu --seq-len 128 --batch 2 --steps 2 --warmup 1
fi
echo "results: $out (stderr of the scripts in $out.log)" >&2
