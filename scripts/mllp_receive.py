#!/usr/bin/env python3
"""An LIS's results interface for the tests: python-hl7's asyncio MLLP server on
127.0.0.1 (on --port, or a free port; printed first as `PORT <n>`), which saves every message it
receives to OUT_DIR/<n>.hl7 and answers with an ACK built by python-hl7: AE to the first
message with --fail-first (so the sender must retry), AA otherwise. Runs until killed.

(hl7apy's MLLPServer is not used: its frame-matching regular expression backtracks for
minutes on a message with a long line, such as the base64 overlay of an ORU^R01.)

Usage: mllp_receive.py OUT_DIR [--fail-first] [--port N]
Used by tests/it/mllp_orders.rs with the pinned python-hl7 in .venv.
"""

import asyncio
import os
import sys

import hl7
from hl7.mllp import start_hl7_server

received = 0


async def main():
    if len(sys.argv) < 2:
        sys.exit("usage: mllp_receive.py OUT_DIR [--fail-first]")
    out_dir, fail_first = sys.argv[1], "--fail-first" in sys.argv[2:]
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0

    async def handle(reader, writer):
        global received
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                received += 1
                path = os.path.join(out_dir, f"{received}.hl7")
                with open(path + ".partial", "w", encoding="utf-8") as f:
                    f.write(str(message))
                os.rename(path + ".partial", path)
                code = "AE" if (fail_first and received == 1) else "AA"
                writer.writemessage(message.create_ack(code, application="TEST-LIS", facility="LAB"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    # The default 64 KiB stream limit is less than an ORU^R01 with its overlay.
    server = await start_hl7_server(handle, host="127.0.0.1", port=port, limit=64 * 1024 * 1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
