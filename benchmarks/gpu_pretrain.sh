#!/usr/bin/env bash
# The GPU pretraining benchmarks (benchmarks/gpu_pretrain.py), for a session lent a GPU machine:
#   bash benchmarks/gpu_pretrain.sh            # the set below, one JSON line each, into $OUT or results/
#   DRY=1 bash benchmarks/gpu_pretrain.sh      # tiny sizes on CPU, 1 and 2 processes: a check
# Each run has its own timeout (STEP_TIMEOUT, default 240 s), so one slow compile cannot eat the
# machine's time; the set takes about 6 minutes on one H100/H200 (most of it compiling).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
out=${OUT:-benchmarks/results}/$(date -u +%Y-%m-%dT%H-%M)-gpu_pretrain.jsonl
mkdir -p "$(dirname "$out")"
if ! "$PY" -c "import torch, numpy, pyarrow, filelock, meds, tqdm"; then
  echo "gpu_pretrain.sh: $PY lacks medweave's imports: pip install -e . (or torch numpy pyarrow filelock meds tqdm)" >&2
  exit 1
fi
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
run() {
  timeout "${STEP_TIMEOUT:-240}" "$@" | tee -a "$out"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "gpu_pretrain.sh: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)'): $*" >&2
}
"$PY" -c "import torch; print('torch', torch.__version__, 'GPUs', torch.cuda.device_count())" >&2
if [ "${DRY:-0}" = 1 ] || [ "$gpus" = 0 ]; then
  run "$PY" benchmarks/gpu_pretrain.py --dry
  run "$PY" -m torch.distributed.run --standalone --nproc-per-node=2 benchmarks/gpu_pretrain.py --dry --no-compile
  echo "results: $out" >&2
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >&2
# One GPU: the ~100M-parameter backbone (dim 1024, 8 layers, 512 tokens) compiled: the MFU target;
run "$PY" benchmarks/gpu_pretrain.py
# the same without torch.compile (what compile gives);
run "$PY" benchmarks/gpu_pretrain.py --no-compile
# the BERT-base shape (dim 768, 12 layers);
run "$PY" benchmarks/gpu_pretrain.py --dim 768 --layers 12 --heads 12
# medweave-pretrain's default backbone (dim 64, 4 layers, 128 tokens), as the lead's run has it;
run "$PY" benchmarks/gpu_pretrain.py --dim 64 --layers 4 --heads 4 --width 128 --batch 512 --vocab 4096
# DDP over every GPU present (NCCL), the same per-GPU batch as the first run.
if [ "$gpus" -gt 1 ]; then
  run "$PY" -m torch.distributed.run --standalone --nproc-per-node="$gpus" benchmarks/gpu_pretrain.py
fi
echo "results: $out" >&2
