"""models.clip.preprocess against torchvision's semantics (restated in tests/_reference.py)."""

from __future__ import annotations

import _reference as R
import numpy as np
import pytest
from PIL import Image

from models.clip.preprocess import CLIP_MEAN, CLIP_STD, Preprocess, center_crop

SIZES = [(1, 1), (3, 500), (500, 3), (333, 257), (640, 480), (224, 224), (224, 300), (225, 225)]
MODES = ["RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"]


def _image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    # A smooth gradient plus noise: resampling errors show, and so would a transposed axis.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) % 256], -1)
    rgb = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # mode I;16
    if mode == "RGBA":
        img = img.copy()
        img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        return img
    return img.convert(mode)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
def test_equals_torchvision_semantics(size, mode):
    img = _image(size, mode)
    got = Preprocess(224)(img)
    want = R.torchvision_clip_preprocess(img, 224)
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_px", [32, 288, 336])
def test_other_resolutions(n_px):
    img = _image((333, 257), "RGB", seed=1)
    np.testing.assert_allclose(
        Preprocess(n_px)(img), R.torchvision_clip_preprocess(img, n_px), atol=1e-6, rtol=0
    )


def test_crop_offset_rounds_half_to_even():
    # 224 + 1 pixels: (h - 224) / 2 = 0.5 rounds to 0 (torchvision's round), not 1.
    img = Image.fromarray(np.arange(225, dtype=np.uint8).reshape(225, 1).repeat(224, 1), "L")
    out = center_crop(img, 224)
    assert np.asarray(out)[0, 0] == 0
    # 224 + 3: 1.5 rounds to 2
    img = Image.fromarray(np.arange(227, dtype=np.uint8).reshape(227, 1).repeat(224, 1), "L")
    assert np.asarray(center_crop(img, 224))[0, 0] == 2


def test_uniform_colour_normalises_to_the_clip_constants():
    x = Preprocess(32)(Image.new("RGB", (50, 40), (255, 0, 128)))
    want = (np.array([1.0, 0.0, 128 / 255], np.float32) - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(x[:, 5, 7], want, rtol=1e-6)


def test_shape_and_describe():
    p = Preprocess(64)
    x = p(_image((80, 70), "RGB", seed=1))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert p.describe() == Preprocess(64).describe()
    assert p.describe() != Preprocess(224).describe()
    assert "64" in p.describe() and "bicubic" in p.describe()


def test_rejects_non_images():
    with pytest.raises(TypeError, match="PIL image"):
        Preprocess(32)(np.zeros((32, 32, 3), np.uint8))
