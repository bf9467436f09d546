#!/usr/bin/env bash
# The main job: set-up (first run only), then a merge of small generated models with the
# seed recipe's method (task_arithmetic). Prints where the merged model is.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
python -m merge_engine.demo "$@"
