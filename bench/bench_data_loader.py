"""Throughput of pipeline.images.iter_batches: threads vs processes, per worker count.

Writes N synthetic photo-sized JPEGs to a temporary folder and decodes them with a CLIP-style
preprocessing (bicubic resize of the short side to 224, centre crop, normalisation), the way
the feature cache does. Usage: python bench/bench_data_loader.py [--n 512] [--size 500x375]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from pipeline.images import iter_batches

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)[:, None, None]
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)[:, None, None]


class ClipLikePreprocess:
    """Resize the short side to R (bicubic), centre crop R x R, scale to [0,1], normalise."""

    def __init__(self, r: int = 224) -> None:
        self.r = r

    def __call__(self, im: Image.Image) -> np.ndarray:
        w, h = im.size
        s = self.r / min(w, h)
        im = im.resize((max(self.r, round(w * s)), max(self.r, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = round((w - self.r) / 2), round((h - self.r) / 2)
        im = im.crop((left, top, left + self.r, top + self.r))
        a = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
        return (a - MEAN) / STD

    def describe(self) -> str:
        return f"bench-clip-like r={self.r}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(args.n):
            # Smooth structure plus noise: compresses like a photo, unlike pure noise.
            f = rng.uniform(0.005, 0.05, 3)
            img = np.stack([np.sin(f[c] * (xx + yy * (c + 1)) + i) for c in range(3)], -1)
            img = (img * 80 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
            p = os.path.join(d, f"{i}.jpg")
            Image.fromarray(img).save(p, quality=90)
            paths.append(p)
        pre = ClipLikePreprocess()
        print(f"{args.n} JPEGs {w}x{h}, batch {args.batch_size}, {os.cpu_count()} cpus")
        for backend in ("thread", "process"):
            for nw in [int(x) for x in args.workers.split(",")]:
                # warm-up pass (process start-up, file cache) then the timed pass
                for _pass in ("warm-up", "timed"):
                    t = time.perf_counter()
                    count = sum(
                        len(b.indices)
                        for b in iter_batches(paths, pre, args.batch_size, nw, backend=backend)
                    )
                    dt = time.perf_counter() - t
                assert count == args.n
                print(f"{backend:8s} workers={nw:2d}: {args.n / dt:7.1f} img/s")
        t = time.perf_counter()
        count = sum(len(b.indices) for b in iter_batches(paths, pre, args.batch_size, 0))
        print(f"inline   workers= 0: {args.n / (time.perf_counter() - t):7.1f} img/s")


if __name__ == "__main__":
    main()
