#!/usr/bin/env bash
# Issue-14 figures: the job store's claim rate on SQLite and on PostgreSQL, and
# `bench load` against one replica and against two sharing one PostgreSQL store and one
# data folder (round-robin in the client). Starts a throwaway PostgreSQL cluster from
# Debian's package (scripts/setup-postgres.sh) and removes it afterwards.
#
#   scripts/bench-replicas.sh [path/to/slidegrade]     (default target/release/slidegrade)
#
# Prints Markdown; BENCHMARKS.md ("Many replicas") holds a run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/release/slidegrade}")"
slide="$(realpath ../shared/data/slides/CMU-1-Small-Region.svs)"
pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
work="$(mktemp -d /tmp/slidegrade-bench-replicas.XXXXXX)"
as_pg=()
if [[ $(id -u) -eq 0 ]]; then chown postgres: "$work"; as_pg=(runuser -u postgres --); fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U slidegrade --auth=trust -E UTF8 --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -w -l "$work/pg.log" \
  -o "-k $work -c listen_addresses='' -p 5432" start >/dev/null
url="postgresql://slidegrade@${work//\//%2F}/postgres"

echo "## Store claims ($(nproc) cores, $(date -u +%FT%TZ))"
echo
echo "\`$bin bench store --jobs 2000 --claimers 1,4 --replicas 2\`"
echo
echo "SQLite:"
"$bin" bench store --jobs 2000 --claimers 1,4 --replicas 2
echo
echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') (Unix socket, fsync on):"
"$bin" bench store --jobs 2000 --claimers 1,4 --replicas 2 --database-url "$url"

"$bin" export-random --out "$work/models/random" --input-size 64 --mpp 8 >/dev/null
serve() { # port
  "$bin" serve --no-auth --bind "127.0.0.1:$1" --models-dir "$work/models" \
    --data-dir "$work/data" --database-url "$url" --shared-root "$(dirname "$slide")" \
    --workers 1 --intra-threads 1 --queue-capacity 1000 >"$work/serve-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.2; done
  echo "replica on $1 did not start" >&2; exit 1
}
load=(bench load --scenario path,get --requests 400 --concurrency 8 --slide "$slide" --drain-secs 900)

echo
echo "## One replica"
serve 18480
"$bin" "${load[@]}" --url http://127.0.0.1:18480
echo
echo "## Two replicas, round-robin"
serve 18481
"$bin" "${load[@]}" --url http://127.0.0.1:18480 --url http://127.0.0.1:18481
