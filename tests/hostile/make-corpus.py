#!/usr/bin/env python3
"""Regenerates the committed hostile-input files (tests/hostile_input.rs reads them).

huge-dimensions.tiff: a 2 KB classic TIFF whose only directory declares a tiled RGB image
of 1,000,000 x 1,000,000 pixels (65536-pixel tiles, none present: offsets and byte counts
0) at 0.5 um/px (XResolution 20000 px/cm). A valid header for a 3 TB image.

archive.svs: a ZIP archive (one deflated member) under a slide's extension.
"""
import io
import struct
import zipfile
from pathlib import Path

HERE = Path(__file__).parent


def tiled_tiff(width, height, tile, px_per_cm):
    tiles = ((width + tile - 1) // tile) * ((height + tile - 1) // tile)
    # (tag, type, values); type 3 SHORT, 4 LONG, 5 RATIONAL.
    entries = sorted([
        (256, 4, [width]), (257, 4, [height]), (258, 3, [8, 8, 8]), (259, 3, [1]),
        (262, 3, [2]), (277, 3, [3]), (284, 3, [1]), (322, 4, [tile]), (323, 4, [tile]),
        (324, 4, [0] * tiles), (325, 4, [0] * tiles),
        (282, 5, [(px_per_cm, 1)]), (283, 5, [(px_per_cm, 1)]), (296, 3, [3]),
    ])
    ifd_offset = 8
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd, extra = bytearray(struct.pack("<H", len(entries))), bytearray()
    for tag, kind, values in entries:
        if kind == 3:
            data = b"".join(struct.pack("<H", v) for v in values)
        elif kind == 4:
            data = b"".join(struct.pack("<I", v) for v in values)
        else:
            data = b"".join(struct.pack("<II", *v) for v in values)
        if len(data) <= 4:
            ifd += struct.pack("<HHI", tag, kind, len(values)) + data.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", tag, kind, len(values), extra_offset + len(extra))
            extra += data
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", ifd_offset) + bytes(ifd) + bytes(extra)


def zip_archive():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("slide.svs", b"not a slide, a zip member\n" * 20)
    return buf.getvalue()


if __name__ == "__main__":
    (HERE / "huge-dimensions.tiff").write_bytes(tiled_tiff(1_000_000, 1_000_000, 65536, 20000))
    (HERE / "archive.svs").write_bytes(zip_archive())
