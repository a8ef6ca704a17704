"""Image decoding shared by every stage."""

from __future__ import annotations

import os

from PIL import Image, ImageOps

# Guard against decompression bombs without refusing legitimately large photos.
Image.MAX_IMAGE_PIXELS = 200_000_000


class ImageError(RuntimeError):
    """An image file could not be decoded."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` as an 8-bit RGB image, applying the EXIF orientation.

    Raises ImageError naming the file when it is missing, empty, truncated or not an image.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit greyscale: scale to 8 bit instead of clipping everything to white.
                im = im.point(lambda v: v / 256).convert("L")
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from e
