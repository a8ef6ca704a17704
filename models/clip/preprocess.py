"""OpenAI CLIP's image preprocessing (``clip._transform``) in PIL and numpy, exactly: torchvision's
Resize(n_px, BICUBIC) (long side truncated), CenterCrop(n_px) (Python's round-half-to-even; the
padding branch never applies after the resize), then convert("RGB") as OpenAI orders it (so PIL
resamples in the image's own mode: palette and 1-bit nearest, alpha premultiplied), ToTensor,
Normalize.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN = np.asarray(CLIP_MEAN, np.float32).reshape(3, 1, 1)
_STD = np.asarray(CLIP_STD, np.float32).reshape(3, 1, 1)


def resize_short_side(img: Image.Image, n_px: int) -> Image.Image:
    """torchvision Resize(n_px, BICUBIC) of a PIL image (short side to n_px)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == n_px:
        return img
    new_long = int(n_px * long / short)
    size = (n_px, new_long) if w <= h else (new_long, n_px)
    return img.resize(size, Image.BICUBIC)


def center_crop(img: Image.Image, n_px: int) -> Image.Image:
    """torchvision CenterCrop(n_px) of a PIL image at least n_px on each side (as resized)."""
    w, h = img.size
    top = int(round((h - n_px) / 2.0))
    left = int(round((w - n_px) / 2.0))
    return img.crop((left, top, left + n_px, top + n_px))


class Preprocess:
    """Callable PIL image -> float32 array [3, n_px, n_px], OpenAI's CLIP preprocessing."""

    def __init__(self, n_px: int):
        if n_px < 1:
            raise ValueError(f"n_px must be positive, not {n_px}")
        self.n_px = int(n_px)

    def describe(self) -> str:
        """A stable description of every step and constant (a feature-cache key)."""
        fmt = ",".join
        return (
            f"clip-preprocess/v1 resize-short={self.n_px}:pil-bicubic:int-long "
            f"center-crop={self.n_px}:round-half-even rgb-after-crop to-tensor/255 "
            f"mean=({fmt(repr(m) for m in CLIP_MEAN)}) std=({fmt(repr(s) for s in CLIP_STD)})"
        )

    def __repr__(self) -> str:
        return f"Preprocess(n_px={self.n_px})"

    def __call__(self, img: Image.Image) -> np.ndarray:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        img = center_crop(resize_short_side(img, self.n_px), self.n_px).convert("RGB")
        # Same float32 operations as ToTensor and Normalize, hence bit-identical results.
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (x - _MEAN) / _STD
