#!/usr/bin/env bash
# Installs Debian's PostgreSQL server, for the tests of the PostgreSQL job store: they
# start throwaway clusters of their own (initdb in a temporary folder, a Unix socket, no
# TCP port) and remove them, so the package's own cluster is neither needed nor touched.
# `make run` does not need this: the default job store is embedded SQLite.
# Idempotent: installs only when initdb is missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
log() { printf 'setup-postgres: %s\n' "$*" >&2; }

# shellcheck source=scripts/apt.sh
source "$root/scripts/apt.sh"

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  log "PostgreSQL server binaries present: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
else
  # The package's post-install creates the `postgres` user, as which the tests run the
  # server when they run as root (PostgreSQL refuses root).
  apt_install postgresql
fi
