#!/usr/bin/env bash
# Compares the exact logits digest of every fixture with the committed one, so a
# refactor that must keep CPU results bit-identical cannot drift unnoticed. Kernels are
# picked at run time by CPU feature, so the digest holds only on a CPU with the same
# AVX-512 feature set as the one that recorded it; elsewhere the test skips (exit 77).
# Usage: logits_digest_test.sh [--write] DIGEST_BIN MODELS_DIR EXPECTED_FILE
# --write records a new digest (only when a fixture is added or the math is meant to change).
set -euo pipefail
write=0
if [[ ${1:-} == --write ]]; then write=1; shift; fi
bin=$1 models=$2 expected=$3
have=$(grep -o -w -E 'avx512f|avx512bw|avx512vl|avx512_bf16|avx512_vnni|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ' | sed 's/ $//')
if (( write )); then
  { echo "# Exact logits digest of every fixture in tests/data/models (tests/golden/logits_digest_main.cc),"
    echo "# written by: bash tests/golden/logits_digest_test.sh --write build/release/bin/sluice-logits-digest tests/data/models tests/golden/logits_digest.txt"
    echo "# cpu flags: $have"
    OMP_NUM_THREADS=2 "$bin" "$models"; } > "$expected.new"
  mv "$expected.new" "$expected"
  exit 0
fi
want=$(sed -n 's/^# cpu flags: //p' "$expected")
if [[ "$want" != "$have" ]]; then
  echo "SKIP: the digest was recorded on a CPU with [$want]; this one has [$have]"
  exit 77
fi
if diff <(grep -v '^#' "$expected") <(OMP_NUM_THREADS=2 "$bin" "$models"); then
  echo "every fixture's logits are bit-identical to the recorded digest"
else
  echo "FAIL: logits differ from tests/golden/logits_digest.txt (lines above: < recorded, > now)"
  exit 1
fi
