# sluiced image. The build stage installs the toolchain with scripts/install-deps.sh and
# builds with the release preset (portable: no -march=native); the runtime stage holds only
# the shared libraries sluiced and sluice load, a non-root user, the embedded default model
# and an entrypoint that turns SLUICE_* environment variables into flags
# (deploy/container/entrypoint.sh lists them).
#
#   make container-test      build with buildah (scripts/container.sh) and test it
#   buildah bud --isolation chroot --storage-driver vfs --pull=never --format docker --layers -t sluice .
#   docker build -t sluice .
#
# CUDA variant (make container-cuda): the same file on a build image with the CUDA toolkit;
# the runtime stage then also carries the CUDA runtime libraries sluiced links:
#   --build-arg BUILD_IMAGE=localhost/sluice-cuda-devel:13.0 --build-arg SLUICE_CUDA=ON \
#   --build-arg NVIDIA_VISIBLE_DEVICES=all
#
# buildah's vfs storage keeps every layer, config-only ones included, as a full copy: so
# there are few instructions, and those that only set config come early, while the image
# is small.
ARG BUILD_IMAGE=docker.io/library/debian:bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm

FROM ${BUILD_IMAGE} AS build
ARG SLUICE_CUDA=OFF CUDA_ARCHITECTURES=80-real;86-real;89-real;90 BUILD_JOBS=
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
# /ccache: a host folder bound in with `buildah bud --volume DIR:/ccache` keeps ccache's
# results between builds (scripts/container.sh does); without one it is just empty.
RUN cd /src \
 && export CCACHE_DIR=/ccache CCACHE_MAXSIZE=2G \
 && cuda_args="" \
 && if [ "$SLUICE_CUDA" = ON ]; then cuda_args="-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES"; fi \
 && cmake --preset release -DSLUICE_NATIVE=OFF -DSLUICE_CUDA="$SLUICE_CUDA" \
      -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_BENCH=OFF $cuda_args >/dev/null \
 && cmake --build --preset release --target sluiced sluice -j "${BUILD_JOBS:-$(nproc)}" \
 && { ccache --show-stats | grep -iE 'hits|misses' || true; } \
 && bash deploy/container/stage.sh build/release/bin /out

FROM ${RUNTIME_IMAGE}
ARG NVIDIA_VISIBLE_DEVICES=
# Inside a container sluiced must listen on all interfaces; it warns when that is done
# with neither TLS nor API keys (SLUICE_API_KEYS_FILE, SLUICE_TLS_CERT/KEY).
ENV SLUICE_MODEL=/usr/share/sluice/models/sluice-demo \
    SLUICE_LISTEN=0.0.0.0:50051 \
    SLUICE_METRICS_LISTEN=0.0.0.0:9464 \
    SLUICE_HTTP_LISTEN=0.0.0.0:8000 \
    NVIDIA_VISIBLE_DEVICES=${NVIDIA_VISIBLE_DEVICES} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="sluiced" \
      org.opencontainers.image.description="sluice model-serving daemon (gRPC 50051, OpenAI HTTP 8000, Prometheus /metrics 9464)"
EXPOSE 50051 9464 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["/usr/local/bin/sluiced-healthcheck"]
ENTRYPOINT ["/usr/local/bin/sluiced-entrypoint"]
# The package list first: this layer stays cached while only sluice's own code changes.
COPY --from=build /out/deps/ /
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(cat /usr/share/sluice/runtime-packages) >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
 && ldconfig \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin sluice
COPY --from=build /out/app/ /
USER 10001:10001
