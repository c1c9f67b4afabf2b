#!/usr/bin/env bash
# Creates the Python virtual environment the Python-client tests use (gRPC clients,
# Prometheus queries): scripts/setup-venv.sh [DIR], default build/venv.
# A fast no-op when DIR already holds this exact package set and the current build of
# the Python client (clients/python, stubs generated from proto/ as it is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-build/venv}

# Pinned so that a fresh clone tests against the same clients as this one.
PACKAGES=(
  grpcio==1.76.0 grpcio-tools==1.76.0 grpcio-health-checking==1.76.0 grpcio-reflection==1.76.0
  setuptools==80.9.0  # builds clients/python with the grpcio-tools above (no build isolation)
  matplotlib==3.11.2  # clients/loadgen/plot_loadgen.py
  openai==3.51.0  # tests/python/openai_test.py: the official client against the HTTP server
  PyYAML==6.0.3 kubernetes-validate==1.37.0 check-jsonschema==0.39.0  # tests/python/manifests_test.py (schemas bundled, offline)
)
stamp="$VENV/.sluice-packages"
want="${PACKAGES[*]}"
# sluice-client is reinstalled whenever a source of it or a .proto changes.
client="sluice-client $(find clients/python proto \( -name build -o -name dist -o -name '*.egg-info' \
  -o -name __pycache__ -o -path clients/python/proto -o -path clients/python/sluice_client/_proto/sluice \) -prune \
  -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"  # one setup at a time per venv (several people share a checkout)
flock 9
if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(sed -n 1p "$stamp")" == "$want" ]]; then
  [[ "$(sed -n 2p "$stamp")" == "$client" ]] && exit 0
else
  echo "setup-venv: creating $VENV with ${PACKAGES[*]}"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}"
fi
# The venv's pinned grpcio-tools and setuptools build it: no download, the same stubs as
# an isolated `pip install ./clients/python` makes (pyproject.toml pins the same tools).
echo "setup-venv: installing clients/python into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  ./clients/python
"$VENV/bin/python" -c "import sluice_client"
printf '%s\n%s\n' "$want" "$client" > "$stamp"
