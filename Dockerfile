# Multi-stage build of sluiced. The build stage runs the same install script and CMake
# preset as the README; the runtime stage carries only the binaries, their shared
# libraries and the embedded demo model.
#   buildah bud --isolation chroot --storage-driver vfs --pull=never -t sluice .
FROM docker.io/library/debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh
COPY . .
# Portable binary: no -march=native in an image that may run on another CPU.
RUN cmake --preset cpu -DSLUICE_NATIVE=OFF -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_BENCH=OFF \
 && cmake --build --preset cpu --target sluiced sluice

FROM docker.io/library/debian:bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libdnnl2 libprometheus-cpp-pull1.0 libpcre2-8-0 libicu72 \
      libgomp1 ocl-icd-libopencl1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/cpu/bin/sluiced /src/build/cpu/bin/sluice /usr/local/bin/
COPY deploy/models/sluice-tiny /models/sluice-tiny
USER 65534:65534
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/sluiced", "--model=/models/sluice-tiny", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
