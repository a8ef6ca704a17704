"""The synthetic data (pipeline.synthetic): the demo dataset, the photo dataset, the weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageError, load_rgb
from pipeline.lists import (
    list_test_images,
    read_class_list,
    read_labeled_list,
    seen_class_ids,
)
from pipeline.synthetic import DOMAINS, DemoParams, ensure_demo

SMALL = DemoParams(seed=0, train_per_class=6, test_per_class=3, nasty=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("demo") / "data"
    ensure_demo(d, SMALL)
    return d


def test_layout_and_counts(demo):
    classes = read_class_list(demo / "classes_b.txt")
    assert not (demo / "classes_b.txt").read_bytes().endswith(b"\n")  # like classes.txt
    assert classes.domain_names == tuple(d for d, _ in DOMAINS)
    assert classes.domain_names[-1] == "Stanford-Cars"
    n_classes = sum(len(names) for _, names in DOMAINS)
    assert len(classes) == n_classes
    train = read_labeled_list(demo / "train.txt", classes)
    unseen = np.flatnonzero(train.counts(len(classes)) == 0)
    np.testing.assert_array_equal(unseen, classes.ids_in_domain("Stanford-Cars"))
    seen = seen_class_ids(train, classes)
    assert (train.counts(len(classes))[seen] == 6).all()
    for p, y in zip(train.paths, train.labels):
        parts = p.split("/")
        assert parts[0] == "TrainSet" and parts[1] == classes.domains[y] and len(parts) == 4
        assert (demo / p).is_file()
    names = list_test_images(demo / "TestSet")
    assert len(names) == n_classes * 3
    assert [int(n.split("_")[1].split(".")[0]) for n in names] == list(range(1, len(names) + 1))
    truth = read_labeled_list(demo / "test_labels.txt", classes)
    assert sorted(truth.paths) == sorted(names)
    assert (truth.counts(len(classes)) == 3).all()  # every class, unseen included
    info = json.loads((demo / "DEMO.json").read_text())
    assert info["train_images"] == len(train) and info["test_images"] == len(names)


def test_nasty_files_exercise_the_robust_path(demo):
    info = json.loads((demo / "DEMO.json").read_text())
    kinds = {v: k for k, v in info["nasty"].items()}
    assert set(kinds) == {"grey", "cmyk", "palette_alpha", "grey16", "exif_rotated", "truncated"}

    def path(kind):
        (match,) = [n for n in os.listdir(demo / "TestSet") if n.split(".")[0] == kinds[kind]]
        return demo / "TestSet" / match

    assert Image.open(path("cmyk")).mode == "CMYK"
    assert Image.open(path("grey16")).mode.startswith("I")
    assert "transparency" in Image.open(path("palette_alpha")).info
    raw = Image.open(path("exif_rotated"))
    assert raw.getexif()[0x0112] == 6
    assert load_rgb(path("exif_rotated")).size == raw.size[::-1]
    for kind in ("grey", "cmyk", "palette_alpha", "grey16"):
        assert load_rgb(path(kind)).mode == "RGB"
    with pytest.raises(ImageError):
        load_rgb(path("truncated"))


def test_deterministic(tmp_path, demo):
    ensure_demo(tmp_path / "again", SMALL)
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    for f in files:
        assert (demo / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    ensure_demo(tmp_path / "other", DemoParams(seed=1, train_per_class=6, test_per_class=3))
    other = json.loads((tmp_path / "other" / "DEMO.json").read_text())
    assert other["test_images"] == len(list_test_images(demo / "TestSet"))
    assert (tmp_path / "other" / "train.txt").read_text() == (demo / "train.txt").read_text()
    assert (tmp_path / "other" / "TrainSet/Animal/Bear/1.jpg").read_bytes() != (
        demo / "TrainSet/Animal/Bear/1.jpg"
    ).read_bytes()


def test_classes_are_visually_separable(demo):
    """Nearest class mean on two hand-made descriptors (hue histogram of the saturated object
    pixels, gradient-orientation histogram for the stripes) is far above chance on the seen
    classes, and the dog domain is harder than the others, as designed."""
    classes = read_class_list(demo / "classes_b.txt")
    train = read_labeled_list(demo / "train.txt", classes)
    truth = read_labeled_list(demo / "test_labels.txt", classes)

    def feat(p):
        try:
            im = load_rgb(p)
        except ImageError:
            im = Image.new("RGB", (8, 8))
        hsv = np.asarray(im.convert("HSV"), np.float32) / 255
        obj = hsv[..., 1] > 0.5
        hue = np.histogram(hsv[..., 0][obj], bins=24, range=(0, 1))[0] / max(1, obj.sum())
        gy, gx = np.gradient(np.asarray(im.convert("L"), np.float32))
        angle = np.arctan2(gy, gx) % np.pi
        ori = np.histogram(angle, bins=12, range=(0, np.pi), weights=np.hypot(gx, gy) * obj)[0]
        return np.concatenate([hue, ori / max(1e-6, ori.sum())])

    xs = np.stack([feat(demo / p) for p in train.paths])
    seen = seen_class_ids(train, classes)
    means = np.stack([xs[train.labels == c].mean(0) for c in seen])
    keep = np.isin(truth.labels, seen)
    xt = np.stack([feat(demo / "TestSet" / p) for p in np.array(truth.paths)[keep]])
    pred = seen[((xt[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    correct = pred == truth.labels[keep]
    assert correct.mean() > 0.5  # chance is 1/22
    dogs = np.isin(truth.labels[keep], classes.ids_in_domain("Thu-dog"))
    assert correct[dogs].mean() < correct[~dogs].mean()


def test_ensure_demo_reuses_and_protects(tmp_path, demo):
    before = (demo / "DEMO.json").stat().st_mtime_ns
    assert ensure_demo(demo, SMALL) == demo
    assert (demo / "DEMO.json").stat().st_mtime_ns == before  # not regenerated
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        ensure_demo(real, SMALL)
    assert (real / "train.txt").read_text() == "precious"
    # other parameters: regenerated in place
    d = tmp_path / "d"
    ensure_demo(d, DemoParams(train_per_class=2, test_per_class=1))
    ensure_demo(d, DemoParams(train_per_class=3, test_per_class=1))
    assert json.loads((d / "DEMO.json").read_text())["params"]["train_per_class"] == 3
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_photo_dataset_layout_and_reuse(tmp_path):
    from pipeline.synthetic import photo_dataset

    classes_file = tmp_path / "c.txt"
    classes_file.write_text("Animal_x 0\nAnimal_y 1\nStanford-Cars_z 2")
    out = tmp_path / "photos"
    summary = photo_dataset(out, classes_file, train_per_class=2, test_images=3, long_side=(40, 60))
    classes = read_class_list(out / "classes_b.txt")
    train = read_labeled_list(out / "train.txt", classes)
    assert summary["train_images"] == len(train) == 4  # no training image of the unseen domain
    assert np.flatnonzero(train.counts(len(classes)) == 0).tolist() == [2]
    names = list_test_images(out / "TestSet")
    assert names == ["image_1.jpg", "image_2.jpg", "image_3.jpg"]
    for p in [out / q for q in train.paths] + [out / "TestSet" / n for n in names]:
        assert 40 <= max(load_rgb(p).size) <= 60
    truth = read_labeled_list(out / "test_labels.txt", classes)
    assert list(truth.paths) == names
    before = (out / "PHOTOS.json").stat().st_mtime_ns
    photo_dataset(out, classes_file, train_per_class=2, test_images=3, long_side=(40, 60))
    assert (out / "PHOTOS.json").stat().st_mtime_ns == before  # reused, not regenerated


def test_direct_weights_are_the_converted_ones(tmp_path):
    """write_weights(direct=True), the torch-free writer of a GPU machine, saves what the upstream
    files convert to: same family, config, keys and shapes, the same values (CLIP's kernels
    without the float16 rounding of OpenAI's files), and a file the models load."""
    from models import clip
    from models.weights import load
    from pipeline.synthetic import write_weights

    via = write_weights(tmp_path / "via", "demo", seed=1)
    direct = write_weights(tmp_path / "direct", "demo", seed=1, direct=True)
    for name, path in via.items():
        (a, info_a), (b, info_b) = load(path), load(direct[name])
        assert (info_a["family"], info_a["config"]) == (info_b["family"], info_b["config"])
        assert (info_b["source"]["format"], info_b["source"]["seed"]) == ("random", 1)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape, k
            rounded = b[k].astype(np.float16).astype(np.float32)
            assert np.array_equal(a[k], b[k]) or np.array_equal(a[k], rounded), k
    model, _ = clip.load(direct["vit"])
    assert model.visual.conv1.weight.shape[-1] == 32
