#!/usr/bin/env bash
# Runs in the image's build stage: stage.sh BIN_DIR OUT. Lays out what the runtime stage
# copies, in two trees so that the runtime's apt layer stays cached across code changes:
#   OUT/deps/  usr/share/sluice/runtime-packages (the Debian packages owning every shared
#              library sluiced and sluice load, found with ldd + dpkg -S) and any library
#              no package owns (the CUDA runtime of the CUDA variant), kept at its path,
#              with an /etc/ld.so.conf.d entry for its folder
#   OUT/app/   the stripped binaries, the entrypoint and health check, the default model
set -euo pipefail
bin=$1 out=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out/deps/usr/share/sluice" "$out/app/usr/local/bin" "$out/app/usr/share/sluice/models"

install -m 0755 -s "$bin/sluiced" "$bin/sluice" "$out/app/usr/local/bin/"
install -m 0755 "$src/deploy/container/entrypoint.sh" "$out/app/usr/local/bin/sluiced-entrypoint"
install -m 0755 "$src/deploy/container/healthcheck.sh" "$out/app/usr/local/bin/sluiced-healthcheck"
cp -r "$src/deploy/models/sluice-demo" "$out/app/usr/share/sluice/models/"
chmod -R a+rX "$out/app/usr/share/sluice"

packages=() unowned_dirs=()
for lib in $(ldd "$bin/sluiced" "$bin/sluice" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
  pkg=""
  # dpkg knows a file by the path its package shipped (/lib/... or /usr/lib/..., merged-/usr or not).
  for candidate in "$lib" "$(readlink -f "$lib")" "${lib#/usr}" "/usr$lib" "$(readlink -f "$lib" | sed 's|^/usr||')"; do
    pkg=$(dpkg-query -S "$candidate" 2>/dev/null | head -1 | cut -d: -f1) && [[ -n "$pkg" ]] && break
  done
  if [[ -n "$pkg" ]]; then
    packages+=("$pkg")
  else
    dir=$(dirname "$lib")
    mkdir -p "$out/deps$dir"
    cp -L "$lib" "$out/deps$dir/"
    unowned_dirs+=("$dir")
    echo "stage: $lib belongs to no package; copied" >&2
  fi
done
printf '%s\n' "${packages[@]}" | sort -u >"$out/deps/usr/share/sluice/runtime-packages"
if ((${#unowned_dirs[@]})); then
  mkdir -p "$out/deps/etc/ld.so.conf.d"
  printf '%s\n' "${unowned_dirs[@]}" | sort -u >"$out/deps/etc/ld.so.conf.d/sluice.conf"
fi
echo "stage: runtime packages: $(tr '\n' ' ' <"$out/deps/usr/share/sluice/runtime-packages")" >&2
