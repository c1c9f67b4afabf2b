#!/usr/bin/env bash
# Installs the Debian packages that building and running the sluice container image needs
# (`make container-test`, `make container-cuda`): buildah, to build and run images without a
# Docker engine, and debootstrap, to make the debian:bookworm base image locally.
# Kept apart from install-deps.sh because `make test` never needs them.
# A fast no-op when all of them are already present (dpkg-query check, no apt).
set -euo pipefail

PACKAGES=(buildah debootstrap ca-certificates)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "container-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
