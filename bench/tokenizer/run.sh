#!/usr/bin/env bash
# Runs the C++ tokenizer benchmark and the HF peer on the same corpus.
# Usage: bench/tokenizer/run.sh [BUILD_DIR] [extra tokenizer_bench flags]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build/release}
shift || true
exec "$build/bin/tokenizer_bench" --hf_peer="$here/hf_peer.py" "$@"
