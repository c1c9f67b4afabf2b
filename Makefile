# The two commands the README opens with, and a few conveniences. Everything else is
# CMake (CMakePresets.json); this file only sequences install → configure → build → run.
PRESET ?= release
BUILD := build/$(PRESET)
JOBS ?= $(shell nproc)
ARGS ?=
SOAK_SECONDS ?= 120

.PHONY: deps configure build serve test soak bench bench-http fixtures prequantized-fixtures clean container-test container-cuda

deps:
	@bash scripts/install-deps.sh
	@bash scripts/setup-venv.sh

configure: deps
	@cmake --preset $(PRESET) >/dev/null

build: configure
	@cmake --build --preset $(PRESET) -j $(JOBS)

# Starts sluiced on the embedded default model, listening on 127.0.0.1:50051.
serve: build
	$(BUILD)/bin/sluiced $(ARGS)

# Installs deps, builds, and runs the whole suite through ctest.
test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) --timeout 600

# 64 streams of good and bad calls against a real sluiced for 120 s (`make test` runs 20 s of
# it); prints the figures and writes them to $(BUILD)/soak-report.json.
soak: build
	SLUICE_BIN_DIR=$(CURDIR)/$(BUILD)/bin OMP_WAIT_POLICY=passive PYTHONDONTWRITEBYTECODE=1 \
	  bash tests/python/run_in_venv.sh build/venv tests/python/soak_test.py \
	  --seconds $(SOAK_SECONDS) --report $(BUILD)/soak-report.json

bench: build
	bash bench/run.sh $(BUILD)

# The HTTP (OpenAI-compatible) front door against gRPC on the same load: added TTFT/ITL and CPU.
bench-http: build
	bash bench/http_vs_grpc.sh $(BUILD)

# Regenerates the committed fixtures (needs: pip install torch transformers safetensors tokenizers).
fixtures:
	python3 tests/fixtures/make_fixtures.py
	python3 tests/fixtures/make_bad_safetensors.py

# The FP8 and GPTQ checkpoint fixtures (tests/data/models/PREQUANTIZED.md; also needs accelerate,
# for the cross-check with transformers' own FP8 loader).
prequantized-fixtures:
	python3 tests/fixtures/make_prequantized_fixtures.py

# Builds the image (Dockerfile) with buildah on a locally debootstrapped debian:bookworm,
# starts sluiced from it on loopback and checks health, one Generate and a clean SIGTERM
# exit (tests/container/container_test.py). Slow (minutes cold), so not part of `make test`.
container-test:
	@bash scripts/container-deps.sh
	@bash scripts/container.sh check

# The CUDA variant: the same Dockerfile on a build image with this machine's CUDA toolkit
# (scripts/container.sh cuda-base), then the same checks (it serves on the CPU without a GPU).
container-cuda:
	@bash scripts/container-deps.sh
	@bash scripts/container.sh check-cuda

clean:
	rm -rf build
