#!/usr/bin/env bash
# Set-up shared by the README's commands: a virtual environment in .venv with mergebot,
# its test extra and torch. Re-runs are quick: it reinstalls only when pyproject.toml changed.
# torch: the CPU build (torch==2.13.0) unless an NVIDIA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.mergebot-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setting up .venv (first run only)..." >&2
  python -m pip install -q --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      python -m pip install -q torch
    else
      python -m pip install -q "torch==2.13.0"
    fi
  fi
  python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
