"""The domain expert, a linear head on a frozen ConvNeXt-V2 over one domain's classes: its
artefact (:class:`DomainExpert`) and training (:func:`train_expert`); docs/CONVNEXT.md section 3."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from models import convnext, weights
from models.fileio import write_json_atomic
from pipeline.backbones import ConvNeXtBackbone
from pipeline.heads import read_json_artefact
from pipeline.images import ImageError, load_rgb

log = logging.getLogger(__name__)

EXPERT_FAMILY = "convnextv2_expert"
ARTEFACT_VERSION = 2
WEIGHTS_FILE = "expert.safetensors"
INFO_FILE = "expert.json"


@dataclass(frozen=True)
class ExpertOptions:
    """How :func:`train_expert` trains; docs/CONVNEXT.md section 3 has each option's meaning, its
    setting (``expert_<option>``) and the challenge solution's value."""

    epochs: int = 31
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    views: int = 10
    seed: int = 0
    train_resize: int = 320
    train_crop: int = 280
    eval_size: int = 384
    feature_batch: int = 16
    resample: str = "bicubic"
    schedule: str = "cosine"
    t_max: Optional[int] = None
    eta_min: float = 0.0
    select: str = "best"


class DomainExpert:
    """A linear head over ``info["class_ids"]`` on the pooled features of one ConvNeXt-V2 file;
    ``preprocess`` is its evaluation view (``info["transforms"]``: square resize to eval_size)."""

    def __init__(self, head_weight: np.ndarray, head_bias: np.ndarray, info: dict[str, Any]):
        self.head_weight = np.asarray(head_weight, np.float32)
        self.head_bias = np.asarray(head_bias, np.float32)
        self.class_ids = np.asarray(info["class_ids"], np.int64)
        k = len(self.class_ids)
        if self.head_weight.shape[0] != k or self.head_bias.shape != (k,):
            raise ValueError(
                f"head {self.head_weight.shape} / {self.head_bias.shape} does not fit {k} classes"
            )
        t = info["transforms"]
        self.preprocess = convnext.EvalTransform(int(t["eval_size"]), t.get("resample", "bicubic"))
        self.info = info

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits [n, K] over ``class_ids`` from pooled features [n, D]."""
        x, d = np.asarray(features, np.float32), self.head_weight.shape[1]
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"expected features [n, {d}], got shape {x.shape}")
        return (x @ self.head_weight.T + self.head_bias).astype(np.float32)

    def num_parameters(self) -> int:
        return int(self.head_weight.size + self.head_bias.size)

    def save(self, out_dir: str | os.PathLike) -> None:
        out_dir = Path(out_dir)
        tensors = {"head.weight": self.head_weight, "head.bias": self.head_bias}
        config = {"num_classes": len(self.class_ids), "num_features": self.head_weight.shape[1]}
        weights.save(out_dir / WEIGHTS_FILE, tensors, family=EXPERT_FAMILY, config=config)
        write_json_atomic(out_dir / INFO_FILE, self.info)  # last: marks a complete expert

    @classmethod
    def load(cls, out_dir: str | os.PathLike, backbone_path: str | os.PathLike) -> DomainExpert:
        """The expert saved in ``out_dir``; ``backbone_path`` must be the file it was trained on
        (compared by fingerprint, so the file may have moved)."""
        info_path = Path(out_dir) / INFO_FILE
        info = read_json_artefact(info_path, remedy="run train.sh to train the expert")
        if info.get("version") != ARTEFACT_VERSION:
            raise weights.WeightsError(
                f"{info_path}: artefact version {info.get('version')}, expected "
                f"{ARTEFACT_VERSION}; run train.sh"
            )
        recorded = info["backbone"]
        if weights.fingerprint(backbone_path) != recorded["fingerprint"]:
            raise weights.WeightsError(
                f"{backbone_path}: not the ConvNeXt-V2 file this expert was trained on "
                f"({recorded['path']}); set CONVNEXT to that file or run train.sh again"
            )
        tensors, _ = weights.load(Path(out_dir) / WEIGHTS_FILE, expect_family=EXPERT_FAMILY)
        return cls(tensors["head.weight"], tensors["head.bias"], info)


def _view_features(
    backbone: ConvNeXtBackbone,
    resized: list[Image.Image],
    transform: convnext.TrainTransform,
    o: ExpertOptions,
) -> np.ndarray:
    """[n, views, D] features of seeded augmented views; the backbone sees each view once."""

    def all_views() -> Iterator[np.ndarray]:
        for i, img in enumerate(resized):
            rng = np.random.default_rng([o.seed, 1, i])  # per image: independent of the others
            yield from (transform.augment(img, rng) for _ in range(o.views))

    stream, out = all_views(), []
    with tqdm(total=len(resized) * o.views, desc="train views", unit="view") as bar:
        while batch := list(itertools.islice(stream, o.feature_batch)):
            out.append(backbone.features(np.stack(batch)))
            bar.update(len(batch))
    return np.concatenate(out).reshape(len(resized), o.views, -1)


def selection_key(record: dict[str, float]) -> tuple[float, float]:
    """Higher validation accuracy, then lower loss; fit_head keeps the first of equal keys."""
    return (record["val_acc"], -record["val_loss"])


def fit_head(
    feats: np.ndarray,
    labels: np.ndarray,
    val_feats: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    options: Optional[ExpertOptions] = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], int]:
    """Train a linear head on view features ``feats`` [n, views, D] with labels [n]. Returns
    (head tensors, per-epoch history, 1-based epoch) of the epoch that ``options.select`` keeps."""
    from fewshot._optim import cosine_lr, jittor_cosine_lr
    from fewshot._tensor import as_numpy, cross_entropy, one_hot
    from models.runtime import jittor

    jt, o = jittor(), options or ExpertOptions()
    n, views, d = feats.shape
    # Initialised like the official head: normal with std .02 clipped at 2, zero bias.
    w = np.clip(np.random.default_rng([o.seed, 7]).normal(0.0, 0.02, (num_classes, d)), -2.0, 2.0)
    head = jt.nn.Linear(d, num_classes)
    head.weight.assign(jt.array(w.astype(np.float32)))
    head.bias.assign(jt.zeros(num_classes))
    # Epoch e shows image i through view order[i][e % views]: every view in turn.
    view_order = np.stack(
        [np.random.default_rng([o.seed, 2, i]).permutation(views) for i in range(n)]
    )
    optimizer = jt.nn.AdamW([head.weight, head.bias], o.lr, weight_decay=o.weight_decay)
    rate = jittor_cosine_lr if o.schedule == "jittor-cosine" else cosine_lr
    order_rng = np.random.default_rng([o.seed, 3])

    def state() -> dict[str, np.ndarray]:
        return {"head.weight": as_numpy(head.weight), "head.bias": as_numpy(head.bias)}

    history: list[dict[str, Any]] = []
    best_key, best_epoch, best = None, o.epochs, {}
    bar = tqdm(range(o.epochs), desc="expert epochs", unit="epoch")
    for epoch in bar:
        optimizer.lr = rate(o.lr, epoch, o.t_max or o.epochs, o.eta_min)
        order = order_rng.permutation(n)
        total = 0.0
        for start in range(0, n, o.batch_size):
            idx = order[start : start + o.batch_size]
            x = jt.array(feats[idx, view_order[idx, epoch % views]])
            loss = jt.nn.cross_entropy_loss(head(x), jt.array(labels[idx]))
            optimizer.step(loss)
            total += float(loss.item()) * len(idx)
        record = {"epoch": epoch + 1, "lr": optimizer.lr, "train_loss": total / n}
        if len(val_labels):
            with jt.no_grad():
                logits = head(jt.array(val_feats))
                val_loss = cross_entropy(logits, one_hot(val_labels, num_classes))
                record["val_acc"] = float((as_numpy(logits).argmax(1) == val_labels).mean())
                record["val_loss"] = float(val_loss.item())
            if o.select == "best" and (best_key is None or selection_key(record) > best_key):
                best_key, best_epoch, best = selection_key(record), epoch + 1, state()
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=record.get("val_acc", "-"))
    if o.select == "last" or not len(val_labels):
        if o.select == "best":
            log.warning("expert: no validation images, so the last epoch is kept (no selection)")
        best_epoch, best = o.epochs, state()
    return best, history, best_epoch


def train_expert(
    backbone: ConvNeXtBackbone,
    train_items: Sequence[tuple[str | os.PathLike, int]],
    val_features: np.ndarray,
    val_class_ids: np.ndarray,
    class_ids: Sequence[int],
    options: Optional[ExpertOptions] = None,
) -> DomainExpert:
    """The expert over ``class_ids`` (output order), trained on ``(image path, class id)`` items
    and selected on ``val_features`` [m, D] (evaluation view) of ``val_class_ids``."""
    o, class_ids = options or ExpertOptions(), [int(c) for c in class_ids]
    if len(set(class_ids)) != len(class_ids) or not class_ids:
        raise ValueError("class_ids must be non-empty and without duplicates")
    index = {c: k for k, c in enumerate(class_ids)}
    for what, ids in (("train_items", [c for _, c in train_items]), ("val", val_class_ids)):
        unknown = sorted({int(c) for c in ids} - set(index))
        if unknown:
            raise ValueError(
                f"{what}: class ids {unknown} are not among the expert's classes "
                f"({len(index)} ids, {min(index)}..{max(index)})"
            )
    t0 = time.time()
    train_tf = convnext.TrainTransform(o.train_resize, o.train_crop, resample=o.resample)
    # Each image decoded and resized once (the transform's first step); bad files are skipped.
    resized, train_cids, skipped = [], [], []
    for path, cid in tqdm(train_items, desc="decode train", unit="img", leave=False):
        try:
            resized.append(train_tf.resize_image(load_rgb(path)))
            train_cids.append(int(cid))
        except ImageError as e:
            log.warning("train: skipping image (%s)", e)
            skipped.append(os.fspath(path))
    empty = sorted(set(class_ids) - set(train_cids))
    if empty:
        raise ValueError(
            f"no decodable training image for class ids {empty} "
            f"({len(skipped)} training images skipped)"
        )
    y_train = np.array([index[c] for c in train_cids], np.int64)
    y_val = np.array([index[int(c)] for c in val_class_ids], np.int64)
    counts = len(class_ids), len(y_train), len(skipped), len(y_val)
    log.info("expert: %d classes, %d train (%d skipped) / %d val images", *counts)
    feats = _view_features(backbone, resized, train_tf, o)
    t_feat = time.time() - t0
    selected = len(y_val) and o.select == "best"
    val = np.asarray(val_features, np.float32)
    best, history, best_epoch = fit_head(feats, y_train, val, y_val, len(class_ids), o)
    info = {
        "version": ARTEFACT_VERSION,
        "class_ids": class_ids,
        "backbone": {
            "path": str(backbone.path.resolve()),
            "fingerprint": backbone.fingerprint(),
            "config": backbone.info["config"],
        },
        "settings": {
            **{k: getattr(o, k) for k in ("epochs", "lr", "weight_decay", "batch_size", "views")},
            "seed": o.seed,
            "schedule": f"{o.schedule} per epoch, T_max {o.t_max or o.epochs}, eta_min {o.eta_min}",
            "optimizer": "AdamW",
        },
        "transforms": {
            "train": train_tf.describe(),
            "eval": convnext.EvalTransform(o.eval_size, o.resample).describe(),
            "eval_size": o.eval_size,
            "resample": o.resample,
        },
        "history": history,
        "best_epoch": best_epoch,
        "selection": "max val_acc, ties: min val_loss, then earliest" if selected else "last epoch",
        "n_train": len(y_train),
        "n_val": len(y_val),
        "skipped_train": skipped,
        "seconds": {"features": round(t_feat, 2), "training": round(time.time() - t0 - t_feat, 2)},
    }
    return DomainExpert(best["head.weight"], best["head.bias"], info)
