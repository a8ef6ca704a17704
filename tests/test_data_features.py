"""The feature cache (pipeline.features): reuse, resume, invalidation, corruption, NaN checks."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.features as features
from pipeline.features import Encoder, FeatureCache, FeatureError, list_fingerprint
from pipeline.images import load_rgb


class TinyPreprocess:
    def __init__(self, size: int = 8) -> None:
        self.size = size

    def __call__(self, im: Image.Image) -> np.ndarray:
        a = np.asarray(im.resize((self.size, self.size), Image.BILINEAR), np.float32) / 255.0
        return a.transpose(2, 0, 1)

    def describe(self) -> str:
        return f"tiny {self.size}x{self.size} bilinear"


class CountingEncoder:
    """A fixed random projection of the pixels, counting the images it encodes."""

    def __init__(self, dim: int = 6, size: int = 8, fail_after: int | None = None) -> None:
        self.w = np.random.default_rng(0).normal(size=(3 * size * size, dim)).astype(np.float32)
        self.images = 0
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.images >= self.fail_after:
            raise KeyboardInterrupt  # a user pressing Ctrl-C mid-extraction
        self.calls += 1
        self.images += len(batch)
        return batch.reshape(len(batch), -1) @ self.w


@pytest.fixture
def images(tmp_path) -> list[str]:
    rng = np.random.default_rng(1)
    d = tmp_path / "img"
    d.mkdir()
    paths = []
    for i in range(10):
        p = d / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (10 + i, 9, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def reference(paths, enc, flip=False):
    pre = TinyPreprocess()
    out = []
    for p in paths:
        im = load_rgb(p)
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(pre(im))
    return np.stack(out).reshape(len(paths), -1) @ enc.w


PARTS = {"backbone": "tiny", "weights": "abc", "list": "test"}


def compute(cache, paths, enc, parts=PARTS, pre=None, label="test-tiny", **kw):
    kw.setdefault("batch_size", 3)
    kw.setdefault("workers", 1)
    views = kw.pop("views", ("orig",))
    (fs,) = cache.get(
        [Encoder(parts, enc, label)], paths, pre or TinyPreprocess(), views, progress=False, **kw
    )
    return fs


def entries(root: Path) -> dict[str, list[str]]:
    """Cache files by suffix (.npy, .json, .part folders)."""
    out: dict[str, list[str]] = {}
    for p in sorted(root.iterdir()):
        out.setdefault(p.suffix, []).append(p.name)
    return out


def test_compute_then_reuse(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    enc = CountingEncoder()
    fs = compute(cache, images, enc)
    assert enc.images == 10
    assert fs["orig"].shape == (10, 6) and fs["orig"].dtype == np.float32
    np.testing.assert_allclose(fs["orig"], reference(images, enc), rtol=1e-5, atol=1e-5)
    assert fs.failed == ()
    # one entry: the array and its key beside it, nothing else
    files = entries(tmp_path / "cache")
    assert sorted(files) == [".json", ".npy"] and len(files[".npy"]) == 1
    assert files[".npy"][0].startswith("test-tiny-orig-")
    info = json.loads((tmp_path / "cache" / files[".json"][0]).read_text())
    assert info["key"]["format"] == features.FORMAT_VERSION and info["key"]["n"] == 10
    assert info["key"]["preprocess"] == "tiny 8x8 bilinear" and info["key"]["view"] == "orig"
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / files[".npy"][0]), fs["orig"])

    enc2 = CountingEncoder()
    fs2 = compute(cache, images, enc2)
    assert enc2.calls == 0
    np.testing.assert_array_equal(fs2["orig"], fs["orig"])


def test_resume_after_interruption(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    enc = CountingEncoder(fail_after=6)  # dies in the 2nd chunk: chunk 0 is complete
    with pytest.raises(KeyboardInterrupt):
        compute(cache, images, enc)
    (part,) = (tmp_path / "cache").glob("*.part")
    assert sorted(p.name for p in part.iterdir()) == ["chunk_00000.npz"]
    assert not list((tmp_path / "cache").glob("*.json"))  # not complete
    enc2 = CountingEncoder()
    fs = compute(cache, images, enc2)
    assert enc2.images == 6  # only chunks 1 and 2
    np.testing.assert_allclose(fs["orig"], reference(images, enc2), rtol=1e-5, atol=1e-5)
    # the chunks are gone once joined, and no temporary file is left behind
    assert sorted(entries(tmp_path / "cache")) == [".json", ".npy"]
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("change", ["weights", "preprocess", "order", "file", "version"])
def test_changes_give_a_new_entry(tmp_path, images, monkeypatch, change):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    compute(cache, images, CountingEncoder())
    parts, pre, paths = dict(PARTS), TinyPreprocess(), list(images)
    if change == "weights":
        parts["weights"] = "def"
    elif change == "preprocess":
        pre.describe = lambda: "tiny 8x8 bicubic"  # same type, other preprocessing
    elif change == "order":
        paths = paths[::-1]
    elif change == "file":
        Image.new("RGB", (5, 5), (1, 2, 3)).save(paths[4])
        os.utime(paths[4], ns=(1, 1))  # different mtime even on coarse file systems
    elif change == "version":
        monkeypatch.setattr(features, "FORMAT_VERSION", features.FORMAT_VERSION + 1)
    enc = CountingEncoder()
    compute(cache, paths, enc, parts=parts, pre=pre)
    assert enc.images == 10
    assert len(entries(tmp_path / "cache")[".npy"]) == 2


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "nan", "other key", "bad json"])
def test_damaged_entry_is_rebuilt(tmp_path, images, caplog, damage):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    fs = compute(cache, images, CountingEncoder())
    (array,) = (tmp_path / "cache").glob("*.npy")
    info = array.with_suffix(".json")
    if damage == "truncated":  # a crash or a full disk
        array.write_bytes(array.read_bytes()[:100])
    elif damage == "wrong shape":
        np.save(array, np.zeros((9, 6), np.float32))
    elif damage == "nan":
        np.save(array, np.full((10, 6), np.nan, np.float32))
    elif damage == "other key":  # a copied file, or a truncated-hash collision
        info.write_text(json.dumps({**json.loads(info.read_text()), "key": {"format": 0}}))
    else:
        info.write_text("{")
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING):
        fs2 = compute(cache, images, enc)
    assert enc.images == 10 and "unusable" in caplog.text
    np.testing.assert_allclose(fs2["orig"], fs["orig"], rtol=1e-5, atol=1e-5)


def test_damaged_chunk_is_recomputed(tmp_path, images, caplog):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    with pytest.raises(KeyboardInterrupt):
        compute(cache, images, CountingEncoder(fail_after=8))  # chunks 0 and 1 complete
    (part,) = (tmp_path / "cache").glob("*.part")
    chunk = part / "chunk_00001.npz"
    chunk.write_bytes(chunk.read_bytes()[:50])
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING):
        fs = compute(cache, images, enc)
    assert enc.images == 6 and "chunk_00001.npz" in caplog.text  # chunks 1 and 2
    np.testing.assert_allclose(fs["orig"], reference(images, enc), rtol=1e-5, atol=1e-5)


def test_nan_and_shape_errors_name_the_stage(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)

    def nan_enc(batch):
        out = np.ones((len(batch), 4), np.float32)
        out[-1, 2] = np.nan
        return out

    with pytest.raises(FeatureError) as e:
        compute(cache, images, nan_enc, label="clip-vit-test")
    assert "clip-vit-test" in str(e.value) and "NaN/inf" in str(e.value)
    assert images[2] in str(e.value)  # last image of the first batch of 3
    with pytest.raises(FeatureError, match="shape"):
        compute(cache, images, lambda b: np.ones((len(b) + 1, 4)), label="x")
    with pytest.raises(FeatureError, match="shape"):
        compute(cache, images, lambda b: np.ones(len(b)), label="x")
    dims = iter([4, 5])
    with pytest.raises(FeatureError, match="shape"):  # d changes between batches
        compute(cache, images, lambda b: np.ones((len(b), next(dims))), label="y")


def test_failed_images_get_placeholder_rows(tmp_path, images):
    Path(images[5]).write_bytes(b"not an image")
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    enc = CountingEncoder()
    fs = compute(cache, images, enc)
    assert fs.failed == (5,)
    grey = np.full((1, 3, 8, 8), 128 / 255, np.float32)
    np.testing.assert_allclose(fs["orig"][5], (grey.reshape(1, -1) @ enc.w)[0], rtol=1e-5)
    ok = [p for i, p in enumerate(images) if i != 5]
    np.testing.assert_allclose(
        np.delete(fs["orig"], 5, axis=0), reference(ok, enc), rtol=1e-5, atol=1e-5
    )
    fs2 = compute(cache, images, CountingEncoder())  # the failure list survives the cache
    assert fs2.failed == (5,)


def test_views_are_cached_separately(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    enc = CountingEncoder()
    fs = compute(cache, images, enc, views=("orig",))
    enc2 = CountingEncoder()
    both = compute(cache, images, enc2, views=("orig", "flip"))
    assert enc2.images == 10  # only the flip view was missing
    np.testing.assert_array_equal(both["orig"], fs["orig"])
    np.testing.assert_allclose(
        both["flip"], reference(images, enc, flip=True), rtol=1e-5, atol=1e-5
    )
    enc3 = CountingEncoder()
    only_flip = compute(cache, images, enc3, views=("flip",))
    assert enc3.calls == 0
    np.testing.assert_array_equal(only_flip["flip"], both["flip"])
    with pytest.raises(ValueError, match="unknown views"):
        compute(cache, images, enc3, views=("rot90",))


def test_jittor_like_outputs_are_copied(tmp_path, images):
    class FakeVar:
        def __init__(self, a):
            self.a = a

        def numpy(self):
            return self.a  # aliasing buffer, as Jittor may return

    buf = np.zeros((3, 2), np.float32)

    def enc(batch):
        buf[: len(batch)] = batch.reshape(len(batch), -1)[:, :2]
        return FakeVar(buf[: len(batch)])

    fs = compute(FeatureCache(tmp_path / "c", chunk_size=4), images, enc, workers=0)
    want = np.stack([TinyPreprocess()(load_rgb(p)).reshape(-1)[:2] for p in images])
    np.testing.assert_allclose(fs["orig"], want, rtol=1e-5, atol=1e-5)


def test_bad_calls_are_refused(tmp_path, images):
    with pytest.raises(TypeError, match="describe"):
        compute(FeatureCache(tmp_path), images, CountingEncoder(), pre=lambda im: im)
    with pytest.raises(ValueError, match="no encoders"):
        FeatureCache(tmp_path).get([], images, TinyPreprocess())
    with pytest.raises(ValueError, match="empty image list"):
        compute(FeatureCache(tmp_path), [], CountingEncoder())


def test_list_fingerprint(tmp_path, images):
    a = list_fingerprint(images)
    assert a == list_fingerprint([Path(p) for p in images])
    assert a != list_fingerprint(images[::-1])
    assert a != list_fingerprint(images[:-1])
    assert list_fingerprint([tmp_path / "missing.jpg"]) != list_fingerprint([tmp_path / "m2.jpg"])


class CountingPreprocess(TinyPreprocess):
    """TinyPreprocess that counts the images it is given (= images decoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def __call__(self, im: Image.Image) -> np.ndarray:
        self.seen += 1
        return super().__call__(im)


def encoders(*fns):
    return [
        Encoder({**PARTS, "backbone": f"tiny{i}"}, enc, f"test-tiny{i}")
        for i, enc in enumerate(fns)
    ]


def test_many_encoders_decode_each_image_once(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    a, b = CountingEncoder(dim=6), CountingEncoder(dim=6)
    b.w = b.w[:, ::-1].copy()  # another encoder
    pre = CountingPreprocess()
    fa, fb = cache.get(encoders(a, b), images, pre, batch_size=3, workers=1, progress=False)
    assert pre.seen == 10  # one decoding pass for both encoders
    assert a.images == 10 and b.images == 10
    np.testing.assert_allclose(fa["orig"], reference(images, a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb["orig"], reference(images, b), rtol=1e-5, atol=1e-5)
    assert len(entries(tmp_path / "cache")[".npy"]) == 2
    # Each entry is exactly what a single-encoder run writes: reused without encoding.
    for i, fs in enumerate([fa, fb]):
        again = CountingEncoder()
        parts = {**PARTS, "backbone": f"tiny{i}"}
        got = compute(cache, images, again, parts=parts, label=f"test-tiny{i}")
        assert again.calls == 0
        np.testing.assert_array_equal(got["orig"], fs["orig"])


def test_many_encoders_compute_only_what_is_missing(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    compute(
        cache, images, CountingEncoder(), parts={**PARTS, "backbone": "tiny0"}, label="test-tiny0"
    )
    a2, b = CountingEncoder(), CountingEncoder()
    fa, fb = cache.get(
        encoders(a2, b), images, TinyPreprocess(), batch_size=3, workers=1, progress=False
    )
    assert a2.calls == 0 and b.images == 10
    np.testing.assert_allclose(fb["orig"], reference(images, b), rtol=1e-5, atol=1e-5)


def test_many_encoders_interrupted_keep_finished_chunks(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    a, b = CountingEncoder(), CountingEncoder(fail_after=6)  # b dies in the 2nd chunk
    with pytest.raises(KeyboardInterrupt):
        cache.get(encoders(a, b), images, TinyPreprocess(), batch_size=3, workers=1, progress=False)
    a2, b2 = CountingEncoder(), CountingEncoder()
    fa, fb = cache.get(
        encoders(a2, b2), images, TinyPreprocess(), batch_size=3, workers=1, progress=False
    )
    # Chunk 0 (images 0-3) of both entries survived; chunks 1-2 are computed again.
    assert a2.images == 6 and b2.images == 6
    np.testing.assert_allclose(fa["orig"], reference(images, a2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb["orig"], reference(images, b2), rtol=1e-5, atol=1e-5)


def test_aug_view_entries_are_keyed_by_their_seed(tmp_path, images):
    from models.clip.preprocess import Preprocess

    cache = FeatureCache(tmp_path / "cache", chunk_size=4)
    pre = Preprocess(8)
    a = compute(cache, images, CountingEncoder(), pre=pre, views=("aug",), seed=0)
    enc = CountingEncoder()
    b = compute(cache, images, enc, pre=pre, views=("aug",), seed=1)
    assert enc.images == 10 and not np.array_equal(a["aug"], b["aug"])
    enc = CountingEncoder()
    again = compute(cache, images, enc, pre=pre, views=("aug",), seed=0)
    assert enc.calls == 0
    np.testing.assert_array_equal(again["aug"], a["aug"])
