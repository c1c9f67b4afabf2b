#!/usr/bin/env bash
# Installs every Debian package that building and testing sluice needs.
# A fast no-op when all of them are already present (dpkg-query check, no apt).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libdnnl-dev prometheus-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libpcre2-dev libicu-dev nlohmann-json3-dev libcpp-httplib-dev
  ocl-icd-opencl-dev opencl-c-headers
  python3 python3-venv curl openssl
  prometheus
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
