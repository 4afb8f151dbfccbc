#!/usr/bin/env bash
# Sets everything up, then runs the main job on the embedded default dataset (real
# MovieLens-100k). Extra arguments go to experiments.run (e.g. --trials=10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m experiments.run "$@"
