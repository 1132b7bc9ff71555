# Two commands: `make run` serves the bundled models, `make test` runs every test.
# Both install what they need first (scripts/setup-*.sh) and are safe to rerun.
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
	scripts/setup-web.sh

build: setup
	$(CARGO) build --release --locked

# Loopback without API keys, so the API works out of the box; for a shared host create
# keys (`slidegrade keys create`) and serve without --no-auth.
run: build
	$(GPU_ENV) ./target/release/slidegrade serve --bind $(BIND) --models-dir $(MODELS) --data-dir var --no-auth $(SERVE_FLAGS)

# `--all-features` builds the training harness too, so its loss, metric and pipeline tests
# run; the `--quick` recipe then trains, exports and checks every model in the engine.
# The PostgreSQL job-store tests start throwaway clusters from Debian's `postgresql`.
# The browser test (web/tests/) drives the viewer in headless Chromium against the
# target/debug/slidegrade that the cargo tests just built.
# CARGO_INCREMENTAL=0: from a fresh clone (CI) there is no incremental cache to reuse,
# and without one this crate compiles about a third faster (BENCHMARKS.md, issue 13).
# Cargo keeps these artefacts beside the incremental ones, so a plain `cargo test` in an
# edit loop stays incremental. Exported for the whole target: a cargo command here with
# the other setting would rebuild this crate.
test: export CARGO_INCREMENTAL = 0
test: setup
	scripts/setup-web.sh --browser
	scripts/setup-postgres.sh
	$(CARGO) test --locked --all-targets --all-features
	$(CARGO) test --locked --doc --all-features
	SLIDEGRADE_BIN=./target/debug/slidegrade scripts/distill-and-export.sh --quick
	for m in target/distill-quick/models/*/; do ./target/debug/slidegrade check-model "$$m" || exit 1; done
	cd web && node --test tests/viewer.test.mjs

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --all-features -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(DEPS)
