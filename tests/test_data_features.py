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
from pipeline.features import FeatureCache, FeatureError, list_fingerprint
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


def compute(cache, paths, enc, parts=PARTS, pre=None, **kw):
    kw.setdefault("batch_size", 3)
    kw.setdefault("workers", 1)
    return cache.get_or_compute(parts, paths, enc, pre or TinyPreprocess(), progress=False, **kw)


def forge_shard(shard: Path, rows: int, key: str) -> None:
    """Replace ``shard`` by a loadable one of ``rows`` zero features (d = 6) owned by ``key``."""
    tmp = shard.with_suffix(".tmp.npz")
    np.savez(tmp, features=np.zeros((rows, 6), np.float32), failed=np.zeros(0, np.int64), key=key)
    os.replace(tmp, shard)


def test_compute_then_reuse(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    enc = CountingEncoder()
    fs = compute(cache, images, enc)
    assert enc.images == 10
    assert fs["orig"].shape == (10, 6) and fs["orig"].dtype == np.float32
    np.testing.assert_allclose(fs["orig"], reference(images, enc), rtol=1e-5, atol=1e-5)
    assert fs.failed == () and fs.ok.all() and fs.n == 10 and fs.dim == 6
    shards = sorted(p.name for p in (fs.directory / "orig").iterdir())
    assert shards == ["manifest.json", "shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    manifest = json.loads((fs.directory / "orig" / "manifest.json").read_text())
    assert manifest["format"] == features.FORMAT_VERSION and manifest["n"] == 10
    assert manifest["key"]["preprocess"] == "tiny 8x8 bilinear"

    enc2 = CountingEncoder()
    fs2 = compute(cache, images, enc2)
    assert enc2.calls == 0
    np.testing.assert_array_equal(fs2["orig"], fs["orig"])
    assert fs2.directory == fs.directory


def test_resume_after_interruption(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    enc = CountingEncoder(fail_after=6)  # dies on the 3rd batch of 3: shard 0 is complete
    with pytest.raises(KeyboardInterrupt):
        compute(cache, images, enc)
    entry = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert sorted(p.name for p in (entry / "orig").iterdir()) == ["shard_00000.npz"]
    enc2 = CountingEncoder()
    fs = compute(cache, images, enc2)
    assert enc2.images == 6  # only shards 1 and 2
    np.testing.assert_allclose(fs["orig"], reference(images, enc2), rtol=1e-5, atol=1e-5)
    # no temporary files left behind
    assert not [p for p in entry.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("change", ["weights", "preprocess", "order", "file", "version"])
def test_changes_give_a_new_entry(tmp_path, images, monkeypatch, change):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    first = compute(cache, images, CountingEncoder())
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
    fs = compute(cache, paths, enc, parts=parts, pre=pre)
    assert enc.images == 10
    assert fs.key != first.key and fs.directory != first.directory


def test_corrupt_shard_is_rebuilt(tmp_path, images, caplog):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    fs = compute(cache, images, CountingEncoder())
    shard = fs.directory / "orig" / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[:50])  # truncated by a crash or a full disk
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING):
        fs2 = compute(cache, images, enc)
    assert enc.images == 4
    assert "shard_00001.npz" in caplog.text
    np.testing.assert_allclose(fs2["orig"], fs["orig"], rtol=1e-5, atol=1e-5)


def test_tampered_shard_fails_checksum(tmp_path, images, caplog):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    fs = compute(cache, images, CountingEncoder())
    shard = fs.directory / "orig" / "shard_00002.npz"
    with np.load(shard) as z:
        key = str(z["key"])
    # a loadable shard with the right key and shape, but other content than recorded
    forge_shard(shard, rows=2, key=key)
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING):
        fs2 = compute(cache, images, enc)
    assert enc.images == 2 and "checksum" in caplog.text
    np.testing.assert_allclose(fs2["orig"], fs["orig"], rtol=1e-5, atol=1e-5)


def test_loose_shard_of_another_key_is_not_used(tmp_path, images, caplog):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    fs = compute(cache, images, CountingEncoder())
    (fs.directory / "orig" / "manifest.json").unlink()
    shard = fs.directory / "orig" / "shard_00000.npz"
    forge_shard(shard, rows=4, key="someone else")
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING):
        fs2 = compute(cache, images, enc)
    assert enc.images == 4 and "another cache key" in caplog.text
    np.testing.assert_allclose(fs2["orig"], fs["orig"], rtol=1e-5, atol=1e-5)


def test_entry_with_other_key_json_is_wiped(tmp_path, images, caplog):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    fs = compute(cache, images, CountingEncoder())
    (fs.directory / "key.json").write_text('{"format": 0}')
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING):
        compute(cache, images, enc)
    assert enc.images == 10 and "holds another key" in caplog.text


def test_nan_and_shape_errors_name_the_stage(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)

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


def test_failed_images_get_placeholder_rows(tmp_path, images):
    Path(images[5]).write_bytes(b"not an image")
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    enc = CountingEncoder()
    fs = compute(cache, images, enc)
    assert fs.failed == (5,)
    assert fs.ok.tolist() == [i != 5 for i in range(10)]
    grey = np.full((1, 3, 8, 8), 128 / 255, np.float32)
    np.testing.assert_allclose(fs["orig"][5], (grey.reshape(1, -1) @ enc.w)[0], rtol=1e-5)
    ok = [p for i, p in enumerate(images) if i != 5]
    np.testing.assert_allclose(fs["orig"][fs.ok], reference(ok, enc), rtol=1e-5, atol=1e-5)
    fs2 = compute(cache, images, CountingEncoder())  # the failure list survives the cache
    assert fs2.failed == (5,)


def test_views_are_cached_separately(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
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

    fs = FeatureCache(tmp_path / "c", shard_size=4).get_or_compute(
        PARTS, images, enc, TinyPreprocess(), batch_size=3, workers=0, progress=False
    )
    want = np.stack([TinyPreprocess()(load_rgb(p)).reshape(-1)[:2] for p in images])
    np.testing.assert_allclose(fs["orig"], want, rtol=1e-5, atol=1e-5)


def test_preprocess_without_describe_is_refused(tmp_path, images):
    with pytest.raises(TypeError, match="describe"):
        FeatureCache(tmp_path).get_or_compute(PARTS, images, CountingEncoder(), lambda im: im)


def test_weights_fingerprint_is_cached(tmp_path, monkeypatch):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"0123456789" * 1000)
    cache = FeatureCache(tmp_path / "cache")
    calls = []
    real = features._sha256_file
    monkeypatch.setattr(features, "_sha256_file", lambda p: calls.append(p) or real(p))
    a = cache.fingerprint(w)
    b = cache.fingerprint(w)
    assert a == b and len(calls) == 1
    import hashlib

    assert a == hashlib.sha256(w.read_bytes()).hexdigest()
    w.write_bytes(b"x" * 10)
    assert cache.fingerprint(w) != a and len(calls) == 2
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        cache.fingerprint(tmp_path / "missing.safetensors")


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


def jobs_for(*encoders):
    return [
        features.EncoderJob({**PARTS, "backbone": f"tiny{i}"}, enc, f"test-tiny{i}")
        for i, enc in enumerate(encoders)
    ]


def test_many_encoders_decode_each_image_once(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    a, b = CountingEncoder(dim=6), CountingEncoder(dim=6)
    b.w = b.w[:, ::-1].copy()  # another encoder
    pre = CountingPreprocess()
    fa, fb = cache.get_or_compute_many(
        jobs_for(a, b), images, pre, batch_size=3, workers=1, progress=False
    )
    assert pre.seen == 10  # one decoding pass for both encoders
    assert a.images == 10 and b.images == 10
    np.testing.assert_allclose(fa["orig"], reference(images, a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb["orig"], reference(images, b), rtol=1e-5, atol=1e-5)
    assert fa.directory != fb.directory
    # Each entry is exactly what a single-encoder run writes: reused without encoding.
    for i, fs in enumerate([fa, fb]):
        again = CountingEncoder()
        got = cache.get_or_compute(
            {**PARTS, "backbone": f"tiny{i}"},
            images,
            again,
            TinyPreprocess(),
            label=f"test-tiny{i}",
            progress=False,
        )
        assert again.calls == 0 and got.directory == fs.directory
        np.testing.assert_array_equal(got["orig"], fs["orig"])


def test_many_encoders_compute_only_what_is_missing(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    a, b = CountingEncoder(), CountingEncoder()
    cache.get_or_compute(
        {**PARTS, "backbone": "tiny0"},
        images,
        a,
        TinyPreprocess(),
        label="test-tiny0",
        progress=False,
    )
    a2 = CountingEncoder()
    fa, fb = cache.get_or_compute_many(
        jobs_for(a2, b), images, TinyPreprocess(), batch_size=3, workers=1, progress=False
    )
    assert a2.calls == 0 and b.images == 10
    np.testing.assert_allclose(fb["orig"], reference(images, b), rtol=1e-5, atol=1e-5)


def test_many_encoders_interrupted_keep_finished_shards(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache", shard_size=4)
    a, b = CountingEncoder(), CountingEncoder(fail_after=6)  # b dies on the 3rd batch of 3
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute_many(
            jobs_for(a, b), images, TinyPreprocess(), batch_size=3, workers=1, progress=False
        )
    a2, b2 = CountingEncoder(), CountingEncoder()
    fa, fb = cache.get_or_compute_many(
        jobs_for(a2, b2), images, TinyPreprocess(), batch_size=3, workers=1, progress=False
    )
    # Shard 0 (images 0-3) of both entries survived; shards 1-2 are computed again.
    assert a2.images == 6 and b2.images == 6
    np.testing.assert_allclose(fa["orig"], reference(images, a2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb["orig"], reference(images, b2), rtol=1e-5, atol=1e-5)


def test_many_encoders_need_jobs(tmp_path, images):
    with pytest.raises(ValueError, match="no encoder jobs"):
        FeatureCache(tmp_path).get_or_compute_many([], images, TinyPreprocess())


def test_process_backend_gives_the_same_entry(tmp_path, images, monkeypatch):
    used = []
    loader = features.iter_view_batches

    def spy(*args, **kwargs):
        used.append(kwargs["backend"])
        return loader(*args, **kwargs)

    monkeypatch.setattr(features, "iter_view_batches", spy)
    enc = CountingEncoder()
    fs = compute(FeatureCache(tmp_path / "p", shard_size=4, backend="process"), images, enc)
    assert used == ["process"]
    ref = compute(FeatureCache(tmp_path / "t", shard_size=4), images, CountingEncoder())
    assert enc.images == 10
    np.testing.assert_array_equal(fs["orig"], ref["orig"])
    assert fs.key == ref.key  # the decoding backend is not part of what the features are
