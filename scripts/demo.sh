#!/usr/bin/env bash
# The main job: set-up (first run only), then the offline demo: a local Hub seeded with a
# small base and two donors, the bot and its web UI on http://127.0.0.1:7860 (prints the
# URL, and the command that pushes a change to a donor to watch the remerge arrive).
# `python -m merge_engine.demo` is the command-line-only demo (one merge, no server).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
python -m spaces_app.demo "$@"
