#!/usr/bin/env python3
"""Validates a FHIR R4 Bundle file with fhir.resources (R4 4.0.1 models).

Usage: .venv/bin/python scripts/validate_fhir.py FILE

Exit 0: the Bundle and every entry's resource parse as R4 models, every code with a required
binding is in its value set, every fullUrl is a unique urn:uuid, every reference resolves to
an entry, and embedded base64 data decodes. A JSON
summary of what the library parsed goes to stdout (tests compare it with their inputs).
Exit 1: the first error goes to stderr.
"""

import base64
import binascii
import hashlib
import json
import re
import sys

import fhir.resources
from fhir.resources import construct_fhir_element
from fhir.resources.bundle import Bundle
from fhir.resources.core.fhirabstractmodel import FHIRAbstractModel

UUID_URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# fhir.resources parses `code` elements as plain strings and lists each required binding's
# codes as field metadata (`enum_values`), without enforcing them; check_codes does. Where
# the library cuts a list short (it ends in "+"), the full R4 value set is given here.
FULL_CODE_LISTS = {
    ("DiagnosticReport", "status"): {
        "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
        "cancelled", "entered-in-error", "unknown",
    },
    ("Observation", "status"): {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown",
    },
}


def check_codes(model, path):
    """Every code with a required binding is in its value set (raises ValueError)."""
    for name, field in model.__fields__.items():
        value = getattr(model, name, None)
        if value is None:
            continue
        allowed = FULL_CODE_LISTS.get((model.resource_type, name))
        if allowed is None:
            listed = field.field_info.extra.get("enum_values")
            allowed = set(listed) if listed and "+" not in listed else None
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, FHIRAbstractModel):
                check_codes(item, f"{path}.{name}")
            elif allowed is not None and item not in allowed:
                raise ValueError(f"{path}.{name} = {item!r} is not one of {sorted(allowed)}")


def fail(message):
    print(f"validate_fhir: {message}", file=sys.stderr)
    sys.exit(1)


def references(node):
    """Every Reference.reference string anywhere in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def codes(concept):
    return [f"{c.system}|{c.code}" for c in (concept.coding or [])] if concept else []


def number(value):
    return None if value is None else float(value)


def summarise(model):
    """The parts of a parsed resource the tests check, read from the library's model."""
    kind = model.resource_type
    out = {"resourceType": kind}
    if kind == "Observation":
        out["status"] = model.status
        out["code"] = codes(model.code)
        if model.valueQuantity is not None:
            out["valueQuantity"] = {"value": number(model.valueQuantity.value), "code": model.valueQuantity.code}
        if model.valueCodeableConcept is not None:
            out["valueCodeableConcept"] = {
                "codes": codes(model.valueCodeableConcept),
                "text": model.valueCodeableConcept.text,
            }
        out["component"] = [
            {"code": codes(c.code), "value": codes(c.valueCodeableConcept)} for c in (model.component or [])
        ]
        out["specimen"] = model.specimen.reference if model.specimen else None
        out["device"] = model.device.reference if model.device else None
        out["subject_identifier"] = (
            model.subject.identifier.value if model.subject and model.subject.identifier else None
        )
    elif kind == "DiagnosticReport":
        out["status"] = model.status
        out["code"] = codes(model.code)
        out["category"] = [code for c in (model.category or []) for code in codes(c)]
        out["conclusion"] = model.conclusion
        out["result"] = [r.reference for r in (model.result or [])]
        out["subject"] = model.subject.reference if model.subject else None
        subject_id = model.subject.identifier if model.subject else None
        out["subject_identifier"] = subject_id.value if subject_id else None
        out["subject_display"] = model.subject.display if model.subject else None
        out["identifier"] = [
            {"type": codes(i.type), "system": i.system, "value": i.value} for i in (model.identifier or [])
        ]
        forms = []
        for form in model.presentedForm or []:
            data = base64.b64decode(form.data, validate=True)
            forms.append({"contentType": form.contentType, "sha256": hashlib.sha256(data).hexdigest()})
        out["presentedForm"] = forms
    elif kind == "Specimen":
        out["accessionIdentifier"] = model.accessionIdentifier.value if model.accessionIdentifier else None
        out["identifier"] = [i.value for i in (model.identifier or [])]
    elif kind == "Device":
        out["identifier"] = [i.value for i in (model.identifier or [])]
        out["deviceName"] = [d.name for d in (model.deviceName or [])]
        out["version"] = [v.value for v in (model.version or [])]
    return out


def main():
    if len(sys.argv) != 2:
        fail("usage: validate_fhir.py FILE")
    if fhir.resources.__fhir_version__ != "4.0.1":
        fail(f"fhir.resources models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1")
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {sys.argv[1]}: {e}")

    try:
        bundle = Bundle.parse_obj(data)
    except Exception as e:  # pydantic.ValidationError and the library's own errors
        fail(f"Bundle is not valid FHIR R4:\n{e}")
    try:
        check_codes(bundle, "Bundle")
    except ValueError as e:
        fail(f"code outside its required value set: {e}")

    full_urls = [e.fullUrl for e in bundle.entry or []]
    for url in full_urls:
        if not UUID_URN.match(url or ""):
            fail(f"fullUrl {url!r} is not a lower-case urn:uuid")
    if len(set(full_urls)) != len(full_urls):
        fail("fullUrls are not unique")
    for ref in references(data):
        if ref not in full_urls:
            fail(f"reference {ref!r} does not resolve within the Bundle")

    resources = []
    for i, entry in enumerate(data.get("entry", [])):
        raw = entry.get("resource", {})
        try:
            # Parse each resource again on its own, by its declared type.
            model = construct_fhir_element(raw.get("resourceType"), raw)
        except Exception as e:
            fail(f"entry {i} ({raw.get('resourceType')}) is not valid FHIR R4:\n{e}")
        try:
            resources.append(summarise(model))
        except (binascii.Error, ValueError) as e:
            fail(f"entry {i}: bad base64 data: {e}")

    json.dump(
        {
            "fhirVersion": fhir.resources.__fhir_version__,
            "type": bundle.type,
            "timestamp": data.get("timestamp"),
            "fullUrls": full_urls,
            "resources": resources,
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
