#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned requirements and mdr_tf itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt setup.cfg | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing requirements (first run: ~1-2 minutes)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements.txt
  python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
