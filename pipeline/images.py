"""Image decoding shared by every stage, and a parallel batch loader.

``load_rgb`` turns any file PIL can read into an 8-bit RGB image (EXIF orientation applied,
16-bit and float greyscale rescaled, transparency composited on white) or raises ImageError.
``iter_batches`` decodes and preprocesses a list of images on worker threads, ahead of the
consumer, and yields batches in list order with the failures reported.

Threads: PIL releases the GIL while decoding and resizing and numpy does while normalising, so a
thread pool keeps every core decoding without pickling anything. Measured on 2 cores with 300
photo-sized JPEGs and CLIP's 224 px preprocessing, a pool of 2 threads decodes 615 images/s,
Jittor's own ``jittor.dataset`` loader with 2 worker processes 246 images/s (inline: 317 and
333), so the maintained library is not the faster choice here (``python -m bench.feature_path
decode``; docs/PERFORMANCE.md).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Callable, NamedTuple, Optional

import numpy as np
from PIL import Image, ImageOps

# Our own size limits, checked from the file header before anything is decoded (the image then
# becomes an ImageError: skipped in training, a grey placeholder and a warnings.txt line at test
# time).
#
# MAX_PIXELS: a decoded 50 MP image is 150 MB as RGB and several times that while it is converted
# and resized, on each of up to 16 decoding threads at once; a 20000 x 20000 PNG of a few hundred
# kB decoded at 4.7 GB. Classification at 224-384 px gains nothing from more pixels: downscale
# larger photos.
MAX_PIXELS = 50_000_000
# MAX_ASPECT: the preprocessings scale the short side to 224-384 px, so the long side grows by
# the aspect ratio: a 1 x 20000 strip asked for 4.3 GB, 1 x 200000 (862 bytes as a PNG) for
# 30 GB. At 20:1 the long side stays under 8000 px; no photo of an object is longer.
MAX_ASPECT = 20
# PIL's own decompression-bomb check looks at the same header size in Image.open, but above its
# limit it only warns (DecompressionBombWarning) and decodes anyway; it raises only above twice
# the limit. Ours replaces it (one clear message, the image refused); should anything set PIL's
# limit again, a lower one is enforced too, so its warning is never the only signal.
Image.MAX_IMAGE_PIXELS = None

log = logging.getLogger(__name__)


Preprocess = Callable[[Image.Image], np.ndarray]


class ImageError(RuntimeError):
    """An image file could not be decoded."""


def _to_8bit(im: Image.Image) -> Image.Image:
    """Rescale high-bit-depth greyscale (16-bit, 32-bit int, float) to 8-bit "L".

    PIL's own conversion clips everything above 255 to white, which would turn a 16-bit scan
    into a blank image.
    """
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


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite an image with transparency on white.

    Transparent pixels carry arbitrary colours (often black); a white background is what a
    viewer shows and what most product/clip-art photos were made for.
    """
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _exif_transpose(im: Image.Image) -> Image.Image:
    # A malformed EXIF block must not cost us an otherwise good image: keep it unrotated.
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "orientation unknown"
        return im


def _check_size(path: str | os.PathLike, width: int, height: int) -> None:
    """ImageError for a size above MAX_PIXELS or an aspect ratio above MAX_ASPECT (from the
    header: nothing is decoded yet)."""
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
    """Decode ``path`` as an 8-bit RGB image, applying the EXIF orientation.

    Handles every PIL mode: 1/L/P/RGB/CMYK/YCbCr/LAB/HSV, 16-bit and float greyscale (rescaled,
    not clipped), and transparency (LA, RGBA, PA, palette with a transparent index: composited on
    white).

    Raises ImageError naming the file when it is missing, empty, truncated or not an image, or
    when its header gives more than MAX_PIXELS pixels or an aspect ratio above MAX_ASPECT.
    """
    try:
        with Image.open(path) as im:
            _check_size(path, *im.size)
            im.load()
            im = _exif_transpose(im)
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                return _to_8bit(im).convert("RGB")
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                return _flatten_alpha(im)
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not an image") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as e:
        # PIL reports corrupt data with a variety of exception types depending on the plugin.
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    except MemoryError as e:
        raise ImageError(f"{path}: out of memory while decoding") from e


# ----------------------------------------------------------------------------- batch loading

VIEWS = ("orig", "flip", "aug")
AUG_SCALE = (0.5, 1.0)  # LP++'s RandomResizedCrop (official linear_probe_p2 data loader)
AUG_RATIO = (3 / 4, 4 / 3)


class Batch(NamedTuple):
    """One batch. ``indices`` are positions in the input list (int64, ascending); ``images[view]``
    is float32 [len(indices), 3, H, W] for each requested view; ``failed`` lists the positions of
    this batch's range that could not be decoded (excluded from ``indices`` unless the loader
    was asked to fill them with a placeholder)."""

    indices: np.ndarray
    images: dict[str, np.ndarray]
    failed: list[int]


def default_workers() -> int:
    """Decoding threads: one per core, at most 16.

    No core is kept back for the consumer: a Jittor call holds the GIL from start to end
    (``python -m bench.feature_path gil``), so decoding threads never run while the encoder does
    and the encoder never runs while the consumer waits for a batch. On 2 cores, 2 threads
    instead of 1 cut the encoder's wait for the next batch from 8.4% to 5.1% of a ViT-B/32
    extraction (docs/PERFORMANCE.md).
    """
    return max(1, min(16, os.cpu_count() or 1))


def augment(im: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """torchvision's RandomResizedCrop(size, scale AUG_SCALE, ratio AUG_RATIO, bicubic) and
    RandomHorizontalFlip, drawn from ``rng``: LP++'s training view."""
    w, h = im.size
    box = None
    for _ in range(10):
        area = w * h * rng.uniform(*AUG_SCALE)
        aspect = np.exp(rng.uniform(np.log(AUG_RATIO[0]), np.log(AUG_RATIO[1])))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # torchvision's fallback: the centre crop of the nearest allowed ratio
        ratio = min(max(w / h, AUG_RATIO[0]), AUG_RATIO[1])
        cw, ch = (w, int(round(w / ratio))) if w / h < ratio else (int(round(h * ratio)), h)
        left, top = (w - cw) // 2, (h - ch) // 2
        box = (left, top, left + cw, top + ch)
    out = im.crop(box).resize((size, size), Image.BICUBIC)
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
) -> list[tuple[Optional[tuple[np.ndarray, ...]], Optional[str]]]:
    """Worker task: decode and preprocess consecutive images (``start`` is the position of the
    first); (arrays, None) or (None, error)."""
    out: list[tuple[Optional[tuple[np.ndarray, ...]], Optional[str]]] = []
    for j, p in enumerate(paths):
        try:
            im = load_rgb(p)
        except ImageError as e:
            out.append((None, str(e)))
            continue
        try:
            out.append((_preprocess_views(im, preprocess, views, start + j, seed), None))
        except Exception as e:
            # A preprocessing failure on a decoded image is a bug, not a bad file: surface it.
            raise RuntimeError(f"{p}: preprocessing failed ({type(e).__name__}: {e})") from e
    return out


def _placeholder(preprocess: Preprocess, views: Sequence[str]) -> tuple[np.ndarray, ...]:
    # Mid-grey: carries no class evidence, but gives the image a finite feature and a prediction.
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    return _preprocess_views(grey, preprocess, views)


def _stack(arrays: list, views: Sequence[str], b0: int, b1: int, first: str) -> dict:
    images = {}
    for k, v in enumerate(views):
        if not arrays:
            images[v] = np.zeros((0, 3, 0, 0), np.float32)
            continue
        try:
            images[v] = np.stack([a[k] for a in arrays])
        except ValueError as e:
            shapes = sorted({a[k].shape for a in arrays})
            raise RuntimeError(
                f"preprocess returned arrays of different shapes {shapes} in images "
                f"{b0}..{b1 - 1} (first: {first})"
            ) from e
    return images


def iter_batches(
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 64,
    workers: Optional[int] = None,
    *,
    views: Sequence[str] = ("orig",),
    prefetch: int = 4,
    fill_failed: bool = False,
    on_error: Optional[Callable[[int, str], None]] = None,
    seed: int = 0,
    offset: int = 0,
) -> Iterator[Batch]:
    """Decode ``paths`` on ``workers`` threads and yield Batches in list order.

    Workers decode up to ``prefetch`` batches ahead of the consumer (bounded memory).
    ``views``: "orig", "flip" (horizontal flip, for test-time augmentation) and/or "aug" (a
    random resized crop and flip, :func:`augment`, drawn from ``[seed, offset + position]``),
    each preprocessed from the same decoded image. ``fill_failed``: failed images stay in the
    batch as a mid-grey placeholder (still listed in ``failed``), so every position gets a row;
    otherwise they are left out. ``on_error(index, message)`` is called for each failure.
    ``workers=0`` decodes in the calling thread.
    """
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"unknown views {bad or views}; choose from {VIEWS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    workers = default_workers() if workers is None else int(workers)
    # Work unit: a few consecutive images, enough to amortise task overhead while keeping all
    # workers busy within one batch.
    chunk = max(1, min(16, batch_size // max(1, workers)))
    starts = list(range(0, n, chunk))
    max_pending = max(1, (prefetch * batch_size + chunk - 1) // chunk)
    executor = cf.ThreadPoolExecutor(workers, "decode") if workers > 0 and n > 0 else None
    pending: collections.deque = collections.deque()
    next_chunk = 0
    placeholder: Optional[tuple[np.ndarray, ...]] = None

    def submit_more() -> None:
        nonlocal next_chunk
        while next_chunk < len(starts) and len(pending) < max_pending:
            sub = paths[starts[next_chunk] : starts[next_chunk] + chunk]
            task = (sub, preprocess, views, offset + starts[next_chunk], seed)
            if executor is None:
                pending.append(_decode_chunk(*task))
            else:
                pending.append(executor.submit(_decode_chunk, *task))
            next_chunk += 1

    try:
        buffer: list[tuple[Optional[tuple[np.ndarray, ...]], Optional[str]]] = []
        for b0 in range(0, n, batch_size):
            b1 = min(n, b0 + batch_size)
            while len(buffer) < b1 - b0:
                submit_more()
                head = pending.popleft()
                buffer.extend(head if isinstance(head, list) else head.result())
            take, buffer = buffer[: b1 - b0], buffer[b1 - b0 :]
            submit_more()
            idx, arrays, failed = [], [], []
            for j, (arr, err) in enumerate(take):
                if arr is None:
                    failed.append(b0 + j)
                    if on_error is not None:
                        on_error(b0 + j, err or "")
                    if not fill_failed:
                        continue
                    if placeholder is None:
                        placeholder = _placeholder(preprocess, views)
                    arr = placeholder
                idx.append(b0 + j)
                arrays.append(arr)
            images = _stack(arrays, views, b0, b1, paths[b0])
            yield Batch(np.asarray(idx, np.int64), images, failed)
    finally:
        if executor is not None:
            # Ctrl-C or an early `break` by the consumer: drop queued work, do not wait for it.
            executor.shutdown(wait=False, cancel_futures=True)
