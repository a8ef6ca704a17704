"""The ConvNeXt-V2 expert on generated images with a random-weight atto backbone.

Three classes of drawn shapes, tiny images (train crops 32 px, evaluation 32 px) and few epochs
keep it to seconds; what is checked is the mechanics: the loss goes down, the backbone runs once
per cached view, the saved head is the one of the selected epoch, artefacts round-trip.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models import convnext_v2 as cx
from models import weights
from pipeline import expert as ex

CLASS_IDS = [300, 244, 251]  # deliberately unsorted: output column k is CLASS_IDS[k]
SIZES = {"train_resize": 40, "train_crop": 32, "eval_size": 32}


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


def counting_backbone(path):
    """The backbone, with forward_features counting the images it is asked to encode."""
    model = cx.load(path)
    calls: list[int] = []
    original = model.forward_features

    def counted(x):
        calls.append(int(x.shape[0]))
        return original(x)

    model.forward_features = counted
    return model, calls


@pytest.fixture(scope="module")
def head_run(data):
    model, calls = counting_backbone(data["backbone"])
    out = data["root"] / "head"
    expert = ex.train_expert(
        data["backbone"], data["train"], data["val"], CLASS_IDS, out,
        mode="head", epochs=8, lr=1e-2, batch_size=4, views=3, seed=0, feature_batch=5,
        backbone=model, **SIZES,
    )  # fmt: skip
    return expert, out, list(calls)


def val_good(data):
    return [(p, c) for p, c in data["val"] if p not in data["broken"]]


def test_head_mode_runs_backbone_once_per_view(data, head_run):
    expert, _, calls = head_run
    n_train, n_val = 3 * 4, 3 * 3  # the broken files are skipped, not encoded
    assert sum(calls) == n_train * 3 + n_val
    assert max(calls) <= 5  # feature_batch
    assert expert.info["n_train"] == n_train and expert.info["n_val"] == n_val


def test_head_mode_lowers_the_training_loss(head_run):
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
    loaded = ex.DogExpert.load(out)
    paths, cids = zip(*val_good(data))
    logits = loaded.logits(loaded.features(paths, batch_size=4))
    labels = np.array([CLASS_IDS.index(c) for c in cids])
    assert (logits.argmax(1) == labels).mean() == pytest.approx(best["val_acc"])
    z = logits - logits.max(1, keepdims=True)
    loss = -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(labels)), labels].mean()
    assert loss == pytest.approx(best["val_loss"], rel=1e-4)
    # ...and the loss pins the epoch: no other epoch had (nearly) the same validation loss.
    others = [h["val_loss"] for h in history if h["epoch"] != best["epoch"]]
    assert min(abs(v - best["val_loss"]) for v in others) > 1e-3 * best["val_loss"]


def test_corrupt_images_are_skipped_and_recorded(data, head_run):
    info = head_run[0].info
    assert info["skipped"] == {"train": [data["broken"][0]], "val": [data["broken"][1]]}


def test_artefact_round_trips(data, head_run, tmp_path):
    expert, out, _ = head_run
    assert (out / ex.WEIGHTS_FILE).is_file()
    loaded = ex.DogExpert.load(out)
    assert loaded.class_ids.tolist() == CLASS_IDS
    np.testing.assert_array_equal(loaded.head_weight, expert.head_weight)
    paths = [p for p, _ in val_good(data)][:4]
    feats = loaded.features(paths, batch_size=3)
    np.testing.assert_array_equal(feats, loaded.features(paths, batch_size=3))  # deterministic
    # Other batch sizes change only the float summation order.
    np.testing.assert_allclose(feats, loaded.features(paths, batch_size=2), atol=1e-5)
    images = np.stack([loaded.preprocess(Image.open(p).convert("RGB")) for p in paths])
    np.testing.assert_allclose(loaded.logits(images), loaded.logits(feats), atol=1e-5)
    scores = loaded.scores(paths)
    assert scores.shape == (4, 3)
    np.testing.assert_allclose(scores.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(expert.logits(feats), loaded.logits(feats), atol=1e-6)
    assert loaded.num_parameters() == cx.num_parameters(loaded.backbone) - (10 * 320 + 10) + (
        3 * 320 + 3
    )
    # A moved backbone is found through backbone_path; a different one is refused.
    moved = shutil.copy(data["backbone"], tmp_path / "moved.safetensors")
    assert ex.DogExpert.load(out, backbone_path=moved).class_ids.tolist() == CLASS_IDS
    other = tmp_path / "other.safetensors"
    sd = cx.random_state_dict(cx.variant_config("atto", num_classes=10), seed=1)
    weights.save(other, sd, family=cx.FAMILY, config=cx.infer_config(sd))
    with pytest.raises(weights.WeightsError, match="not the backbone"):
        ex.DogExpert.load(out, backbone_path=other)


def test_inference_reports_undecodable_images(data, head_run):
    expert = head_run[0]
    broken = data["broken"][1]
    with pytest.raises(ex.ImageError, match="broken_val"):
        expert.features([data["val"][0][0], broken])
    feats = expert.features([data["val"][0][0], broken], fill_failed=True)
    assert np.isfinite(feats).all()


def test_last_stage_mode_tunes_only_the_last_stage(data, tmp_path):
    before = cx.load(data["backbone"]).state_numpy()
    out = tmp_path / "last"
    expert = ex.train_expert(
        data["backbone"], data["train"], data["val"], CLASS_IDS, out,
        mode="last_stage", epochs=4, lr=1e-2, backbone_lr=1e-3, batch_size=4, seed=0,
        feature_batch=5, **SIZES,
    )  # fmt: skip
    history = expert.info["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    after = expert.backbone.state_numpy()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.startswith(("stages.3.", "norm.")) for k in changed)
    assert any(k.startswith("stages.3.") for k in changed)
    tensors, _ = weights.load(out / ex.WEIGHTS_FILE, expect_family=ex.EXPERT_FAMILY)
    tuned = {k for k in tensors if k.startswith("backbone.")}
    assert {"backbone.norm.weight", "backbone.stages.3.1.grn.gamma"} <= tuned
    # The reloaded expert (original file + saved tuned tensors) is the returned one.
    loaded = ex.DogExpert.load(out)
    paths = [p for p, _ in val_good(data)]
    np.testing.assert_allclose(
        loaded.logits(loaded.features(paths)), expert.logits(expert.features(paths)), atol=1e-5
    )
    labels = np.array([CLASS_IDS.index(c) for _, c in val_good(data)])
    acc = (loaded.logits(loaded.features(paths)).argmax(1) == labels).mean()
    assert acc == pytest.approx(history[expert.info["best_epoch"] - 1]["val_acc"])
    assert loaded.key_parts() != ex.DogExpert.load(data["root"] / "head").key_parts()


def test_selection_rule_on_scripted_epochs():
    """max accuracy, ties by lower loss, then the earliest; the snapshot is that epoch's."""
    labels = np.array([0, 1, 1, 0])
    right = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    scripted = [
        right * 0.1 + [[0, 1], [0, 0], [0, 0], [0, 0]],  # acc 0.75
        right * 0.5,  # acc 1.0, loss higher
        right * 3.0,  # acc 1.0, loss lowest  <- selected
        right * 3.0,  # identical: the earlier one stays
        -right,  # acc 0.0
    ]
    epoch = {"n": -1}

    class Opt:
        param_groups = [{}]

    def step(idx, e):
        epoch["n"] = e
        return float(len(idx))

    plan = ex._Plan(
        Opt(), [1.0], step, lambda: scripted[epoch["n"]],
        lambda: {"epoch": np.array(epoch["n"] + 1)}, {},
    )  # fmt: skip
    history, best_epoch, snap = ex._run_epochs(5, 4, 2, plan, labels, seed=0)
    assert [h["val_acc"] for h in history] == [0.75, 1.0, 1.0, 1.0, 0.0]
    assert best_epoch == 3 and int(snap["epoch"]) == 3


def test_input_errors(data, tmp_path):
    with pytest.raises(ValueError, match="999"):
        ex.train_expert(data["backbone"], [("x.png", 999)], [], CLASS_IDS, tmp_path)
    only_broken = [(p, c) for p, c in data["train"] if c != CLASS_IDS[1]]
    only_broken.append((data["broken"][0], CLASS_IDS[1]))
    with pytest.raises(ValueError, match=f"class ids \\[{CLASS_IDS[1]}\\]"):
        ex.train_expert(data["backbone"], only_broken, [], CLASS_IDS, tmp_path, **SIZES)
    with pytest.raises(ValueError, match="mode"):
        ex.train_expert(data["backbone"], data["train"], [], CLASS_IDS, tmp_path, mode="full")
    with pytest.raises(weights.WeightsError, match="no expert"):
        ex.DogExpert.load(tmp_path / "nothing")
