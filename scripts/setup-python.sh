#!/usr/bin/env bash
# Creates .venv/ with the pinned Python packages that the LIMS message tests use as
# independent validators (tests/lims_messages.rs):
#   - fhir.resources 6.4.0: the last release whose models are FHIR R4 (4.0.1); 6.5.0 moved
#     to R4B (4.3.0) and 7.x/8.x to R5 (with R4B/STU3 subpackages only). It needs pydantic 1.
#   - hl7apy 1.3.5: HL7 v2 parser with the v2.5.1 message structures, for strict validation.
#   - hl7 (python-hl7) 0.4.5: a second, independent HL7 v2 parser; it also unescapes values.
# Every package, dependencies included, is pinned. Idempotent: when .venv already holds
# exactly these pins, it does nothing. Usage: scripts/setup-python.sh [--force]
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=.venv
PYTHON=${PYTHON:-python3}
STAMP=$VENV/.slidegrade-requirements

REQUIREMENTS="fhir.resources==6.4.0
pydantic==1.10.27
email-validator==2.4.0
dnspython==2.9.2
idna==3.20
typing_extensions==4.16.0
hl7apy==1.3.5
hl7==0.4.5"

if [[ "${1:-}" != "--force" && -x $VENV/bin/python && -f $STAMP ]] &&
  [[ "$(cat "$STAMP")" == "$REQUIREMENTS" ]] &&
  $VENV/bin/python -c 'import fhir.resources, hl7apy, hl7' 2>/dev/null; then
  echo "setup-python: $VENV is up to date"
  exit 0
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup-python: creating $VENV with $($PYTHON --version 2>&1)"
  $PYTHON -m venv "$VENV"
fi
req=$(mktemp)
trap 'rm -f "$req"' EXIT
printf '%s\n' "$REQUIREMENTS" >"$req"
# --no-deps: every dependency is in the list above, so nothing unpinned comes in.
$VENV/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r "$req"
$VENV/bin/python -c 'import fhir.resources, hl7apy, hl7
assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__'
printf '%s\n' "$REQUIREMENTS" >"$STAMP"
echo "setup-python: installed into $VENV"
