"""What JPEG draft decoding (load_rgb(draft_min_side=...)) costs in pixels and saves in time.

For photo-like JPEGs of several sizes, compares the CLIP-style 224 preprocessing of a full decode
with that of a draft decode whose shorter side is kept >= k * 224, in 8-bit units.
Usage: python bench/bench_data_draft.py
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from PIL import Image

from bench.bench_data_loader import STD, ClipLikePreprocess
from pipeline.images import load_rgb


def photo_like(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Multi-scale structure: smooth colour fields, sharp edges, fine texture and noise."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(6):  # hard-edged discs
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        base[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    fine = 20 * np.sin(xx * rng.uniform(0.05, 0.5) + yy * rng.uniform(0.05, 0.5))[..., None]
    img = base + fine + rng.normal(0, 6, base.shape)
    return img.clip(0, 255).astype(np.uint8)


def timed(fn, repeats: int = 3):
    """(result, best wall time of ``repeats`` calls)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    pre = ClipLikePreprocess(224)
    scale = 255 * STD  # normalised units -> 8-bit units
    with tempfile.TemporaryDirectory() as d:
        for w, h in [(1024, 768), (2048, 1536), (4000, 3000)]:
            p = os.path.join(d, f"{w}.jpg")
            Image.fromarray(photo_like(w, h)).save(p, quality=90)
            ref, t_full = timed(lambda p=p: pre(load_rgb(p)))
            for k in (1, 2, 4):
                out, dt = timed(lambda p=p, k=k: pre(load_rgb(p, draft_min_side=224 * k)))
                diff = np.abs(out - ref) * scale
                print(
                    f"{w}x{h}: draft >= {224 * k:4d}px  mean |diff| {diff.mean():5.2f}  "
                    f"p99 {np.percentile(diff, 99):5.2f}  max {diff.max():6.2f} (8-bit units)  "
                    f"time {dt * 1e3:6.1f} ms vs full {t_full * 1e3:6.1f} ms"
                )


if __name__ == "__main__":
    main()
