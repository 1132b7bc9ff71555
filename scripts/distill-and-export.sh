#!/usr/bin/env bash
# One command for the whole recipe of the paper (issue 3): the Teacher at the highest
# magnification, then Students at 5×, 2.5× and 1.25× for each ablation (CE, +KD, +FM,
# +AT+, all), exported to ONNX with a parity check in ONNX Runtime, and RESULTS.md.
#
#   scripts/distill-and-export.sh                 # default profile: synthetic data, writes
#                                                 # RESULTS.md and models/{teacher,student}-*
#   scripts/distill-and-export.sh --quick         # smoke run (minutes); writes under
#                                                 # target/distill-quick/ only
#   scripts/distill-and-export.sh --data PATH --layout sicapv2|folder|csv [--teacher-mpp 4]
#   scripts/distill-and-export.sh --seeds 1,2,3   # mean ± std over seeds
#
# Every other flag goes to `slidegrade train recipe` (see `--help`). Re-running with
# --resume continues interrupted runs from their checkpoints.
# SLIDEGRADE_PROFILE=dev uses the debug build. SLIDEGRADE_BIN=PATH uses that binary as it
# is (`make test` passes the one `cargo test --all-features` just built: a `cargo build`
# here would resolve features without the dev-dependencies and compile the dependency
# tree a second time, about 7 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${SLIDEGRADE_PROFILE:-release}"
quick=0
for arg in "$@"; do
    [[ "$arg" == "--quick" ]] && quick=1
    [[ "$arg" == "--help" || "$arg" == "-h" ]] && quick=2
done

[[ -e .deps/onnxruntime ]] || scripts/setup-native.sh

if [[ -n "${SLIDEGRADE_BIN:-}" ]]; then
    bin=$SLIDEGRADE_BIN
elif [[ "$profile" == "release" ]]; then
    cargo build --release --locked --features train --bin slidegrade
    bin=target/release/slidegrade
else
    cargo build --locked --features train --bin slidegrade
    bin=target/debug/slidegrade
fi

if [[ $quick == 2 ]]; then
    exec "$bin" train recipe --help
elif [[ $quick == 1 ]]; then
    out=target/distill-quick
    exec "$bin" train recipe --out "$out" --models-dir "$out/models" --results "$out/RESULTS.md" "$@"
else
    exec "$bin" train recipe --out target/distill --models-dir models --results RESULTS.md "$@"
fi
