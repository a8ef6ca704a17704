"""Image transforms of ConvNeXt-V2 (PIL RGB in, float32 CHW out), without Jittor, like
``models/clip/preprocess.py``: the decoding threads of ``pipeline.images`` run them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# bicubic: the official evaluation's; bilinear: the challenge solution's (docs/CONVNEXT.md).
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_NORM = f"mean{IMAGENET_MEAN}:std{IMAGENET_STD}"  # in the describe() strings


def _normalise(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = (a - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


@dataclass(frozen=True)
class EvalTransform:
    """Resize to size x size (aspect not kept) and normalise: deterministic."""

    size: int = 384
    resample: str = "bicubic"  # or "bilinear" (RESAMPLE)

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = img.convert("RGB").resize((self.size, self.size), RESAMPLE[self.resample])
        return _normalise(img)

    def describe(self) -> str:
        """Identity for feature-cache keys (pipeline/features.py)."""
        return f"convnextv2-eval:resize{self.size}sq:{self.resample}:{_NORM}"


@dataclass(frozen=True)
class TrainTransform:
    """Resize (square) -> random crop -> random flip, drawn from the Generator passed in only."""

    resize: int = 320
    crop: int = 280
    flip: bool = True
    resample: str = "bicubic"  # or "bilinear" (RESAMPLE)

    def __post_init__(self):
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} larger than resize {self.resize}")

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        return self.augment(self.resize_image(img), rng)

    def resize_image(self, img: Image.Image) -> Image.Image:
        """The deterministic first step; cache it to draw many views of one image cheaply."""
        return img.convert("RGB").resize((self.resize, self.resize), RESAMPLE[self.resample])

    def augment(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """The random steps (crop, flip) and normalisation on an image from resize_image()."""
        top, left = (int(v) for v in rng.integers(0, self.resize - self.crop + 1, size=2))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _normalise(img)

    def describe(self) -> str:
        """Identity of the transform (the views also depend on the seed)."""
        return (
            f"convnextv2-train:resize{self.resize}sq:{self.resample}:crop{self.crop}:"
            f"flip{self.flip}:{_NORM}"
        )


def preprocess(size: int = 384, resample: str = "bicubic") -> Callable[[Image.Image], np.ndarray]:
    """Evaluation transform: size x size (the challenge solution: 384, bilinear), ImageNet norm."""
    return EvalTransform(size, resample)
