"""Robust decoding (load_rgb) and the parallel batch loader (pipeline.images)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.images import ImageError, iter_batches, load_rgb


class TinyPreprocess:
    """Resize to 12x12 (bilinear), scale to [0, 1], CHW: cheap, but position-sensitive so
    order and flip mistakes show."""

    def __call__(self, im: Image.Image) -> np.ndarray:
        a = np.asarray(im.resize((12, 12), Image.BILINEAR), np.float32) / 255.0
        return a.transpose(2, 0, 1)

    def describe(self) -> str:
        return "tiny 12x12 bilinear"


def gradient(w: int = 40, h: int = 30, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric RGB image (uint8 [h, w, 3]) that survives JPEG well."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    c = rng.uniform(0.5, 3, 3)
    img = np.stack([xx * c[0] * 255 / w, yy * c[1] * 255 / h, (xx + yy) * c[2] * 2], -1)
    return (img % 256).astype(np.uint8)


def save(path: Path, im: Image.Image, fmt: str | None = None, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


# -------------------------------------------------------------------------------- load_rgb


def test_rgb_jpeg_and_png(tmp_path):
    arr = gradient()
    out = load_rgb(save(tmp_path / "a.png", Image.fromarray(arr)))
    assert out.mode == "RGB" and out.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(out), arr)
    out = load_rgb(save(tmp_path / "a.jpg", Image.fromarray(arr), quality=95))
    assert np.abs(np.asarray(out, int) - arr).mean() < 8


def test_greyscale_and_bilevel(tmp_path):
    g = np.asarray(Image.fromarray(gradient()).convert("L"))
    out = np.asarray(load_rgb(save(tmp_path / "g.png", Image.fromarray(g))))
    assert out.shape == (30, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)
    bw = Image.fromarray(g > 128)  # mode "1"
    out = np.asarray(load_rgb(save(tmp_path / "b.png", bw)))
    np.testing.assert_array_equal(out[..., 0], np.where(g > 128, 255, 0))


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32768, 65535]], np.uint16)
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    out = np.asarray(load_rgb(save(tmp_path / "g16.png", im)))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 1, 128, 255])
    # 16-bit data in a 32-bit integer image (how some TIFF/PNG readers store it)
    out = np.asarray(load_rgb(save(tmp_path / "i32.tiff", Image.fromarray(v.astype(np.int32)))))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    out = np.asarray(load_rgb(save(tmp_path / "f.tiff", f)))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_cmyk_jpeg(tmp_path):
    arr = gradient()
    p = save(tmp_path / "c.jpg", Image.fromarray(arr).convert("CMYK"), quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_rgb(p)
    assert out.mode == "RGB" and np.abs(np.asarray(out, int) - arr).mean() < 10


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red, whatever the alpha
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    out = np.asarray(load_rgb(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))))
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 0], [255, 255, 255])
    la = Image.fromarray(
        np.stack([np.full((2, 2), 10), np.array([[255, 0], [255, 0]])], -1).astype(np.uint8), "LA"
    )
    out = np.asarray(load_rgb(save(tmp_path / "la.png", la)))
    np.testing.assert_array_equal(out[:, 0], [[10, 10, 10]] * 2)
    np.testing.assert_array_equal(out[:, 1], [[255, 255, 255]] * 2)


def test_palette_with_transparent_index(tmp_path):
    p = Image.new("P", (4, 2))
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    p.putpixel((0, 0), 1)
    path = save(tmp_path / "p.png", p, transparency=0)
    assert "transparency" in Image.open(path).info
    out = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(out[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])  # transparent black -> white
    # a palette GIF without transparency stays as it is
    out = np.asarray(load_rgb(save(tmp_path / "p.gif", p)))
    np.testing.assert_array_equal(out[1, 1], [0, 0, 0])


@pytest.mark.parametrize(
    "orientation, transpose",
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation(tmp_path, orientation, transpose):
    arr = gradient(40, 30)
    # Store the pixels such that applying the orientation gives back `arr`.
    stored = Image.fromarray(arr).transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "r.png", stored, exif=exif)
    out = load_rgb(path)
    assert out.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_one_pixel(tmp_path):
    out = load_rgb(save(tmp_path / "1.jpg", Image.new("RGB", (1, 1), (10, 200, 30))))
    assert out.size == (1, 1)
    pre = TinyPreprocess()(out)
    assert pre.shape == (3, 12, 12) and np.isfinite(pre).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "cannot decode"),
        (lambda p: p.write_text("hello, not an image"), "cannot decode"),
        (lambda p: None, "file not found"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_unreadable_files(tmp_path, make, message):
    p = tmp_path / "x.jpg"
    make(p)
    with pytest.raises(ImageError) as e:
        load_rgb(p)
    assert str(p) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(gradient(200, 150)).save(buf, fmt)
    p = tmp_path / "t.img"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_rgb(p)


def test_wrong_extension_is_fine(tmp_path):
    p = save(tmp_path / "really_a_png.jpg", Image.fromarray(gradient()), "PNG")
    np.testing.assert_array_equal(np.asarray(load_rgb(p)), gradient())


def test_decompression_bomb_is_an_image_error(tmp_path, monkeypatch):
    p = save(tmp_path / "big.png", Image.new("L", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses > 2x this
    with pytest.raises(ImageError, match="too large"):
        load_rgb(p)


def _seed_bytes() -> list[bytes]:
    out = []
    for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "L")]:
        buf = io.BytesIO()
        Image.fromarray(gradient(16, 12)).convert(mode).save(buf, fmt)
        out.append(buf.getvalue())
    return out


_SEEDS = _seed_bytes()


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(range(len(_SEEDS))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 3000)),
)
def test_fuzz_mutated_images(tmp_path, which, flips, cut):
    data = bytearray(_SEEDS[which])
    for pos, val in flips:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[:cut]
    p = tmp_path / "fuzz.bin"
    p.write_bytes(bytes(data))
    try:
        out = load_rgb(p)
    except ImageError as e:
        assert str(p) in str(e)
        return
    assert out.mode == "RGB" and out.size[0] > 0 and out.size[1] > 0
    np.asarray(out)  # the pixels are really there


# ---------------------------------------------------------------------------- batch loading


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> tuple[list[str], set[int]]:
    """11 small images with distinct content; positions 3 and 8 are broken."""
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(11):
        p = d / f"{i}.png"
        Image.fromarray(gradient(20 + i, 16, seed=i)).save(p)
        paths.append(str(p))
    Path(paths[3]).write_bytes(b"garbage")
    Path(paths[8]).write_bytes(b"")
    return paths, {3, 8}


def expected(paths: list[str], i: int, flip: bool = False) -> np.ndarray:
    im = load_rgb(paths[i])
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return TinyPreprocess()(im)


@pytest.mark.parametrize("workers, batch_size", [(0, 4), (1, 3), (3, 4), (2, 20)])
def test_loader_order_and_failures(image_dir, workers, batch_size):
    paths, broken = image_dir
    batches = list(iter_batches(paths, TinyPreprocess(), batch_size, workers))
    got_idx = np.concatenate([b.indices for b in batches])
    assert got_idx.tolist() == [i for i in range(11) if i not in broken]
    assert sorted(i for b in batches for i in b.failed) == sorted(broken)
    for k, b in enumerate(batches):
        assert list(b.images) == ["orig"]
        batch = b.images["orig"]
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, 12, 12)
        assert len(b.indices) == len(batch)
        for i, x in zip(b.indices, batch):
            np.testing.assert_array_equal(x, expected(paths, i))
        # the failures are reported with the batch that covers their position
        lo = k * batch_size
        assert all(lo <= i < lo + batch_size for i in b.failed)


def test_loader_fill_failed_and_views(image_dir):
    paths, broken = image_dir
    batches = list(
        iter_batches(paths, TinyPreprocess(), 5, 2, views=("orig", "flip"), fill_failed=True)
    )
    idx = np.concatenate([b.indices for b in batches])
    assert idx.tolist() == list(range(11))
    orig = np.concatenate([b.images["orig"] for b in batches])
    flip = np.concatenate([b.images["flip"] for b in batches])
    for i in range(11):
        if i in broken:
            np.testing.assert_allclose(orig[i], 128 / 255, atol=1e-6)  # grey placeholder
            np.testing.assert_allclose(flip[i], 128 / 255, atol=1e-6)
        else:
            np.testing.assert_array_equal(orig[i], expected(paths, i))
            np.testing.assert_array_equal(flip[i], expected(paths, i, flip=True))
    assert not np.array_equal(orig[0], flip[0])
    # the flipped view alone, on request
    (b,) = list(iter_batches(paths[:2], TinyPreprocess(), 2, 0, views=("flip",)))
    np.testing.assert_array_equal(b.images["flip"], flip[:2])


def test_loader_early_stop_and_bad_arguments(image_dir):
    paths, _ = image_dir
    gen = iter_batches(paths * 20, TinyPreprocess(), 2, 2)
    first = next(gen)
    gen.close()  # must not hang on queued work
    assert first.indices.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown views"):
        next(iter_batches(paths, TinyPreprocess(), views=("rot90",)))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(paths, TinyPreprocess(), 0))
    assert list(iter_batches([], TinyPreprocess(), 4, 2)) == []


def test_preprocess_bug_is_not_hidden_as_a_bad_image(image_dir):
    paths, _ = image_dir

    def broken(im):
        raise ZeroDivisionError("bug")

    with pytest.raises(RuntimeError, match="preprocessing failed.*ZeroDivisionError"):
        list(iter_batches(paths[:2], broken, 2, 1))


def test_augmented_view_is_a_seeded_random_resized_crop(image_dir):
    from pipeline.images import AUG_RATIO, AUG_SCALE, augment

    # An image whose pixels encode their coordinates: the crop box can be read back.
    w, h = 120, 90
    yy, xx = np.mgrid[0:h, 0:w]
    coords = Image.fromarray(np.stack([xx * 2, yy * 2, np.zeros_like(xx)], -1).astype(np.uint8))
    areas, flips = [], 0
    for i in range(200):
        out = augment(coords, 32, np.random.default_rng([0, i]))
        assert out.size == (32, 32) and out.mode == "RGB"
        a = np.asarray(out.resize((32, 32), Image.NEAREST), np.float64)
        x, y = a[..., 0] / 2, a[..., 1] / 2
        cw, ch = np.ptp(x) + 1, np.ptp(y) + 1  # the crop's extent, within resampling error
        areas.append(cw * ch / (w * h))
        assert AUG_RATIO[0] * 0.8 < cw / ch < AUG_RATIO[1] * 1.25
        flips += x[:, 0].mean() > x[:, -1].mean()
    assert AUG_SCALE[0] * 0.8 < min(areas) and max(areas) <= 1.0 + 1e-9
    assert 70 < flips < 130  # a fair coin
    same = augment(coords, 32, np.random.default_rng([0, 5]))
    assert np.array_equal(
        np.asarray(same), np.asarray(augment(coords, 32, np.random.default_rng([0, 5])))
    )
    thin = augment(Image.new("RGB", (400, 10)), 32, np.random.default_rng(0))  # fallback crop
    assert thin.size == (32, 32)


def test_loader_aug_view_depends_on_seed_and_position_only(image_dir):
    from models.clip.preprocess import Preprocess

    paths, broken = image_dir
    good = [p for i, p in enumerate(paths) if i not in broken]
    pre = Preprocess(16)

    def aug(paths, seed, offset=0, workers=2, batch=3):
        batches = iter_batches(paths, pre, batch, workers, views=("aug",), seed=seed, offset=offset)
        return np.concatenate([b.images["aug"] for b in batches])

    a = aug(good, 0)
    np.testing.assert_array_equal(a, aug(good, 0, workers=0, batch=5))  # same on every run
    assert not np.array_equal(a, aug(good, 1))
    np.testing.assert_array_equal(a[3:], aug(good[3:], 0, offset=3))  # position, not batch


# ------------------------------------------------------------------ oversized and extreme images


def png_bytes(width: int, height: int, rows_per_chunk: int = 512) -> bytes:
    """A valid 8-bit greyscale PNG of zeros, compressed row block by row block, so that even a
    20000 x 20000 image is made in bounded memory (and is a few hundred kB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    z = zlib.compressobj(9)
    parts = []
    block = b"\0" * ((width + 1) * min(rows_per_chunk, height))  # filter byte 0 + a row of 0
    for y in range(0, height, rows_per_chunk):
        n = min(rows_per_chunk, height - y)
        parts.append(z.compress(block[: (width + 1) * n]))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def _refused_quickly(path: Path, message: str) -> None:
    import time
    import tracemalloc

    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(ImageError) as e:
            load_rgb(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)
    assert time.perf_counter() - t < 1.0
    assert peak < 5_000_000, f"{peak / 1e6:.0f} MB allocated to refuse {path.name}"


def test_too_many_pixels_refused_from_the_header(tmp_path):
    # 20000 x 20000: 400 MP, which PIL only warns about (DecompressionBombWarning) and decodes.
    p = tmp_path / "huge.png"
    p.write_bytes(png_bytes(20_000, 20_000))
    assert p.stat().st_size < 1_000_000
    _refused_quickly(p, "image too large (20000 x 20000 pixels, the limit is 50 MP)")


@pytest.mark.parametrize("size", [(200_000, 1), (1, 20_000), (2_100, 100)])
def test_extreme_aspect_ratio_refused(tmp_path, size):
    # 1 x 200000 (862 bytes as a PNG) asked CLIP's short-side resize for 224 x 44.8M pixels.
    p = tmp_path / "strip.png"
    p.write_bytes(png_bytes(*size))
    _refused_quickly(p, "aspect ratio")


def test_large_but_sane_images_and_the_limits_are_kept(tmp_path):
    from pipeline.images import MAX_ASPECT, MAX_PIXELS

    assert MAX_PIXELS >= 24_000_000 and MAX_ASPECT >= 10  # a 6000 x 4000 photo, a panorama
    p = tmp_path / "wide.png"
    p.write_bytes(png_bytes(2_000, 100))  # 20:1, the limit itself
    assert load_rgb(p).size == (2_000, 100)


def test_decompression_bomb_warning_is_not_the_only_signal(tmp_path, monkeypatch):
    # Whatever PIL's own threshold, an image it would only warn about is refused.
    p = save(tmp_path / "big.png", Image.new("L", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # PIL warns above this, errors at 2x
    with pytest.raises(ImageError, match="too large"):
        load_rgb(p)


LOADER_UNDER_MEMORY_LIMIT = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from models.clip.preprocess import Preprocess
from pipeline.images import iter_batches
paths = sys.argv[1:]
(batch,) = iter_batches(paths, Preprocess(224), batch_size=8, workers=2, fill_failed=True)
print("failed", batch.failed, batch.images["orig"].shape)
"""


def test_loader_answers_extreme_images_with_the_placeholder_in_bounded_memory(tmp_path):
    # Through the real CLIP preprocessing, under a 1.5 GB address-space limit: the 1 x 20000
    # strip alone needed 4.3 GB there, the 1 x 200000 one about 30 GB.
    import subprocess
    import sys

    paths = [tmp_path / n for n in ("a.png", "strip.png", "huge.png", "tall.png")]
    save(paths[0], Image.fromarray(gradient()))
    paths[1].write_bytes(png_bytes(200_000, 1))
    paths[2].write_bytes(png_bytes(20_000, 20_000))
    paths[3].write_bytes(png_bytes(1, 20_000))
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-c", LOADER_UNDER_MEMORY_LIMIT, *map(str, paths)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "failed [1, 2, 3] (4, 3, 224, 224)" in r.stdout
