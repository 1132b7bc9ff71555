#!/usr/bin/env python3
"""Sends HL7 v2 messages over MLLP with python-hl7's client, as an LIS would, and prints
each ACK as JSON (one line per message): its MSA code, the control id it acknowledges,
MSA-3 (the job id on AA) and the ERR code and text.

Usage: mllp_send.py HOST PORT FILE...   (each FILE holds one message, segments by \\r or \\n)
Used by tests/it/mllp_orders.rs with the pinned python-hl7 in .venv.
"""

import json
import sys

import hl7
from hl7.client import MLLPClient


def main():
    if len(sys.argv) < 4:
        sys.exit("usage: mllp_send.py HOST PORT FILE...")
    host, port = sys.argv[1], int(sys.argv[2])
    with MLLPClient(host, port) as client:
        for path in sys.argv[3:]:
            with open(path, encoding="utf-8") as f:
                message = f.read().replace("\r\n", "\r").replace("\n", "\r")
            raw = client.send_message(message)
            ack = hl7.parse(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            msa = ack.segment("MSA")
            out = {
                "message_type": str(ack.segment("MSH")[9]),
                "code": str(msa[1]),
                "control_id": str(msa[2]),
                "job_id": str(msa[3]) if len(msa) > 3 else "",
                "error_code": "",
                "error_text": "",
            }
            try:
                err = ack.segment("ERR")
                out["error_code"] = str(err[3][0][0])
                out["error_text"] = ack.unescape(str(err[3][0][1]))
            except KeyError:
                pass
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
