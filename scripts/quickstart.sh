#!/usr/bin/env bash
# The README's first command: set up, write a sandbox cohort, train the quickstart, track in MLflow.
#   bash scripts/quickstart.sh [extra medweave-train overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
COHORT=${COHORT:-data/sandbox}
if [ ! -f "$COHORT/metadata/dataset.json" ]; then
  .venv/bin/medweave-sandbox out="$COHORT" n_subjects=4000 seed=0
fi
.venv/bin/medweave-train experiment=quickstart data.root="$COHORT" seed=0 "$@"
echo
echo "MLflow store: logs/mlflow/mlflow.db. Open the UI with:"
echo "  .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/logs/mlflow/mlflow.db --port 5000"
