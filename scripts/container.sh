#!/usr/bin/env bash
# Builds and runs the sluiced container images with buildah (no Docker engine needed).
#
#   scripts/container.sh base         make docker.io/library/debian:bookworm locally (debootstrap)
#   scripts/container.sh build        base + build the CPU image (Dockerfile) as $SLUICE_IMAGE
#   scripts/container.sh cuda-base    make the CUDA 13 devel base image from this machine's toolkit
#   scripts/container.sh build-cuda   cuda-base + build the CUDA image as $SLUICE_CUDA_IMAGE
#   scripts/container.sh test [IMAGE] start sluiced from the image on loopback and check it
#   scripts/container.sh check        build + test + figures (make container-test)
#   scripts/container.sh check-cuda   build-cuda + test (make container-cuda)
#   scripts/container.sh buildah ARGS buildah with this script's storage (images, rmi, ...)
#
# Image registries need not be reachable: the base image is made with debootstrap from the
# Debian mirror this machine's apt uses, and every build runs with --pull=never.
#
# Storage: a buildah store of this script's own, $SLUICE_CONTAINER_ROOT/<driver> (default
# root /var/lib/sluice/containers), so nothing else's images or settings get in the way.
# SLUICE_CONTAINER_DRIVER picks the storage driver: overlay (fast: layers are shared, a
# cached rebuild takes seconds), vfs (works wherever chroot does, but keeps every layer,
# config-only ones included, as a full copy: slow and large, hence the Dockerfile's few
# instructions), or auto (default): overlay when this machine can mount an overlay, else
# vfs. ccache's folder for the build stage, $SLUICE_CONTAINER_CCACHE (default
# <root>/ccache), is shared by both and bound into the build with --volume.
set -euo pipefail
SOURCE_DIR=$(cd "$(dirname "$0")/.." && pwd)

ROOT=${SLUICE_CONTAINER_ROOT:-/var/lib/sluice/containers}
IMAGE=${SLUICE_IMAGE:-localhost/sluice:latest}
CUDA_IMAGE=${SLUICE_CUDA_IMAGE:-localhost/sluice:latest-cuda}
BASE_IMAGE=docker.io/library/debian:bookworm
CUDA_HOME_HOST=${CUDA_HOME:-/usr/local/cuda}
CCACHE_DIR_HOST=${SLUICE_CONTAINER_CCACHE:-$ROOT/ccache}

# Can this process mount an overlay file system? (What buildah's overlay driver needs.)
overlay_works() {
  [[ $(id -u) -eq 0 ]] || return 1
  local t ok=1
  t=$(mktemp -d "${TMPDIR:-/var/tmp}/sluice-overlay-probe.XXXXXX")
  mkdir "$t/lower" "$t/upper" "$t/work" "$t/merged"
  if mount -t overlay overlay -o "lowerdir=$t/lower,upperdir=$t/upper,workdir=$t/work" "$t/merged" 2>/dev/null; then
    umount "$t/merged" && ok=0
  fi
  rm -rf "$t"
  return $ok
}
DRIVER=${SLUICE_CONTAINER_DRIVER:-auto}
if [[ "$DRIVER" == auto ]]; then
  if overlay_works; then DRIVER=overlay; else DRIVER=vfs; fi
fi
export SLUICE_CONTAINER_DRIVER=$DRIVER  # the test's buildah calls use the same store
BUILDAH=(buildah --root "$ROOT/$DRIVER" --runroot "$ROOT/run-$DRIVER" --storage-driver "$DRIVER")

log() { echo "container: $*" >&2; }
image_exists() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# The Debian mirrors this machine's apt uses (deb822 .sources or one-line sources.list).
host_apt_uris() {
  { grep -h -E '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{for (i = 2; i <= NF; i++) print $i}'
    grep -h -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -E 's/\[[^]]*\]//' | awk '{print $2}'
  } | grep -E '/debian(-security)?/?$' || true
}

cmd_base() {
  if image_exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE exists; not rebuilt (scripts/container.sh buildah rmi $BASE_IMAGE to redo)"
    return
  fi
  local mirror security
  mirror=$(host_apt_uris | grep -v -- '-security' | head -1)
  security=$(host_apt_uris | grep -- '-security' | head -1)
  mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
  security=${DEBIAN_SECURITY_MIRROR:-${security:-http://deb.debian.org/debian-security}}
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/sluice-debootstrap.XXXXXX")
  # shellcheck disable=SC2064  # $tmp is meant to expand now
  trap "rm -rf '$tmp'; trap - RETURN" RETURN
  log "debootstrap --variant=minbase bookworm from $mirror (security: $security)"
  debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; return 1; }
  # apt inside the image reads the same mirrors as this machine, like debian:bookworm does.
  rm -f "$tmp/rootfs/etc/apt/sources.list"
  cat >"$tmp/rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  # What the official image does: no cached .debs, no pkgcache, no recommends prompt.
  cat >"$tmp/rootfs/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
  # The point release debootstrap installs, plus bookworm-updates and -security.
  cp /etc/resolv.conf "$tmp/rootfs/etc/resolv.conf"
  chroot "$tmp/rootfs" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$tmp/rootfs" apt-get upgrade -y -qq >/dev/null
  chroot "$tmp/rootfs" apt-get clean
  rm -rf "$tmp/rootfs/var/lib/apt/lists/"* "$tmp/rootfs/var/log/"*.log "$tmp/rootfs/var/cache/apt/"*.bin
  : >"$tmp/rootfs/etc/resolv.conf"
  echo "bookworm" >"$tmp/rootfs/etc/hostname"
  tar --numeric-owner --xattrs -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  local ctr
  ctr=$("${BUILDAH[@]}" from --pull=never scratch)
  "${BUILDAH[@]}" add "$ctr" "$tmp/rootfs.tar" / >/dev/null
  "${BUILDAH[@]}" config --os linux --arch amd64 --cmd bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="debian bookworm minbase, made by sluice scripts/container.sh" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  log "made $BASE_IMAGE ($(du -sh "$tmp/rootfs.tar" | cut -f1) tar)"
}

# build IMAGE [buildah bud args...]: the Dockerfile, layers cached, ccache bound in.
build_image() {
  local image=$1; shift
  mkdir -p "$CCACHE_DIR_HOST"
  local start=$SECONDS
  log "building $image"
  # Working containers an interrupted build left behind would pin their layers.
  "${BUILDAH[@]}" containers --format '{{.ContainerName}}' | grep -- '-working-container$' \
    | xargs -r "${BUILDAH[@]}" rm >/dev/null || true
  local bud=("${BUILDAH[@]}" bud --isolation chroot --pull=never --format docker --layers --force-rm
             --volume "$CCACHE_DIR_HOST:/ccache" "$@")
  local out
  out=$(mktemp "$ROOT/build.XXXXXX.log")
  if ! "${bud[@]}" -t "$image" . 2>&1 | tee "$out"; then
    rm -f "$out"
    return 1
  fi
  # Tag the build stage's last layer (the "--> ID" before stage 2 starts), so that pruning
  # the layers no tag reaches any more (earlier builds': vfs keeps each in full) keeps the
  # build stage's cache. Without that tag, nothing is pruned.
  local stage
  stage=$(awk '/^\[2\/[0-9]+\] STEP 1\// {print id; exit} /^--> [0-9a-f]+$/ {id = $2}' "$out")
  if [[ -n "$stage" ]] && "${BUILDAH[@]}" tag "$stage" "$image-build" 2>/dev/null; then
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
  else
    log "could not find the build stage's image in the output; old layers not pruned"
  fi
  rm -f "$out"
  log "built $image in $((SECONDS - start)) s; $("${BUILDAH[@]}" images --format '{{.Size}}' "$image")"
}

# The CUDA variant's build image: debian:bookworm plus this machine's CUDA toolkit (NVIDIA's
# own images cannot be pulled here). Only what nvcc and the CUDA runtime need goes in:
# compiler, headers, libdevice and the libraries named in CUDA_BASE_LIBS (default: the CUDA
# runtime, which is all sluiced links today; add e.g. "cublas cublasLt" when it links more).
cuda_version() { "$CUDA_HOME_HOST/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p'; }
cuda_base_image() { echo "localhost/sluice-cuda-devel:$(cuda_version)"; }

cmd_cuda_base() {
  [[ -x "$CUDA_HOME_HOST/bin/nvcc" ]] || { log "no nvcc under $CUDA_HOME_HOST (set CUDA_HOME)"; return 1; }
  local image version
  version=$(cuda_version)
  image=$(cuda_base_image)
  if image_exists "$image"; then
    log "$image exists; not rebuilt"
    return
  fi
  local cuda tmp
  cuda=$(readlink -f "$CUDA_HOME_HOST")
  tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/sluice-cuda-base.XXXXXX")
  # shellcheck disable=SC2064  # $tmp is meant to expand now
  trap "rm -rf '$tmp'; trap - RETURN" RETURN
  local dest="$tmp/usr/local/cuda-$version"
  mkdir -p "$dest/lib"
  cp -a "$cuda/bin" "$cuda/nvvm" "$cuda/include" "$dest/"
  [[ -d "$cuda/targets" ]] && cp -a "$cuda/targets" "$dest/"
  [[ -L "$cuda/lib64" ]] && cp -a "$cuda/lib64" "$dest/"
  [[ -d "$cuda/lib/stubs" ]] && cp -a "$cuda/lib/stubs" "$dest/lib/"
  [[ -d "$cuda/lib/cmake" ]] && cp -a "$cuda/lib/cmake" "$dest/lib/"
  local name
  for name in ${CUDA_BASE_LIBS:-cudart cudadevrt culibos}; do
    cp -a "$cuda/lib/lib$name".* "$cuda/lib/lib${name}_static.a" "$dest/lib/" 2>/dev/null || true
  done
  ln -s "cuda-$version" "$tmp/usr/local/cuda"
  tar --numeric-owner -C "$tmp" -cf "$tmp/cuda.tar" usr
  local ctr
  ctr=$("${BUILDAH[@]}" from --pull=never "$BASE_IMAGE")
  "${BUILDAH[@]}" add "$ctr" "$tmp/cuda.tar" / >/dev/null
  "${BUILDAH[@]}" config --env CUDA_HOME=/usr/local/cuda \
    --env PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="debian bookworm + CUDA $version toolkit from $cuda" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$image" >/dev/null
  log "made $image ($(du -sh "$tmp/cuda.tar" | cut -f1) of toolkit)"
}

# test IMAGE: tests/container/container_test.py in the venv.
test_image() {
  bash scripts/setup-venv.sh
  PYTHONDONTWRITEBYTECODE=1 build/venv/bin/python tests/container/container_test.py --image "$1" \
    --buildah "$SOURCE_DIR/scripts/container.sh buildah"
}

# check IMAGE BUILD-ARGS...: build, test, and print the figures (make container-test).
check_image() {
  local image=$1; shift
  local start=$SECONDS
  build_image "$image" "$@"
  local built=$SECONDS
  test_image "$image"
  log "$image: passed; built in $((built - start)) s, tested in $((SECONDS - built)) s;" \
      "image size $("${BUILDAH[@]}" images --format '{{.Size}}' "$image") ($DRIVER storage)"
}

[[ "${1:-}" == buildah ]] || cd "$SOURCE_DIR"
case "${1:-}" in
  base) cmd_base ;;
  build) cmd_base; shift; build_image "$IMAGE" "$@" ;;
  cuda-base) cmd_base; cmd_cuda_base ;;
  build-cuda)
    cmd_base; cmd_cuda_base; shift
    build_image "$CUDA_IMAGE" --build-arg BUILD_IMAGE="$(cuda_base_image)" --build-arg SLUICE_CUDA=ON \
      --build-arg NVIDIA_VISIBLE_DEVICES=all "$@" ;;
  test) test_image "${2:-$IMAGE}" ;;
  check) cmd_base; shift; check_image "$IMAGE" "$@" ;;
  check-cuda)
    cmd_base; cmd_cuda_base; shift
    check_image "$CUDA_IMAGE" --build-arg BUILD_IMAGE="$(cuda_base_image)" --build-arg SLUICE_CUDA=ON \
      --build-arg NVIDIA_VISIBLE_DEVICES=all "$@" ;;
  buildah) shift; exec "${BUILDAH[@]}" "$@" ;;
  *) sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2 ;;
esac
