#!/usr/bin/env bash
# Issue 16 §5: the CUDA execution provider against the CPU, in one short run.
#
#   scripts/gpu-check.sh            # on a machine with an NVIDIA GPU and driver
#
# 1. Builds nothing it can reuse: the release binary (plain, no `train` feature) only if
#    missing, the GPU ONNX Runtime (onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels from PyPI,
#    `scripts/setup-native.sh --gpu`) only if .deps/gpu is absent.
# 2. `bench devices`: every shipped model on the same tiles through a CPU and a CUDA
#    session; fails if CUDA does not load or any output differs by more than 1e-4.
# 3. `bench slide` on the benchmark slide with --device cpu, then cuda (--require-cuda):
#    time per stage and speed-up against the Teacher.
# It prints one Markdown block (machine, commands, tables) for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -e .deps/gpu/onnxruntime ]] || scripts/setup-native.sh --gpu
bin="${SLIDEGRADE_BIN:-target/release/slidegrade}"
[[ -x "$bin" ]] || cargo build --release --locked --bin slidegrade
export ORT_DYLIB_PATH="$PWD/.deps/gpu/onnxruntime/libonnxruntime.so.1.31.1"
export LD_LIBRARY_PATH="$PWD/.deps/gpu/lib:$PWD/.deps/gpu/onnxruntime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
models="--model teacher-10x --model student-5x --model student-2p5x --model student-1p25x"

echo "## GPU check ($(date -u +%FT%TZ))"
echo
echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
echo
# shellcheck disable=SC2086 # $models is a list of flags
"$bin" bench devices $models --batch-size 64 --seconds 2
echo
# shellcheck disable=SC2086
"$bin" bench slide $models --repeats 3 --device cpu
echo
# shellcheck disable=SC2086
"$bin" bench slide $models --repeats 3 --device cuda --require-cuda
