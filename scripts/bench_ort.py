"""Times the Python `onnxruntime` package on the tiles that `slidegrade bench engine
--dump-tiles DIR` wrote, with the same models, batch sizes and intra-op threads, so that
the two tables compare like with like. Timed: normalisation (numpy), session.run, softmax
— the same work as `EnginePool::infer`.

Usage: python bench_ort.py MODELS_DIR TILES_DIR [--batch-sizes 1,4,16,64] [--threads 1,2]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import numpy as np
import onnxruntime as ort


def throughput(sess, feed_name, batch_u8, manifest, seconds):
    spec = manifest["input"]
    mean = np.array(spec["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(spec["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    scale = np.float32(spec["scale"])
    done = 0
    start = time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        x = (batch_u8.transpose(0, 3, 1, 2).astype(np.float32) * scale - mean) / std
        logits, _cam = sess.run(None, {feed_name: x})
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        _probs = e / e.sum(axis=1, keepdims=True)
        done += len(batch_u8)
    return done / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models_dir")
    p.add_argument("tiles_dir")
    p.add_argument("--batch-sizes", default="1,4,16,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    batches = [int(b) for b in a.batch_sizes.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
        platform.processor(),
    )
    print("### Engine throughput, Python onnxruntime\n")
    print(f"- Machine: {cpu}, {os.cpu_count()} cores")
    print(f"- Command: `python {' '.join(sys.argv)}`")
    print(f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}")
    print(f"- onnxruntime {ort.__version__}, numpy {np.__version__}, Python {platform.python_version()}\n")
    print("| model | tile px | intra-op threads | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|---|" + "---|" * len(batches))
    for name in sorted(os.listdir(a.models_dir)):
        mdir = os.path.join(a.models_dir, name)
        tiles_path = os.path.join(a.tiles_dir, f"{name}.rgb")
        if not os.path.isfile(os.path.join(mdir, "model.json")) or not os.path.isfile(tiles_path):
            continue
        manifest = json.load(open(os.path.join(mdir, "model.json")))
        size = manifest["input"]["size_px"]
        tiles = np.fromfile(tiles_path, dtype=np.uint8).reshape(-1, size, size, 3)
        for t in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = t
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(
                os.path.join(mdir, "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            feed = manifest["input"]["name"]
            row = [name, str(size), str(t)]
            for b in batches:
                batch = tiles[:b]
                throughput(sess, feed, batch, manifest, 0.0)  # warm-up
                rates = [throughput(sess, feed, batch, manifest, a.seconds) for _ in range(a.repeats)]
                row.append(f"{statistics.median(rates):.0f}")
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
