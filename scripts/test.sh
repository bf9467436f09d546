#!/usr/bin/env bash
# The test command: set-up (first run only), lint, then the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k recipe`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ruff check .
# The browser test drives Debian's headless Chromium; without it that one test skips.
if ! command -v chromium >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver; } \
    >/dev/null 2>&1 || echo "could not install chromium: the browser test will skip" >&2
fi
# The Postgres tests run a throwaway server from Debian's postgresql; without it they skip.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  { $SUDO apt-get update -q && $SUDO apt-get install -y -q postgresql; } \
    >/dev/null 2>&1 || echo "could not install postgresql: the Postgres tests will skip" >&2
fi
set +e
python -m pytest -q "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$code"
