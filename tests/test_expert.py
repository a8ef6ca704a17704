"""The domain expert on generated images with a random-weight ConvNeXt-V2-atto backbone.

Three classes of drawn shapes, tiny images (train crops 32 px, evaluation 32 px) and few epochs
keep it to seconds; what is checked is the mechanics: the loss goes down, the backbone runs once
per training view, the saved head is the one of the selected epoch, artefacts round-trip.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models import convnext as cx
from models import weights
from pipeline import expert as ex
from pipeline.backbones import ConvNeXtBackbone
from pipeline.images import iter_batches

CLASS_IDS = [300, 244, 251]  # deliberately unsorted: output column k is CLASS_IDS[k]
SIZES = {"train_resize": 40, "train_crop": 32, "eval_size": 32}
EVAL = cx.preprocess(32)


def draw(kind: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Class 0: red discs, 1: green squares, 2: blue horizontal stripes, on noisy grey."""
    bg = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    colour = [(220, 30, 30), (30, 200, 40), (40, 60, 220)][kind]
    for _ in range(3):
        x, y = rng.integers(0, size - 14, 2)
        r = int(rng.integers(8, 14))
        if kind == 0:
            d.ellipse([x, y, x + r, y + r], fill=colour)
        elif kind == 1:
            d.rectangle([x, y, x + r, y + r], fill=colour)
        else:
            d.rectangle([0, y, size, y + 3], fill=colour)
    return img


def make_items(root, per_class: int, seed: int, tag: str) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    items = []
    for k, cid in enumerate(CLASS_IDS):
        for j in range(per_class):
            path = root / f"{tag}_{cid}_{j}.png"
            draw(k, rng).save(path)
            items.append((str(path), cid))
    return items


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("expert")
    train = make_items(root, 4, seed=0, tag="train")
    val = make_items(root, 3, seed=1, tag="val")
    broken_train, broken_val = root / "broken_train.jpg", root / "broken_val.png"
    broken_train.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    broken_val.write_bytes(b"")
    train.append((str(broken_train), CLASS_IDS[1]))
    val.insert(2, (str(broken_val), CLASS_IDS[2]))
    backbone = root / "atto.safetensors"
    sd = cx.random_state_dict(cx.variant_config("atto", num_classes=10), seed=0)
    weights.save(backbone, sd, family=cx.FAMILY, config=cx.infer_config(sd))
    return {
        "root": root,
        "train": train,
        "val": val,
        "backbone": backbone,
        "broken": (str(broken_train), str(broken_val)),
    }


class CountingBackbone(ConvNeXtBackbone):
    """The backbone, counting the images it is asked to encode."""

    def __init__(self, path):
        super().__init__(path)
        self.calls: list[int] = []

    def features(self, batch):
        self.calls.append(len(batch))
        return super().features(batch)


def val_good(data):
    return [(p, c) for p, c in data["val"] if p not in data["broken"]]


def eval_features(backbone, paths):
    batches = iter_batches(paths, EVAL, 4, 0)
    return np.concatenate([backbone.features(b.images["orig"]) for b in batches])


@pytest.fixture(scope="module")
def head_run(data):
    backbone = CountingBackbone(data["backbone"])
    paths, cids = zip(*val_good(data))
    val = eval_features(ConvNeXtBackbone(data["backbone"]), paths)
    options = ex.ExpertOptions(
        epochs=8, lr=1e-2, batch_size=4, views=3, seed=0, feature_batch=5, **SIZES
    )
    expert = ex.train_expert(backbone, data["train"], val, np.array(cids), CLASS_IDS, options)
    out = data["root"] / "head"
    expert.save(out)
    return expert, out, list(backbone.calls)


def test_backbone_runs_once_per_training_view(data, head_run):
    expert, _, calls = head_run
    n_train, n_val = 3 * 4, 3 * 3  # the broken training file is skipped, not encoded
    assert sum(calls) == n_train * 3
    assert max(calls) <= 5  # feature_batch
    assert expert.info["n_train"] == n_train and expert.info["n_val"] == n_val


def test_training_lowers_the_loss(head_run):
    history = head_run[0].info["history"]
    assert len(history) == 8 and [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    lrs = [h["lr"] for h in history]
    assert lrs[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs, lrs[1:]))


def test_saved_head_is_the_selected_epoch(data, head_run):
    _, out, _ = head_run
    info = json.loads((out / ex.INFO_FILE).read_text())
    history = info["history"]
    # The rule: highest validation accuracy, then lowest validation loss, then earliest.
    best = min(history, key=lambda h: (-h["val_acc"], h["val_loss"], h["epoch"]))
    assert info["best_epoch"] == best["epoch"]
    # Recompute the validation metrics from the saved head and fresh features.
    loaded = ex.DomainExpert.load(out, data["backbone"])
    paths, cids = zip(*val_good(data))
    logits = loaded.logits(eval_features(ConvNeXtBackbone(data["backbone"]), paths))
    labels = np.array([CLASS_IDS.index(c) for c in cids])
    assert (logits.argmax(1) == labels).mean() == pytest.approx(best["val_acc"])
    z = logits - logits.max(1, keepdims=True)
    loss = -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(labels)), labels].mean()
    assert loss == pytest.approx(best["val_loss"], rel=1e-4)
    # ...and the loss pins the epoch: no other epoch had (nearly) the same validation loss.
    others = [h["val_loss"] for h in history if h["epoch"] != best["epoch"]]
    assert min(abs(v - best["val_loss"]) for v in others) > 1e-3 * best["val_loss"]


def test_corrupt_training_images_are_skipped_and_recorded(data, head_run):
    assert head_run[0].info["skipped_train"] == [data["broken"][0]]


def test_artefact_round_trips(data, head_run, tmp_path):
    expert, out, _ = head_run
    assert (out / ex.WEIGHTS_FILE).is_file()
    loaded = ex.DomainExpert.load(out, data["backbone"])
    assert loaded.class_ids.tolist() == CLASS_IDS
    np.testing.assert_array_equal(loaded.head_weight, expert.head_weight)
    assert loaded.preprocess == EVAL
    feats = np.random.default_rng(0).normal(size=(4, 320)).astype(np.float32)
    np.testing.assert_array_equal(expert.logits(feats), loaded.logits(feats))
    np.testing.assert_allclose(
        loaded.logits(feats), feats @ expert.head_weight.T + expert.head_bias, rtol=1e-6
    )
    assert loaded.num_parameters() == 3 * 320 + 3
    with pytest.raises(ValueError, match="features"):
        loaded.logits(feats[:, :10])
    # A moved backbone is accepted (same fingerprint); a different one is refused.
    moved = shutil.copy(data["backbone"], tmp_path / "moved.safetensors")
    assert ex.DomainExpert.load(out, moved).class_ids.tolist() == CLASS_IDS
    other = tmp_path / "other.safetensors"
    sd = cx.random_state_dict(cx.variant_config("atto", num_classes=10), seed=1)
    weights.save(other, sd, family=cx.FAMILY, config=cx.infer_config(sd))
    with pytest.raises(weights.WeightsError, match="not the ConvNeXt-V2 file"):
        ex.DomainExpert.load(out, other)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ex.INFO_FILE).write_text("{")
    with pytest.raises(weights.WeightsError, match="not valid JSON"):
        ex.DomainExpert.load(tmp_path / "bad", data["backbone"])


def test_selection_rule():
    """max accuracy, ties by lower loss; the loop keeps the first of equals."""
    records = [
        {"val_acc": 0.75, "val_loss": 0.1},
        {"val_acc": 1.0, "val_loss": 0.5},
        {"val_acc": 1.0, "val_loss": 0.2},  # <- selected
        {"val_acc": 1.0, "val_loss": 0.2},  # identical: not strictly better, the earlier stays
        {"val_acc": 0.0, "val_loss": 0.0},
    ]
    best = 0
    for i, r in enumerate(records):
        if ex.selection_key(r) > ex.selection_key(records[best]):
            best = i
    assert best == 2


def test_without_validation_the_last_epoch_is_kept():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 2, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    empty = np.zeros((0, 8), np.float32)
    none = np.zeros(0, np.int64)
    best, history, epoch = ex.fit_head(feats, labels, empty, none, 3, ex.ExpertOptions(epochs=3))
    assert epoch == 3 and len(history) == 3 and "val_acc" not in history[0]
    more, _, _ = ex.fit_head(feats, labels, empty, none, 3, ex.ExpertOptions(epochs=4))
    assert not np.array_equal(best["head.weight"], more["head.weight"])  # it is the last one


def test_input_errors(data, tmp_path):
    backbone = ConvNeXtBackbone(data["backbone"])
    none = (np.zeros((0, 320), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="999"):
        ex.train_expert(backbone, [("x.png", 999)], *none, CLASS_IDS)
    with pytest.raises(ValueError, match="val: class ids \\[7\\]"):
        ex.train_expert(backbone, data["train"], none[0], np.array([7]), CLASS_IDS)
    only_broken = [(p, c) for p, c in data["train"] if c != CLASS_IDS[1]]
    only_broken.append((data["broken"][0], CLASS_IDS[1]))
    with pytest.raises(ValueError, match=f"class ids \\[{CLASS_IDS[1]}\\]"):
        ex.train_expert(backbone, only_broken, *none, CLASS_IDS, ex.ExpertOptions(**SIZES))
    with pytest.raises(weights.WeightsError, match="not found; run train.sh"):
        ex.DomainExpert.load(tmp_path / "nothing", data["backbone"])


def test_challenge_recipe_schedule_and_last_epoch():
    from _reference import jittor_scheduler_rates

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 3, 8)).astype(np.float32)
    labels = np.arange(12) % 3
    val = (rng.normal(size=(6, 8)).astype(np.float32), np.arange(6) % 3)
    recipe = ex.ExpertOptions(
        epochs=8, lr=1e-2, weight_decay=0.0, schedule="jittor-cosine", t_max=3, eta_min=1e-5
    )
    last = dataclasses.replace(recipe, select="last")
    best, history, epoch = ex.fit_head(feats, labels, *val, 3, last)
    rates = jittor_scheduler_rates(8, 3, 1e-5, base=1e-2)
    np.testing.assert_allclose([h["lr"] for h in history], rates, rtol=1e-9)
    assert epoch == 8 and "val_acc" in history[0]  # validated, but the last epoch is kept
    no_val = ex.fit_head(feats, labels, np.zeros((0, 8), np.float32), np.zeros(0, int), 3, recipe)
    np.testing.assert_array_equal(best["head.weight"], no_val[0]["head.weight"])
    decayed = ex.fit_head(feats, labels, *val, 3, dataclasses.replace(last, weight_decay=0.5))
    assert not np.allclose(decayed[0]["head.weight"], best["head.weight"])
