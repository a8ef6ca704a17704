"""Image decoding shared by every stage (``load_rgb``), and the threaded batch loader
(``iter_batches``) with its views. What is accepted, and why threads: docs/DATA.md, "Images".
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable, NamedTuple, Optional

import numpy as np
from PIL import Image, ImageOps

# Checked from the header before decoding (why: docs/DATA.md). 50 MP is 150 MB as RGB, several
# times that while converted, on up to 16 threads; at 20:1 the long side stays under 8000 px.
MAX_PIXELS = 50_000_000
MAX_ASPECT = 20
# PIL's own check only warns below twice its limit and decodes anyway: ours replaces it, and a
# lower PIL limit set by anyone else is enforced too (_check_size).
Image.MAX_IMAGE_PIXELS = None

Preprocess = Callable[[Image.Image], np.ndarray]


class ImageError(RuntimeError):
    """An image file could not be decoded."""


def _to_8bit(im: Image.Image) -> Image.Image:
    """Rescale high-bit-depth greyscale (16-bit, 32-bit int, float) to 8-bit "L" (PIL's own
    conversion clips above 255: a 16-bit scan would turn white)."""
    a = np.asarray(im, dtype=np.float64)
    finite = a[np.isfinite(a)]
    hi = float(finite.max()) if finite.size else 0.0
    if im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif im.mode == "F" and hi <= 1.0:
        scale = 255.0  # float images in [0, 1]
    elif hi <= 255.0:
        scale = 1.0
    elif hi <= 65535.0:
        scale = 255.0 / 65535.0  # 16-bit data stored as 32-bit ints (PNG "I" mode)
    else:
        scale = 255.0 / hi
    a = np.nan_to_num(a, nan=0.0, posinf=hi, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")


def _check_size(path: str | os.PathLike, width: int, height: int) -> None:
    limit = min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)
    if width * height > limit:
        raise ImageError(
            f"{path}: image too large ({width} x {height} pixels, the limit is "
            f"{limit / 1e6:g} MP); downscale it"
        )
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise ImageError(
            f"{path}: extreme aspect ratio ({width} x {height} pixels, the limit is "
            f"{MAX_ASPECT}:1): the preprocessing would scale it to an enormous image; crop it"
        )


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` as 8-bit RGB with its EXIF orientation, whatever PIL mode it has; an
    ImageError naming the file when it cannot (missing, corrupt, too large, too elongated)."""
    try:
        with Image.open(path) as im:
            _check_size(path, *im.size)
            im.load()
            try:  # a malformed EXIF block must not cost a good image: it stays unrotated
                im = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - any EXIF parsing failure: orientation unknown
                pass
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                return _to_8bit(im).convert("RGB")
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                # On white: what a viewer shows, and what product and clip-art images are made
                # for (transparent pixels carry arbitrary colours, often black).
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not an image") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as e:
        # PIL's plugins report corrupt data with all of these.
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    except MemoryError as e:
        raise ImageError(f"{path}: out of memory while decoding") from e


VIEWS = ("orig", "flip", "aug")
PREFETCH = 4  # batches decoded ahead of the consumer
AUG_SCALE = (0.5, 1.0)  # LP++'s RandomResizedCrop (official linear_probe_p2 data loader)
AUG_RATIO = (3 / 4, 4 / 3)

# One decoded image: its views' arrays, or None when it cannot be decoded.
Decoded = Optional[tuple[np.ndarray, ...]]


class Batch(NamedTuple):
    """``indices``: positions in the input list (int64); ``images[view]``: float32
    [len(indices), 3, H, W]; ``failed``: positions in this batch's range that could not be
    decoded (left out of ``indices`` unless filled with a placeholder)."""

    indices: np.ndarray
    images: dict[str, np.ndarray]
    failed: list[int]


def check_views(views: Sequence[str]) -> None:
    """ValueError unless ``views`` is a non-empty selection of VIEWS."""
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"unknown views {bad or views}; choose from {VIEWS}")


def default_workers() -> int:
    """Decoding threads: one per core, at most 16, none kept back (why: docs/PERFORMANCE.md)."""
    return max(1, min(16, os.cpu_count() or 1))


def augment(im: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """torchvision's RandomResizedCrop(size, scale AUG_SCALE, ratio AUG_RATIO, bicubic) and
    RandomHorizontalFlip, drawn from ``rng``: LP++'s training view."""
    w, h = im.size
    for _ in range(10):
        area = w * h * rng.uniform(*AUG_SCALE)
        aspect = np.exp(rng.uniform(np.log(AUG_RATIO[0]), np.log(AUG_RATIO[1])))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # no draw fits: torchvision's fallback, the centre crop of the nearest allowed ratio
        ratio = min(max(w / h, AUG_RATIO[0]), AUG_RATIO[1])
        cw, ch = (w, int(round(w / ratio))) if w / h < ratio else (int(round(h * ratio)), h)
        left, top = (w - cw) // 2, (h - ch) // 2
    out = im.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _preprocess_views(
    im: Image.Image, preprocess: Preprocess, views: Sequence[str], index: int = 0, seed: int = 0
) -> tuple[np.ndarray, ...]:
    out = []
    for v in views:
        # Flip before preprocessing: a centre crop of an odd margin is not symmetric, so
        # flipping the preprocessed tensor would not equal preprocessing the flipped image.
        src = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if v == "flip" else im
        if v == "aug":  # seeded per image position: the same view on every run
            src = augment(im, preprocess.n_px, np.random.default_rng([seed, index]))
        out.append(np.ascontiguousarray(preprocess(src), dtype=np.float32))
    return tuple(out)


def _decode_chunk(
    paths: Sequence[str], preprocess: Preprocess, views: Sequence[str], start: int, seed: int
) -> list[Decoded]:
    """Worker task: decode and preprocess consecutive images, the first at position ``start``."""
    out: list[Decoded] = []
    for j, p in enumerate(paths):
        try:
            im = load_rgb(p)
        except ImageError:
            out.append(None)
            continue
        try:
            out.append(_preprocess_views(im, preprocess, views, start + j, seed))
        except Exception as e:
            # A preprocessing failure on a decoded image is a bug, not a bad file: surface it.
            raise RuntimeError(f"{p}: preprocessing failed ({type(e).__name__}: {e})") from e
    return out


def _ahead(executor: cf.Executor, fn: Callable, items: Iterable, depth: int) -> Iterator:
    """``map(fn, items)`` on ``executor``, in order, ``depth`` calls ahead of the consumer."""
    pending: collections.deque = collections.deque()
    for x in items:
        pending.append(executor.submit(fn, x))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def iter_batches(
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 64,
    workers: Optional[int] = None,
    *,
    views: Sequence[str] = ("orig",),
    fill_failed: bool = False,
    seed: int = 0,
    offset: int = 0,
) -> Iterator[Batch]:
    """Decode ``paths`` on ``workers`` threads (0: in the calling thread) and yield Batches in
    list order; "aug" views are drawn from ``[seed, offset + position]``, ``fill_failed`` gives
    failed images a grey placeholder row (docs/DATA.md, "Batch loader")."""
    views = tuple(views)
    check_views(views)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    workers = default_workers() if workers is None else int(workers)
    # Work unit: enough consecutive images to amortise a task, few enough to keep every worker
    # busy within one batch.
    chunk = max(1, min(16, batch_size // max(1, workers)))

    def decode(s: int) -> list[Decoded]:
        return _decode_chunk(paths[s : s + chunk], preprocess, views, offset + s, seed)

    executor = cf.ThreadPoolExecutor(workers, "decode") if workers > 0 and n > 0 else None
    starts = range(0, n, chunk)
    depth = max(1, -(-PREFETCH * batch_size // chunk))
    chunks = map(decode, starts) if executor is None else _ahead(executor, decode, starts, depth)
    decoded = itertools.chain.from_iterable(chunks)
    placeholder: Optional[tuple[np.ndarray, ...]] = None
    empty = np.zeros((0, 3, 0, 0), np.float32)
    try:
        for b0 in range(0, n, batch_size):
            idx, arrays, failed = [], [], []
            for i, arr in enumerate(itertools.islice(decoded, batch_size), b0):
                if arr is None:
                    failed.append(i)
                    if not fill_failed:
                        continue
                    if placeholder is None:  # mid-grey: no class evidence, but a finite feature
                        grey = Image.new("RGB", (256, 256), (128, 128, 128))
                        placeholder = _preprocess_views(grey, preprocess, views)
                    arr = placeholder
                idx.append(i)
                arrays.append(arr)
            images = {
                v: np.stack([a[k] for a in arrays]) if arrays else empty
                for k, v in enumerate(views)
            }
            yield Batch(np.asarray(idx, np.int64), images, failed)
    finally:
        if executor is not None:
            # Ctrl-C or an early `break` by the consumer: drop queued work, do not wait for it.
            executor.shutdown(wait=False, cancel_futures=True)
