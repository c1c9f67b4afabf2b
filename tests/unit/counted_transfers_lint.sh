#!/usr/bin/env bash
# Engine code moves step data between the host and the device only through the counted
# kernels::CopyToHost / CopyFromHost (kernels/tensor.h), so transfer_count_test sees
# every synchronisation point of a forward pass. A raw kernels::CopyBytes in engine/
# would be a host round trip that no test counts.
# Usage: counted_transfers_lint.sh SOURCE_DIR
set -euo pipefail
hits=$(grep -rn --include='*.cc' --include='*.h' 'CopyBytes(' "$1/engine" || true)
if [[ -n "$hits" ]]; then
  echo "FAIL: raw CopyBytes in engine/ (use kernels::CopyToHost / CopyFromHost):"
  echo "$hits"
  exit 1
fi
echo "engine/ moves data only through the counted transfers"
