#!/usr/bin/env bash
# What a crash in the slide decoder does to the server, with and without the decoder
# child process (RELIABILITY.md). A preloaded shim makes OpenSlide's `openslide_open`
# (and `openslide_detect_vendor`) raise SIGSEGV for any file whose name contains `crash-`, standing in for a decoder bug
# hit by a malicious slide; everything else reaches the real OpenSlide.
#
#   scripts/isolation-demo.sh [SLIDEGRADE_BINARY]      default: target/debug/slidegrade
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/debug/slidegrade}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/shim.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
/* openslide-rs asks for the vendor before it opens, so both entry points crash. */
const char *openslide_detect_vendor(const char *filename) {
    if (strstr(filename, "crash-")) *(volatile int *)0 = 1; /* a real fault: a raised signal would be survived */
    const char *(*real)(const char *) =
        (const char *(*)(const char *))dlsym(RTLD_NEXT, "openslide_detect_vendor");
    return real(filename);
}
void *openslide_open(const char *filename) {
    if (strstr(filename, "crash-")) *(volatile int *)0 = 1; /* a real fault: a raised signal would be survived */
    void *(*real)(const char *) = (void *(*)(const char *))dlsym(RTLD_NEXT, "openslide_open");
    return real(filename);
}
C
cc -shared -fPIC -o "$work/shim.so" "$work/shim.c" -ldl || exit 1
"$bin" export-random --out "$work/models/random" --input-size 32 >/dev/null || exit 1
printf 'whatever' >"$work/crash-me.svs"
cmu=$root/../shared/data/slides/CMU-1-Small-Region.svs

run() { # $1: label, rest: extra serve flags
    local label=$1; shift
    echo "== $label"
    LD_PRELOAD="$work/shim.so" "$bin" serve --no-auth --bind 127.0.0.1:0 --workers 1 \
        --models-dir "$work/models" --data-dir "$work/data-$label" --log-format json "$@" \
        2>"$work/log-$label" &
    local pid=$! addr=""
    for _ in $(seq 100); do
        addr=$(grep -o '"addr":"[^"]*"' "$work/log-$label" | head -1 | cut -d'"' -f4)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    echo "healthz before:   $(curl -s -o /dev/null -w '%{http_code}' "http://$addr/healthz")"
    echo "upload crash-me:  $(curl -s -w ' %{http_code}' -F "slide=@$work/crash-me.svs" "http://$addr/v1/slides")"
    sleep 0.5
    echo "healthz after:    $(curl -s -o /dev/null -w '%{http_code}' "http://$addr/healthz")"
    if [ -f "$cmu" ]; then
        echo "upload CMU after: $(curl -s -o /dev/null -w '%{http_code}' -F "slide=@$cmu" "http://$addr/v1/slides")"
    fi
    if kill -0 "$pid" 2>/dev/null; then
        echo "server process:   running"
        kill "$pid"; wait "$pid" 2>/dev/null
    else
        wait "$pid"; local rc=$?
        echo "server process:   gone, exit status $rc ($((rc > 128 ? rc - 128 : 0)) = signal number)"
    fi
}

run in-process --decode-in-process
run child-process
