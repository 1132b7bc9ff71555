#!/usr/bin/env bash
# The Python side of the engine comparison in BENCHMARKS.md: the PyPI `onnxruntime`
# (the same 1.32.0 wheel that `make setup` unpacks for the server) timed on the same
# models and the same tiles as `slidegrade bench engine`.
#
#   scripts/bench-ort-python.sh [MODELS_DIR] [-- extra flags for scripts/bench_ort.py]
#
# Builds target/release/slidegrade if needed and keeps its venv in .deps/bench-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-models}
shift || true
[[ "${1:-}" == "--" ]] && shift

[[ -e .deps/onnxruntime ]] || scripts/setup-native.sh
VENV=.deps/bench-venv
PINS="numpy==2.3.5 flatbuffers==25.12.19 packaging==25.0 protobuf==6.33.2"
if ! $VENV/bin/python -c 'import onnxruntime, numpy' 2>/dev/null; then
    python3 -m venv "$VENV"
    # --no-deps: the wheel's four dependencies are pinned above.
    $VENV/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
        .deps/wheels/onnxruntime-1.32.0-*.whl $PINS
fi
cargo build --release --locked --bin slidegrade
tiles=target/bench/tiles
target/release/slidegrade bench engine --models-dir "$models" --dump-tiles "$tiles" "$@"
echo
$VENV/bin/python scripts/bench_ort.py "$models" "$tiles" "$@"
