#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for a bounded time (not part of `make test`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 120 s, every target
#
# Installs cargo-fuzz (pinned) when missing. cargo-fuzz needs nightly-only rustc flags
# (-Zsanitizer=address); with only a stable toolchain, RUSTC_BOOTSTRAP=1 unlocks them.
# Corpora grow in fuzz/corpus/<target>/ (git-ignored), seeded from tests/hostile/ and the
# shared slides; crashes land in fuzz/artifacts/<target>/. Each target's last libFuzzer
# status line (executions, coverage) is printed at the end.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.1
seconds=${1:-120}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
scripts/setup-native.sh >/dev/null

export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(manifest submission slide_open)
fi

seed() {
    local target=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case $target in
        manifest)
            cp -n fuzz/seeds/manifest/* "$dir"/ ;;
        submission)
            cp -n fuzz/seeds/submission/* "$dir"/ ;;
        slide_open)
            cp -n tests/hostile/*.tiff tests/hostile/*.svs "$dir"/
            # Small real slides from the shared data, when present.
            for f in ../shared/data/slides/camelyon-multiframe.dcm ../shared/data/slides/CMU-1-Small-Region.svs; do
                [ -f "$f" ] && cp -n "$f" "$dir"/
            done ;;
    esac
}

summary=()
for target in "${targets[@]}"; do
    seed "$target"
    log=fuzz/artifacts/$target.log
    mkdir -p fuzz/artifacts/"$target"
    echo "== $target: ${seconds}s"
    # OpenSlide's open asks for 8-32 GiB buffers on some 4 KB TIFFs and copes when it is
    # refused (RELIABILITY.md); a larger malloc limit lets slide_open fuzz past that,
    # while the RSS limit still catches memory really used.
    # And ASan's allocator must return NULL on such a request, as glibc's does in
    # production, instead of aborting.
    malloc_limit=4096
    [ "$target" = slide_open ] && malloc_limit=65536
    (cd fuzz && ASAN_OPTIONS=allocator_may_return_null=1 cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -malloc_limit_mb="$malloc_limit" \
        -max_len=4194304 -timeout=30 -print_final_stats=1) >"$log" 2>&1 && rc=0 || rc=$?
    summary+=("$target rc=$rc $(grep -E '^#[0-9]+' "$log" | tail -1)")
    grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|==ERROR|panicked|SUMMARY' "$log" || true
done
printf '%s\n' "${summary[@]}"
