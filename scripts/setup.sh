#!/usr/bin/env bash
# Create .venv (once) and install medweave with its CPU stack. Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.medweave-installed
if [ ! -f "$stamp" ] || [ requirements-cpu.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements-cpu.txt
  touch "$stamp"
fi
