#!/usr/bin/env bash
# Creates .venv/ with the pinned Python packages that the LIMS message tests use as
# independent validators (tests/lims_messages.rs):
#   - fhir.resources 6.4.0: the last release whose models are FHIR R4 (4.0.1); 6.5.0 moved
#     to R4B (4.3.0) and 7.x/8.x to R5 (with R4B/STU3 subpackages only). It needs pydantic 1.
#   - hl7apy 1.3.5: HL7 v2 parser with the v2.5.1 message structures, for strict validation.
#   - hl7 (python-hl7) 0.4.5: a second, independent HL7 v2 parser; it also unescapes values.
#   - schemathesis 4.32.5: drives the live server from its own /openapi.json with every
#     check (tests/it/api_conformance.rs); the rest of the list below it is its closure.
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
idna==3.21
typing_extensions==4.16.0
hl7apy==1.3.5
hl7==0.4.5
schemathesis==4.32.5
anyio==4.16.0
certifi==2026.10.19.post1
charset_normalizer==3.5.3
click==8.5.1
graphql_core==3.3.2
harfile==0.6.0
hypothesis==6.170.27
hypothesis_graphql==0.13.5
iniconfig==2.3.1
jsonschema_rs==0.60.3
markdown_it_py==4.3.0
markupsafe==3.0.4
mdurl==0.1.2
packaging==26.4
pluggy==1.7.0
pygments==2.21.0
pyrate_limiter==4.6.0
pytest==9.2.0
pyyaml==6.0.4
requests==2.34.2
rich==15.0.0
sortedcontainers==2.4.0
urllib3==2.8.0
werkzeug==3.1.9"

if [[ "${1:-}" != "--force" && -x $VENV/bin/python && -f $STAMP ]] &&
  [[ "$(cat "$STAMP")" == "$REQUIREMENTS" ]] &&
  $VENV/bin/python -c 'import fhir.resources, hl7apy, hl7, schemathesis' 2>/dev/null; then
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
$VENV/bin/python -c 'import fhir.resources, hl7apy, hl7, schemathesis
assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__'
printf '%s\n' "$REQUIREMENTS" >"$STAMP"
echo "setup-python: installed into $VENV"
