#!/usr/bin/env bash
# Creates the Python virtual environment the Python-client tests use (gRPC clients,
# Prometheus queries): scripts/setup-venv.sh [DIR], default build/venv.
# A fast no-op when DIR already holds this exact package set.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-build/venv}

# Pinned so that a fresh clone tests against the same clients as this one.
PACKAGES=(
  grpcio==1.76.0 grpcio-tools==1.76.0 grpcio-health-checking==1.76.0 grpcio-reflection==1.76.0
)
stamp="$VENV/.sluice-packages"
want="${PACKAGES[*]}"
if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "setup-venv: creating $VENV with ${PACKAGES[*]}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}"
echo "$want" > "$stamp"
