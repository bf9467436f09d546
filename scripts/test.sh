#!/usr/bin/env bash
# The test command: set-up (first run only), lint, then the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k recipe`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ruff check .
set +e
python -m pytest -q "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$code"
