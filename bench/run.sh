#!/usr/bin/env bash
# Runs the benchmarks that need no extra downloads and prints their figures.
# Usage: bench/run.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build/release}
here=$(cd "$(dirname "$0")" && pwd)
echo "== model forward, embedded default model"
"$build/bin/sluice-bench-model" --model "$here/../deploy/models/sluice-tiny" --context 512 --decode_tokens 64
if [[ -d "$here/synthetic" ]]; then
  for m in "$here"/synthetic/*/; do
    echo "== model forward, $(basename "$m")"
    "$build/bin/sluice-bench-model" --model "$m" --context 512 --decode_tokens 16
  done
fi
if [[ -x "$here/tokenizer/run.sh" ]]; then
  echo "== tokenizer"
  bash "$here/tokenizer/run.sh" "$build"
fi
