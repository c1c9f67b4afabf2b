#!/usr/bin/env bash
# run_in_venv.sh VENV SCRIPT [ARGS...]: runs a Python test in the venv, or fails saying how to make it.
set -euo pipefail
venv=$1; shift
if [[ ! -x "$venv/bin/python" ]]; then
  echo "no Python venv at $venv: run scripts/setup-venv.sh (make test does)" >&2
  exit 1
fi
exec "$venv/bin/python" "$@"
