#!/usr/bin/env python3
"""Parses an HL7 v2.5.1 ORU^R01 file with two independent libraries.

Usage: .venv/bin/python scripts/parse_hl7.py FILE

1. hl7apy, validation level STRICT, against its v2.5.1 ORU_R01 structure: segment order,
   groups, cardinalities and datatypes. Errors fail; hl7apy's warnings (value not in an
   HL7 table, a length over the standard's maximum) are reported in the output.
   hl7apy reads every component of OBX-5 as an ST (at most 199 characters) whatever OBX-2
   says, while v2.5.1 gives ED data (ED.5, a TX) no such limit; so this pass sees the
   message with each ED's data replaced by a placeholder. The data itself is decoded and
   hashed from the full message in step 2.
2. python-hl7 (package `hl7`) reads the values and undoes the HL7 escaping, so the output
   shows the values as a receiver sees them.

Exit 0 prints JSON (MSH, OBR, SPM and every OBX); exit 1 prints the first error to stderr.
"""

import base64
import hashlib
import json
import os
import sys
import tempfile

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator


def fail(message):
    print(f"parse_hl7: {message}", file=sys.stderr)
    sys.exit(1)


def elide_ed_data(text):
    """The message with the data (5th component) of every ED OBX-5 replaced."""
    segments = []
    for seg in text.split("\r"):
        fields = seg.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED":
            parts = fields[5].split("^")
            if len(parts) > 4:
                parts[4] = "ELIDED"
            fields[5] = "^".join(parts)
        segments.append("|".join(fields))
    return "\r".join(segments)


def short(error):
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 400 else text[:400] + "..."


def strict_check(text):
    """hl7apy: strict parse and validation. Returns its warnings."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    if message.name != "ORU_R01" or message.version != "2.5.1":
        raise ValueError(f"expected ORU_R01 v2.5.1, got {message.name} v{message.version}")
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.txt")
        Validator.validate(message, report_file=report)  # raises the first error
        with open(report, encoding="utf-8") as f:
            return [line.strip() for line in f if line.startswith("Warning")]


def field(segment, index):
    """Raw (still escaped) field text, "" when absent."""
    try:
        return str(segment[index])
    except IndexError:
        return ""


def main():
    if len(sys.argv) != 2:
        fail("usage: parse_hl7.py FILE")
    try:
        with open(sys.argv[1], encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as e:
        fail(f"cannot read {sys.argv[1]}: {e}")
    if "\n" in text:
        fail("segments must be separated by CR only")

    try:
        warnings = strict_check(elide_ed_data(text))
    except Exception as e:  # hl7apy raises a family of exceptions
        fail(f"hl7apy strict validation failed: {short(e)}")

    try:
        msg = hl7.parse(text)
    except Exception as e:
        fail(f"python-hl7 cannot parse the message: {short(e)}")
    value = lambda seg, i: msg.unescape(field(seg, i))  # noqa: E731

    msh = msg.segment("MSH")
    obr = msg.segment("OBR")
    out = {
        "hl7apy_warnings": warnings,
        "segments": [str(seg[0]) for seg in msg],
        "msh": {
            # python-hl7 numbers MSH fields as the standard does (MSH-1 is the separator).
            "sending_application": value(msh, 3),
            "datetime": field(msh, 7),
            "message_type": field(msh, 9),
            "control_id": value(msh, 10),
            "processing_id": field(msh, 11),
            "version": field(msh, 12),
            "charset": field(msh, 18),
        },
        "obr": {
            "placer_order_number": value(obr, 2),
            "filler_order_number": value(obr, 3),
            "universal_service_id": field(obr, 4),
            "diagnostic_service_section": field(obr, 24),
            "result_status": field(obr, 25),
        },
        "pid": None,
        "nte": None,
        "orc": None,
        "spm": None,
        "obx": [],
    }
    try:
        pid = msg.segment("PID")
        name = pid[5][0]
        out["pid"] = {
            "patient_id": value(pid, 3),
            "family": msg.unescape(str(name[0])),
            "given": msg.unescape(str(name[1])) if len(name) > 1 else "",
        }
    except KeyError:
        pass
    try:
        out["nte"] = value(msg.segment("NTE"), 3)
    except KeyError:
        pass
    try:
        orc = msg.segment("ORC")
        out["orc"] = {
            "order_control": field(orc, 1),
            "placer_order_number": value(orc, 2),
            "filler_order_number": value(orc, 3),
        }
    except KeyError:
        pass
    try:
        spm = msg.segment("SPM")
        out["spm"] = {"specimen_id": value(spm, 2), "specimen_type": field(spm, 4)}
    except KeyError:
        pass

    try:
        observations = msg.segments("OBX")
    except KeyError:  # a failed job's ORU has none
        observations = []
    for seg in observations:
        kind = field(seg, 2)
        code = seg[3][0]
        obx = {
            "set_id": field(seg, 1),
            "type": kind,
            "code": msg.unescape(str(code[0])),
            "display": msg.unescape(str(code[1])) if len(code) > 1 else "",
            "coding_system": str(code[2]) if len(code) > 2 else "",
            "units": field(seg, 6),
            "status": field(seg, 11),
            "datetime": field(seg, 14),
        }
        if kind == "ED":
            ed = seg[5][0]
            data = base64.b64decode(str(ed[4]), validate=True)
            obx["value"] = {
                "source": str(ed[0]),
                "type": str(ed[1]),
                "subtype": str(ed[2]),
                "encoding": str(ed[3]),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        elif kind == "NM":
            obx["value"] = float(field(seg, 5))
        else:
            obx["value"] = value(seg, 5)
        out["obx"].append(obx)

    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
