#!/usr/bin/env bash
# One core of libjpeg-turbo decoding the same JPEG tiles as `slidegrade bench decode`
# (issue 16 §4). Pillow's PyPI wheel bundles libjpeg-turbo; its version is printed.
#
#   scripts/bench-libjpeg-turbo.sh [-- extra flags for slidegrade bench decode]
#
# Builds target/release/slidegrade if needed and keeps its venv in .deps/bench-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${1:-}" == "--" ]] && shift

[[ -e .deps/onnxruntime ]] || scripts/setup-native.sh
VENV=.deps/bench-venv
if ! $VENV/bin/python -c 'import PIL' 2>/dev/null; then
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    $VENV/bin/python -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
        pillow==12.3.0
fi
cargo build --release --locked --bin slidegrade
tiles=target/bench/jpeg-tiles
rm -rf "$tiles"
target/release/slidegrade bench decode --dump-tiles "$tiles" "$@"
echo
$VENV/bin/python scripts/bench_libjpeg_turbo.py "$tiles"
