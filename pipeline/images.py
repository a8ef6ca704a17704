"""Image decoding shared by every stage, and a parallel batch loader.

``load_rgb`` turns any file PIL can read into an 8-bit RGB image (EXIF orientation applied,
16-bit and float greyscale rescaled, transparency composited on white) or raises ImageError.
``iter_batches`` / ``iter_view_batches`` decode and preprocess a list of images on worker
threads, ahead of the consumer, and yield batches in list order with the failures reported.

Threads, not processes, are the default: PIL releases the GIL while decoding and resizing and
numpy does while normalising, so threads scale about as well as processes (see
bench/bench_data_loader.py) without pickling the preprocess callable. But a Jittor call holds
the GIL from start to end, so decoding threads stop while the encoder runs; where the encoder
does not use the CPU (a GPU), the "process" backend keeps decoding during encoder calls. Its
workers write the preprocessed arrays into shared memory, so nothing but file names and error
messages is pickled (docs/PERFORMANCE.md, section 2).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from multiprocessing import shared_memory
from typing import Callable, NamedTuple, Optional

import numpy as np
from PIL import Image, ImageOps

# Guard against decompression bombs without refusing legitimately large photos
# (PIL raises above twice this many pixels).
Image.MAX_IMAGE_PIXELS = 200_000_000

log = logging.getLogger(__name__)

VIEWS = ("orig", "flip")

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


def load_rgb(path: str | os.PathLike, draft_min_side: Optional[int] = None) -> Image.Image:
    """Decode ``path`` as an 8-bit RGB image, applying the EXIF orientation.

    Handles every PIL mode: 1/L/P/RGB/CMYK/YCbCr/LAB/HSV, 16-bit and float greyscale (rescaled,
    not clipped), and transparency (LA, RGBA, PA, palette with a transparent index: composited on
    white).

    ``draft_min_side``: for JPEGs, let libjpeg decode at 1/2, 1/4 or 1/8 scale as long as the
    shorter side stays >= this many pixels. It bounds the memory of huge photos and speeds up
    decoding, but changes pixels slightly (DCT-domain downscaling instead of a full decode
    followed by the preprocessing's resize), so it is off (None) by default; see docs/DATA.md.

    Raises ImageError naming the file when it is missing, empty, truncated or not an image.
    """
    try:
        with Image.open(path) as im:
            if draft_min_side and im.format == "JPEG":
                im.draft(None, (int(draft_min_side), int(draft_min_side)))
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


class Batch(NamedTuple):
    """One batch of one view. ``indices`` are positions in the input list (int64, ascending);
    ``images`` is float32 [len(indices), 3, H, W]; ``failed`` lists the positions of this
    batch's range that could not be decoded (excluded from ``indices`` unless the loader was
    asked to fill them with a placeholder)."""

    indices: np.ndarray
    images: np.ndarray
    failed: list[int]


class ViewBatch(NamedTuple):
    """Like Batch, with one float32 [B, 3, H, W] array per requested view."""

    indices: np.ndarray
    images: dict[str, np.ndarray]
    failed: list[int]


def default_workers() -> int:
    """Decoding workers: one per core, at most 16.

    No core is kept back for the consumer: a Jittor call holds the GIL from start to end
    (bench/bench_feature_path.py gil), so decoding threads never run while the encoder does and
    the encoder never runs while the consumer waits for a batch. On 2 cores, 2 threads instead of
    1 cut the encoder's wait for the next batch from 8.4% to 5.1% of a ViT-B/32 extraction
    (docs/PERFORMANCE.md).
    """
    return max(1, min(16, os.cpu_count() or 1))


def resolve_backend(backend: str) -> str:
    """ "thread" or "process" for a backend name; "auto" picks processes when Jittor runs on
    CUDA (the encoder then holds the GIL without using a core, and decoding processes keep
    working during its calls) and threads on the CPU (there the encoder uses every core, and
    threads stop while it runs instead of competing with it)."""
    if backend == "auto":
        from models.runtime import jittor

        return "process" if jittor().flags.use_cuda else "thread"
    if backend not in ("thread", "process"):
        raise ValueError(f"backend must be 'auto', 'thread' or 'process', got {backend!r}")
    return backend


def _preprocess_views(
    im: Image.Image, preprocess: Preprocess, views: Sequence[str]
) -> tuple[np.ndarray, ...]:
    out = []
    for v in views:
        # Flip before preprocessing: a centre crop of an odd margin is not symmetric, so
        # flipping the preprocessed tensor would not equal preprocessing the flipped image.
        src = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if v == "flip" else im
        out.append(np.ascontiguousarray(preprocess(src), dtype=np.float32))
    return tuple(out)


def _decode_chunk(
    paths: Sequence[str],
    preprocess: Preprocess,
    views: Sequence[str],
    draft_min_side: Optional[int],
) -> list[tuple[Optional[tuple[np.ndarray, ...]], Optional[str]]]:
    """Worker task: decode and preprocess consecutive images; (arrays, None) or (None, error)."""
    out: list[tuple[Optional[tuple[np.ndarray, ...]], Optional[str]]] = []
    for p in paths:
        try:
            im = load_rgb(p, draft_min_side=draft_min_side)
        except ImageError as e:
            out.append((None, str(e)))
            continue
        try:
            out.append((_preprocess_views(im, preprocess, views), None))
        except Exception as e:
            # A preprocessing failure on a decoded image is a bug, not a bad file: surface it.
            raise RuntimeError(f"{p}: preprocessing failed ({type(e).__name__}: {e})") from e
    return out


def _decode_chunk_shared(
    paths: Sequence[str],
    preprocess: Preprocess,
    views: Sequence[str],
    draft_min_side: Optional[int],
    block: str,
    offset: int,
    shape: tuple[int, ...],
) -> list[Optional[str]]:
    """Process worker task: like ``_decode_chunk``, but the arrays go into the shared-memory
    ``block`` at byte ``offset`` as float32 [len(paths), len(views), *shape]; returns the error
    message of each image (None where decoded)."""
    shm = shared_memory.SharedMemory(name=block)
    try:
        out = np.ndarray((len(paths), len(views), *shape), np.float32, shm.buf, offset)
        errors: list[Optional[str]] = []
        for j, (arrays, err) in enumerate(_decode_chunk(paths, preprocess, views, draft_min_side)):
            if arrays is not None:
                for k, a in enumerate(arrays):
                    if a.shape != shape:
                        raise RuntimeError(
                            f"{paths[j]}: preprocess returned shape {a.shape}, expected {shape} "
                            "(the process backend needs one shape for every image)"
                        )
                    out[j, k] = a
            errors.append(err)
        del out  # release the buffer before closing the mapping
    finally:
        shm.close()
    return errors


def _watch_parent() -> None:
    """Process worker initializer: exit as soon as the process that started the pool is gone.

    A pool's workers only learn of a shutdown from their owner; if it dies without one, they
    would wait for work forever, keep the forkserver alive and hold the owner's stdout/stderr
    open, hanging whoever reads them. That is the usual case, not a corner: once Jittor is
    imported, Ctrl-C is Jittor's own quick exit, which runs no ``finally`` block.
    multiprocessing gives each child a sentinel of its parent (a pipe end that closes when the
    parent exits, zombie or not)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


class _SharedSlots:
    """``count`` slots of ``chunk`` images in one shared-memory block, handed out and returned
    in any order; the block is unlinked by ``close``."""

    def __init__(self, count: int, chunk: int, views: int, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.per_slot = chunk * views * int(np.prod(shape))
        self.shm = shared_memory.SharedMemory(create=True, size=max(1, count * self.per_slot * 4))
        self.array = np.ndarray((count, chunk, views, *shape), np.float32, self.shm.buf)
        self.free = list(range(count))[::-1]

    def take(self) -> int:
        return self.free.pop()

    def offset(self, slot: int) -> int:
        return slot * self.per_slot * 4

    def read(self, slot: int, errors: list[Optional[str]]):
        """The slot's images as ``_decode_chunk`` returns them (copies), and free the slot."""
        out = []
        for j, err in enumerate(errors):
            if err is None:
                out.append((tuple(a.copy() for a in self.array[slot, j]), None))
            else:
                out.append((None, err))
        self.free.append(slot)
        return out

    def close(self) -> None:
        del self.array
        self.shm.close()
        self.shm.unlink()


def _placeholder(preprocess: Preprocess, views: Sequence[str]) -> tuple[np.ndarray, ...]:
    # Mid-grey: carries no class evidence, but gives the image a finite feature and a prediction.
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    return _preprocess_views(grey, preprocess, views)


def iter_view_batches(
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 64,
    workers: Optional[int] = None,
    *,
    views: Sequence[str] = ("orig",),
    prefetch: int = 4,
    fill_failed: bool = False,
    draft_min_side: Optional[int] = None,
    backend: str = "thread",
    on_error: Optional[Callable[[int, str], None]] = None,
) -> Iterator[ViewBatch]:
    """Decode ``paths`` in parallel and yield ViewBatches in list order.

    Workers decode up to ``prefetch`` batches ahead of the consumer (bounded memory), so the
    encoder does not wait on JPEG decoding. ``views``: "orig" and/or "flip" (horizontal flip,
    for test-time augmentation), each preprocessed from the same decoded image.
    ``fill_failed``: failed images stay in the batch as a mid-grey placeholder (still listed in
    ``failed``), so every position gets a row; otherwise they are left out.
    ``on_error(index, message)`` is called for each failure (e.g. to log a warning).
    ``backend``: "thread" (default) or "process" (needs a picklable ``preprocess``).
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
    # Work unit: a few consecutive images, enough to amortise task overhead (and pickling
    # for processes) while keeping all workers busy within one batch.
    chunk = max(1, min(16, batch_size // max(1, workers)))
    starts = list(range(0, n, chunk))
    args = (preprocess, views, draft_min_side)

    executor: Optional[cf.Executor] = None
    slots: Optional[_SharedSlots] = None
    placeholder: Optional[tuple[np.ndarray, ...]] = None
    pending: collections.deque = collections.deque()
    next_chunk = 0
    max_pending = max(1, (prefetch * batch_size + chunk - 1) // chunk)
    if workers > 0 and n > 0:
        if backend == "thread":
            executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="decode")
        elif backend == "process":
            # spawn/forkserver, never fork: the parent may hold Jittor/CUDA threads.
            ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
            # One shape for every image: learn it from the placeholder (preprocessed here).
            placeholder = _placeholder(preprocess, views)
            slots = _SharedSlots(max_pending, chunk, len(views), placeholder[0].shape)
            executor = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_watch_parent)
        else:
            raise ValueError(f"backend must be 'thread' or 'process', got {backend!r}")

    def submit_more() -> None:
        nonlocal next_chunk
        while next_chunk < len(starts) and len(pending) < max_pending:
            s = starts[next_chunk]
            sub = paths[s : s + chunk]
            if executor is None:
                pending.append(_decode_chunk(sub, *args))
            elif slots is None:
                pending.append(executor.submit(_decode_chunk, sub, *args))
            else:
                slot = slots.take()
                task = (_decode_chunk_shared, sub, *args, slots.shm.name, slots.offset(slot))
                pending.append((executor.submit(*task, slots.shape), slot))
            next_chunk += 1

    try:
        pos = 0  # index of the next image to take out of `pending`
        buffer: list[tuple[Optional[tuple[np.ndarray, ...]], Optional[str]]] = []
        for b0 in range(0, n, batch_size):
            b1 = min(n, b0 + batch_size)
            while pos + len(buffer) < b1:
                submit_more()
                head = pending.popleft()
                if isinstance(head, list):
                    buffer.extend(head)
                elif isinstance(head, tuple):
                    future, slot = head
                    buffer.extend(slots.read(slot, future.result()))
                else:
                    buffer.extend(head.result())
            take, buffer = buffer[: b1 - b0], buffer[b1 - b0 :]
            pos = b1
            submit_more()
            idx, arrays, failed = [], [], []
            for j, (arr, err) in enumerate(take):
                i = b0 + j
                if arr is None:
                    failed.append(i)
                    if on_error is not None:
                        on_error(i, err or "")
                    if not fill_failed:
                        continue
                    if placeholder is None:
                        placeholder = _placeholder(preprocess, views)
                    arr = placeholder
                idx.append(i)
                arrays.append(arr)
            images = {}
            for k, v in enumerate(views):
                if arrays:
                    try:
                        images[v] = np.stack([a[k] for a in arrays])
                    except ValueError as e:
                        shapes = sorted({a[k].shape for a in arrays})
                        raise RuntimeError(
                            f"preprocess returned arrays of different shapes {shapes} in "
                            f"images {b0}..{b1 - 1} (first: {paths[b0]})"
                        ) from e
                else:
                    images[v] = np.zeros((0, 3, 0, 0), np.float32)
            yield ViewBatch(np.asarray(idx, np.int64), images, failed)
    finally:
        if executor is not None:
            # Ctrl-C or an early `break` by the consumer: drop queued work, do not wait for it.
            executor.shutdown(wait=False, cancel_futures=True)
        if slots is not None:
            # Workers still running keep their own mapping; the name goes now.
            slots.close()


def iter_batches(
    paths: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    batch_size: int = 64,
    workers: Optional[int] = None,
    *,
    flip: bool = False,
    **kwargs,
) -> Iterator[Batch]:
    """Single-view ``iter_view_batches``: yields Batch(indices, images [B,3,H,W], failed).

    ``flip=True`` yields the horizontally flipped view instead of the original.
    Other keyword arguments (prefetch, fill_failed, draft_min_side, backend, on_error) as in
    ``iter_view_batches``.
    """
    view = "flip" if flip else "orig"
    for b in iter_view_batches(paths, preprocess, batch_size, workers, views=(view,), **kwargs):
        yield Batch(b.indices, b.images[view], b.failed)


def log_failures(failed: Sequence[int], paths: Sequence[str], what: str, limit: int = 10) -> None:
    """Log one warning summarising undecodable images (the first ``limit`` named)."""
    if not failed:
        return
    names = ", ".join(os.fspath(paths[i]) for i in list(failed)[:limit])
    more = f" and {len(failed) - limit} more" if len(failed) > limit else ""
    log.warning("%s: %d image(s) could not be decoded: %s%s", what, len(failed), names, more)
