#!/usr/bin/env bash
# Installs what the browser viewer needs. Idempotent: every step checks first.
#   web/node_modules   `npm ci` from web/package-lock.json (exact pins): openseadragon, whose
#                      build the binary embeds (build.rs stops with a message without it),
#                      and playwright-core, which drives the browser test. Run only when
#                      node_modules is missing or was installed from another lock file.
#   /usr/bin/chromium  with --browser only: Debian's Chromium, for the browser test
#                      (web/tests/), only when missing. `make run` does not need it.
#   node, npm          Debian's nodejs/npm, only when npm is missing.
# Usage: scripts/setup-web.sh [--browser]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
web="$root/web"
stamp="$web/node_modules/.slidegrade-lock.sha256"

log() { printf 'setup-web: %s\n' "$*" >&2; }

# shellcheck source=scripts/apt.sh
source "$root/scripts/apt.sh"

if ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi

lock_sum="$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" &&
  -f "$web/node_modules/openseadragon/build/openseadragon/openseadragon.min.js" ]]; then
  log "web/node_modules is up to date"
else
  log "npm ci in web/"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$lock_sum" >"$stamp"
fi

# The test starts Chromium itself (playwright-core downloads no browser). A font, so that
# the screenshot has text on a minimal system.
if [[ "${1:-}" == "--browser" && ! -x /usr/bin/chromium ]]; then
  apt_install chromium fonts-dejavu-core
fi
log "viewer dependencies ready"
