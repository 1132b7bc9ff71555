"""Times one core of libjpeg-turbo (through Pillow) on the tile streams that
`slidegrade bench decode --dump-tiles DIR` wrote: DIR/level<N>/<index>.jpg.

Prints a Markdown table: Mpx/s of decoded pixels per level, median of 3 passes, and the
share of that time Pillow spends outside the decoder (opening the stream, Python)."""

import io
import platform
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, features


def passes(streams, load, repeats=3):
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        for data in streams:
            image = Image.open(io.BytesIO(data))
            if load:
                image.load()
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds)


def main(root: Path) -> None:
    print("### One core of libjpeg-turbo on the same tiles\n")
    print(f"- Command: `scripts/bench-libjpeg-turbo.sh` (tiles from `{root}`)")
    print(f"- Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(
        f"- Pillow {Image.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}; "
        "one thread (libjpeg-turbo decodes a stream on one core)\n"
    )
    print("| level | tiles | libjpeg-turbo Mpx/s, 1 core | of which Pillow's open, % |")
    print("|---|---|---|---|")
    for level in sorted(root.glob("level*"), key=lambda p: int(p.name[5:])):
        streams = [p.read_bytes() for p in sorted(level.glob("*.jpg"))]
        if not streams:
            continue
        with Image.open(io.BytesIO(streams[0])) as first:
            w, h = first.size
        full = passes(streams, load=True)
        open_only = passes(streams, load=False)
        mpx = len(streams) * w * h / 1e6
        print(f"| {level.name[5:]} | {len(streams)} | {mpx / full:.1f} | {100 * open_only / full:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
