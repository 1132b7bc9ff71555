# Two commands: `make run` serves the bundled models, `make test` runs every test.
# Both install what they need first (scripts/setup-native.sh) and are safe to rerun.
#
#   make run GPU=1     use onnxruntime-gpu 1.31.1 + CUDA 13 / cuDNN 9 wheels (CUDA provider)
#   make run BIND=0.0.0.0:8080 MODELS=models

SHELL := /bin/bash
GPU ?= 0
BIND ?= 127.0.0.1:8080
MODELS ?= models
CARGO ?= cargo

DEPS := .deps
GPU_ENV :=
SERVE_FLAGS :=
ifeq ($(GPU),1)
SETUP_FLAGS := --gpu
GPU_ENV := ORT_DYLIB_PATH=$(CURDIR)/$(DEPS)/gpu/onnxruntime/libonnxruntime.so.1.31.1 \
	LD_LIBRARY_PATH=$(CURDIR)/$(DEPS)/gpu/lib:$(CURDIR)/$(DEPS)/gpu/onnxruntime$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}
SERVE_FLAGS := --device cuda
endif

.PHONY: setup run test build lint fmt clean

setup:
	scripts/setup-native.sh $(SETUP_FLAGS)
	scripts/setup-python.sh

build: setup
	$(CARGO) build --release --locked

# Loopback without API keys, so the API works out of the box; for a shared host create
# keys (`slidegrade keys create`) and serve without --no-auth.
run: build
	$(GPU_ENV) ./target/release/slidegrade serve --bind $(BIND) --models-dir $(MODELS) --data-dir var --no-auth $(SERVE_FLAGS)

test: setup
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --all-features -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(DEPS)
