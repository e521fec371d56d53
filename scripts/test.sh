#!/usr/bin/env bash
# The README's test command: set up, then run every test but those that need a GPU.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/test-deps.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export MPLCONFIGDIR=${MPLCONFIGDIR:-$(mktemp -d)}
exec .venv/bin/python -m pytest -m "not gpu" "$@"
