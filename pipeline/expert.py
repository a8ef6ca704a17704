"""The ConvNeXt-V2 domain expert (ALGORITHMS.md section 7): by default, the 130 dog breeds.

The cascade hands the images predicted as dogs to this expert. It is a ConvNeXt-V2 pretrained on
ImageNet-1K with a fresh Linear head over the expert's classes, tuned on the few-shot images:

- ``mode="head"`` (the challenge solution): the backbone is frozen, so it runs once per cached
  view instead of once per epoch. Each training image gets ``views`` augmented views (Resize
  320 -> RandomCrop 280 -> flip, seeded) and each validation image one evaluation view (Resize
  384); their pooled features are computed once, then the head trains on the cached features.
  Every epoch shows each image once, through one of its cached views (each view in turn, in a
  seeded order per image), so an epoch has as many steps as the on-the-fly original.
- ``mode="last_stage"``: fine-tunes the last stage's blocks, the final LayerNorm and the head,
  with fresh augmentation every epoch. The frozen trunk runs without gradients on every step;
  the validation images' trunk outputs are computed once and cached.

Both train with AdamW (lr 1e-3, weight decay 0.01), a per-epoch cosine schedule, batch 32 and
31 epochs, evaluate on the held-out validation images after every epoch and keep the epoch with
the best validation accuracy (ties: lower validation loss, then the earlier epoch). The test set
is never looked at.

Artefacts in ``out_dir``: ``expert.safetensors`` (head, and the tuned backbone tensors under
``backbone.`` in last_stage mode; no pickle) and ``expert.json`` (classes, backbone file and
fingerprint, settings, per-epoch history, chosen epoch, skipped images).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from models import convnext_v2 as cx
from models import weights
from pipeline.fileio import write_json_atomic
from pipeline.images import ImageError, iter_batches, load_rgb

log = logging.getLogger(__name__)

jt = cx.jt
nn = jt.nn

# Thu-dog classes of the challenge (data/classes.txt ids 244..373).
DOG_CLASS_IDS: tuple[int, ...] = tuple(range(244, 374))
MODES = ("head", "last_stage")
EXPERT_FAMILY = "convnextv2_expert"
ARTEFACT_VERSION = 1
WEIGHTS_FILE = "expert.safetensors"
INFO_FILE = "expert.json"

Item = tuple[Union[str, os.PathLike], int]


# --------------------------------------------------------------------------------------------
# Small helpers


def fingerprint(path: str | os.PathLike, block: int = 1 << 20) -> dict[str, Any]:
    """Cheap identity of a weight file: size and sha256 of its first and last ``block`` bytes.

    Enough to notice a different or re-converted backbone without hashing hundreds of MB.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(block))
        if size > block:
            f.seek(max(block, size - block))
            h.update(f.read(block))
    return {"size": size, "sha256_ends": h.hexdigest()}


def _cosine_factor(epoch: int, epochs: int) -> float:
    # torch's CosineAnnealingLR(T_max=epochs, eta_min=0) stepped once per epoch.
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _trunc_normal_head(num_features: int, num_classes: int, seed: int) -> nn.Linear:
    """A fresh Linear head, initialised like the official head (trunc-normal .02, zero bias)."""
    rng = np.random.default_rng([seed, 7])
    w = rng.normal(0.0, 0.02, size=(num_classes, num_features))
    w = np.clip(w, -2.0, 2.0)  # the official +-2 cut; never reached at std .02
    head = nn.Linear(num_features, num_classes)
    head.weight.assign(jt.array(w.astype(np.float32)))
    head.bias.assign(jt.zeros(num_classes))
    return head


def _to_numpy(v) -> np.ndarray:
    return np.array(v.numpy(), dtype=np.float32, copy=True)  # Jittor may alias its buffer


def _check_items(items: Sequence[Item], index: dict[int, int], what: str) -> list[tuple[str, int]]:
    out, unknown = [], Counter()
    for path, cid in items:
        if int(cid) not in index:
            unknown[int(cid)] += 1
        out.append((os.fspath(path), int(cid)))
    if unknown:
        raise ValueError(
            f"{what}: class ids {sorted(unknown)} are not among the expert's classes "
            f"({len(index)} ids, {min(index)}..{max(index)})"
        )
    return out


# --------------------------------------------------------------------------------------------
# The trained expert


class DogExpert:
    """A ConvNeXt-V2 backbone plus a Linear head over ``class_ids`` (numpy int64 [K]).

    Evaluation is deterministic: one view per image (bicubic resize to ``eval_size`` squared, no
    flip), pooled features after the final LayerNorm, then the head.
    """

    def __init__(
        self,
        backbone: cx.ConvNeXtV2,
        head_weight: np.ndarray,
        head_bias: np.ndarray,
        class_ids: Sequence[int],
        *,
        eval_size: int = 384,
        info: Optional[dict[str, Any]] = None,
    ):
        self.backbone = backbone.eval()
        self.head_weight = np.asarray(head_weight, np.float32)
        self.head_bias = np.asarray(head_bias, np.float32)
        self.class_ids = np.asarray(class_ids, np.int64)
        if self.head_weight.shape != (len(self.class_ids), backbone.num_features):
            raise ValueError(
                f"head weight {self.head_weight.shape} does not fit {len(self.class_ids)} classes "
                f"x {backbone.num_features} features"
            )
        self.preprocess = cx.EvalTransform(eval_size)
        self.info = info or {}

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @classmethod
    def load(
        cls,
        out_dir: str | os.PathLike,
        backbone_path: str | os.PathLike | None = None,
        *,
        backbone: cx.ConvNeXtV2 | None = None,
    ) -> DogExpert:
        """Load an expert saved by :func:`train_expert`.

        ``backbone_path`` overrides the backbone file recorded at training time (e.g. after
        moving it); its fingerprint must still match. ``backbone``: an already loaded model of
        that file, to share it (in last_stage mode its last stage is overwritten).
        """
        out_dir = Path(out_dir)
        info_path = out_dir / INFO_FILE
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError as e:
            raise weights.WeightsError(f"{info_path}: no expert here (run train.py)") from e
        except ValueError as e:
            raise weights.WeightsError(f"{info_path}: not valid JSON ({e})") from e
        if info.get("version") != ARTEFACT_VERSION:
            raise weights.WeightsError(
                f"{info_path}: artefact version {info.get('version')}, expected {ARTEFACT_VERSION}"
            )
        recorded = info["backbone"]
        path = Path(backbone_path or recorded["path"])
        if not path.is_file():
            raise weights.WeightsError(
                f"{info_path}: backbone {path} not found (pass backbone_path to point elsewhere)"
            )
        if fingerprint(path) != recorded["fingerprint"]:
            raise weights.WeightsError(
                f"{path}: not the backbone this expert was trained on ({recorded['path']}, "
                f"fingerprint {recorded['fingerprint']}); retrain the expert"
            )
        tensors, _ = weights.load(out_dir / WEIGHTS_FILE, expect_family=EXPERT_FAMILY)
        model = backbone if backbone is not None else cx.load(path)
        tuned = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
        if tuned:
            model.load_numpy(tuned, source=str(out_dir / WEIGHTS_FILE), strict=False)
        return cls(
            model,
            tensors["head.weight"],
            tensors["head.bias"],
            info["class_ids"],
            eval_size=int(info["transforms"]["eval_size"]),
            info=info,
        )

    # ---------------------------------------------------------------- inference

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Pooled backbone features of preprocessed images float32 [B,3,H,W] -> [B, D]."""
        with jt.no_grad():
            return _to_numpy(self.backbone.forward_features(jt.array(images)))

    def features(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 16,
        workers: Optional[int] = None,
        *,
        fill_failed: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """Features [n, D] of image files (deterministic evaluation view).

        An undecodable image raises ImageError naming it, unless ``fill_failed`` (then it gets
        the features of a mid-grey image, as the feature cache does).
        """
        paths = [os.fspath(p) for p in paths]
        out = np.zeros((len(paths), self.backbone.num_features), np.float32)
        errors: dict[int, str] = {}
        batches = iter_batches(
            paths,
            self.preprocess,
            batch_size,
            workers,
            fill_failed=fill_failed,
            on_error=errors.__setitem__,
        )
        bar = tqdm(total=len(paths), desc="expert features", unit="img", disable=not progress)
        with bar:
            for b in batches:
                if b.failed and not fill_failed:
                    raise ImageError(errors[b.failed[0]])  # the loader's message names the file
                if len(b.indices):
                    out[b.indices] = self.encode(b.images)
                bar.update(len(b.indices))
        if errors:
            log.warning("%d undecodable image(s) encoded as grey: %s", len(errors), errors)
        return out

    def logits(
        self,
        images_or_features: np.ndarray | Sequence[Image.Image],
        batch_size: int = 16,
    ) -> np.ndarray:
        """Logits [n, K] over ``class_ids`` from features [n, D], preprocessed images
        [n, 3, H, W], or a list of PIL images."""
        x = images_or_features
        if not isinstance(x, np.ndarray):
            x = np.stack([self.preprocess(im) for im in x]) if len(x) else np.zeros((0, 3, 1, 1))
        x = np.asarray(x, np.float32)
        if x.ndim == 4:
            feats = [self.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
            x = np.concatenate(feats) if feats else np.zeros((0, self.backbone.num_features))
        if x.ndim != 2 or x.shape[1] != self.backbone.num_features:
            raise ValueError(
                f"expected features [n, {self.backbone.num_features}] or images [n, 3, H, W], "
                f"got shape {x.shape}"
            )
        return (x @ self.head_weight.T + self.head_bias).astype(np.float32)

    def scores(self, paths: Sequence[str | os.PathLike], batch_size: int = 16, **kw) -> np.ndarray:
        """Softmax probabilities [n, K] over ``class_ids`` for image files."""
        return _softmax(self.logits(self.features(paths, batch_size, **kw)))

    def key_parts(self) -> dict[str, str]:
        """What identifies :meth:`features`, for pipeline.features.FeatureCache keys."""
        parts = {"backbone": "convnextv2-expert", "eval": self.preprocess.describe()}
        parts["weights"] = json.dumps(self.info.get("backbone", {}).get("fingerprint", {}))
        if self.info.get("mode") == "last_stage":  # the features themselves were tuned
            parts["tuned"] = str(self.info.get("tuned_sha256", ""))
        return parts

    def num_parameters(self) -> int:
        """Parameters in use: the backbone without its ImageNet head, plus the expert head."""
        n = cx.num_parameters(self.backbone)
        if self.backbone.head is not None:
            n -= cx.num_parameters(self.backbone.head)
        return n + self.head_weight.size + self.head_bias.size


# --------------------------------------------------------------------------------------------
# Feature extraction for training


def _decode_train(
    items: Sequence[tuple[str, int]], transform: cx.TrainTransform
) -> tuple[list[Image.Image], list[int], list[str]]:
    """Decode and resize (the deterministic first step of the training transform) every training
    image, keeping only the small resized copy; undecodable ones are skipped with a warning."""
    images, labels, skipped = [], [], []
    for path, label in tqdm(items, desc="decode train", unit="img", leave=False):
        try:
            images.append(transform.resize_image(load_rgb(path)))
            labels.append(label)
        except ImageError as e:
            log.warning("train: skipping image (%s)", e)
            skipped.append(path)
    return images, labels, skipped


def _view_features(
    model: cx.ConvNeXtV2,
    resized: list[Image.Image],
    transform: cx.TrainTransform,
    views: int,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """[n, views, D] features of seeded augmented views; the backbone sees each view once."""
    n, d = len(resized), model.num_features
    out = np.zeros((n * views, d), np.float32)
    buffer: list[np.ndarray] = []
    done = 0
    with tqdm(total=n * views, desc="train views", unit="view") as bar:
        for i, img in enumerate(resized):
            rng = np.random.default_rng([seed, 1, i])  # per image: independent of the others
            buffer.extend(transform.augment(img, rng) for _ in range(views))
            while len(buffer) >= batch_size or (i == n - 1 and buffer):
                batch, buffer = buffer[:batch_size], buffer[batch_size:]
                with jt.no_grad():
                    feats = model.forward_features(jt.array(np.stack(batch)))
                out[done : done + len(batch)] = _to_numpy(feats)
                done += len(batch)
                bar.update(len(batch))
    return out.reshape(n, views, d)


def _eval_outputs(
    fn: Callable[[Any], Any], paths: Sequence[str], size: int, batch_size: int, what: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``fn`` (a backbone function) on the evaluation view of every decodable image.

    Streams the files through the parallel loader (a large validation set is never held in
    memory decoded). Returns (outputs of the decoded images, their positions, skipped paths).
    """
    skipped: list[str] = []

    def on_error(i: int, message: str) -> None:
        log.warning("%s: skipping image (%s)", what, message)
        skipped.append(paths[i])

    chunks, positions = [], []
    batches = iter_batches(paths, cx.EvalTransform(size), batch_size, on_error=on_error)
    with tqdm(total=len(paths), desc=what, unit="img") as bar:
        for b in batches:
            if len(b.indices):
                with jt.no_grad():
                    chunks.append(_to_numpy(fn(jt.array(b.images))))
                positions.append(b.indices)
            bar.update(len(b.indices) + len(b.failed))
    if not chunks:
        return np.zeros((0,), np.float32), np.zeros(0, np.int64), skipped
    return np.concatenate(chunks), np.concatenate(positions), skipped


# --------------------------------------------------------------------------------------------
# Training


class _Plan(NamedTuple):
    """What differs between the modes; the epoch loop (_run_epochs) is shared."""

    optimizer: Any  # a Jittor optimizer; param_groups[i]["lr"] is set every epoch
    base_lrs: list[float]  # per param group
    step: Callable[[np.ndarray, int], float]  # (image indices, epoch) -> summed batch loss
    evaluate: Callable[[], np.ndarray]  # validation logits [n_val, K]
    snapshot: Callable[[], dict[str, np.ndarray]]  # tensors to save, as numpy copies
    tuned: dict[str, Any]  # backbone parameters being tuned (name -> jt.Var)


def _head_plan(head, feats, y_train, val_feats, seed, lr, weight_decay) -> _Plan:
    """Head-only training on cached view features ``feats`` [n, views, D]."""
    n, views = feats.shape[:2]
    # Epoch e shows image i through view order[i][e % views]: every view in turn.
    view_order = np.stack(
        [np.random.default_rng([seed, 2, i]).permutation(views) for i in range(n)]
    )
    optimizer = nn.AdamW([head.weight, head.bias], lr, weight_decay=weight_decay)

    def step(idx: np.ndarray, epoch: int) -> float:
        x = jt.array(feats[idx, view_order[idx, epoch % views]])
        loss = nn.cross_entropy_loss(head(x), jt.array(y_train[idx]))
        optimizer.step(loss)
        return float(loss.item()) * len(idx)

    def evaluate() -> np.ndarray:
        with jt.no_grad():
            return _to_numpy(head(jt.array(val_feats)))

    return _Plan(optimizer, [lr], step, evaluate, lambda: _snapshot(head, {}), {})


def _last_stage_plan(
    model, head, resized, y_train, val_maps, train_tf, seed, lr, backbone_lr, weight_decay,
    batch_size,
) -> _Plan:  # fmt: skip
    """Fine-tuning of the last stage + final norm + head, with fresh augmentation every step.

    ``val_maps``: the validation images' trunk outputs (the last stage's input), computed once.
    """
    last = len(model.stages) - 1
    tuned = {
        name: p
        for name, p in model.named_parameters()
        if name.startswith((f"stages.{last}.", "norm."))
    }
    for p in tuned.values():
        p.start_grad()  # model.eval() stopped them
    optimizer = nn.AdamW(
        [{"params": list(tuned.values())}, {"params": [head.weight, head.bias]}],
        lr,
        weight_decay=weight_decay,
    )

    def step(idx: np.ndarray, epoch: int) -> float:
        rngs = [np.random.default_rng([seed, 4, epoch, i]) for i in idx]
        batch = np.stack([train_tf.augment(resized[i], r) for i, r in zip(idx, rngs)])
        maps = model.forward_trunk(jt.array(batch)).stop_grad()  # frozen: no graph kept
        loss = nn.cross_entropy_loss(head(model.forward_last_stage(maps)), jt.array(y_train[idx]))
        optimizer.step(loss)
        return float(loss.item()) * len(idx)

    def evaluate() -> np.ndarray:
        out = []
        with jt.no_grad():
            for i in range(0, len(val_maps), batch_size):
                maps = jt.array(val_maps[i : i + batch_size])
                out.append(_to_numpy(head(model.forward_last_stage(maps))))
        return np.concatenate(out)

    return _Plan(
        optimizer, [backbone_lr, lr], step, evaluate, lambda: _snapshot(head, tuned), tuned
    )


def _tuned_hash(tensors: dict[str, np.ndarray]) -> str:
    """sha256 of the tuned backbone tensors: part of the feature-cache key in last_stage mode."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        if name.startswith("backbone."):
            h.update(name.encode() + tensors[name].tobytes())
    return h.hexdigest()


def _snapshot(head, tuned: dict[str, Any]) -> dict[str, np.ndarray]:
    snap = {"head.weight": _to_numpy(head.weight), "head.bias": _to_numpy(head.bias)}
    snap.update({f"backbone.{name}": _to_numpy(p) for name, p in tuned.items()})
    return snap


def _run_epochs(
    epochs: int, n_train: int, batch_size: int, plan: _Plan, val_labels: np.ndarray, seed: int
) -> tuple[list[dict[str, Any]], int, dict[str, np.ndarray]]:
    """The shared loop: cosine lr per epoch, shuffled batches, validation, best-epoch snapshot.

    Returns (history, best epoch (1-based), snapshot of the best epoch).
    """
    optimizer, base_lrs = plan.optimizer, plan.base_lrs
    order_rng = np.random.default_rng([seed, 3])
    history: list[dict[str, Any]] = []
    best_key: tuple[float, float] | None = None
    best_epoch, best = epochs, {}
    bar = tqdm(range(epochs), desc="expert epochs", unit="epoch")
    for epoch in bar:
        factor = _cosine_factor(epoch, epochs)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        order = order_rng.permutation(n_train)
        total = 0.0
        for start in range(0, n_train, batch_size):
            total += plan.step(order[start : start + batch_size], epoch)
        record = {"epoch": epoch + 1, "lr": base_lrs[-1] * factor, "train_loss": total / n_train}
        if len(val_labels):
            logits = plan.evaluate()
            record["val_acc"] = float((logits.argmax(1) == val_labels).mean())
            record["val_loss"] = _cross_entropy(logits, val_labels)
            key = (record["val_acc"], -record["val_loss"])
            if best_key is None or key > best_key:  # strict: ties keep the earlier epoch
                best_key, best_epoch, best = key, epoch + 1, plan.snapshot()
        history.append(record)
        bar.set_postfix(
            loss=f"{record['train_loss']:.3f}", val_acc=f"{record.get('val_acc', float('nan')):.3f}"
        )
        log.info(
            "epoch %d/%d lr %.2e train loss %.4f val acc %s",
            epoch + 1,
            epochs,
            record["lr"],
            record["train_loss"],
            f"{record['val_acc']:.4f}" if "val_acc" in record else "-",
        )
    if not len(val_labels):
        log.warning("no validation images: keeping the last epoch (no checkpoint selection)")
        best = plan.snapshot()
    return history, best_epoch, best


def train_expert(
    backbone_path: str | os.PathLike,
    train_items: Sequence[Item],
    val_items: Sequence[Item],
    class_ids: Sequence[int] = DOG_CLASS_IDS,
    out_dir: str | os.PathLike = "out/expert",
    *,
    mode: str = "head",
    epochs: int = 31,
    lr: float = 1e-3,
    backbone_lr: float = 1e-4,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    views: int = 10,
    seed: int = 0,
    train_resize: int = 320,
    train_crop: int = 280,
    eval_size: int = 384,
    feature_batch: int = 16,
    backbone: cx.ConvNeXtV2 | None = None,
) -> DogExpert:
    """Train the expert on ``(image_path, class_id)`` items and save it to ``out_dir``.

    class_ids: the expert's classes, in output order (default: the 130 dog breeds); every
    item's label must be one of them. mode: "head" (frozen backbone, cached views) or
    "last_stage" (tunes the last stage + final norm + head on the fly; ``backbone_lr`` for the
    backbone part, ``lr`` for the head). views: augmented views per training image cached in
    head mode. feature_batch: images per backbone call. backbone: the model already loaded from
    ``backbone_path`` (in last_stage mode it is tuned in place and ends with the chosen epoch).
    Undecodable images are skipped with a warning; a class left without training images is an
    error. Returns the trained expert.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if epochs < 1 or batch_size < 1 or views < 1 or feature_batch < 1:
        raise ValueError("epochs, batch_size, views and feature_batch must be >= 1")
    class_ids = [int(c) for c in class_ids]
    if len(set(class_ids)) != len(class_ids) or not class_ids:
        raise ValueError("class_ids must be non-empty and without duplicates")
    index = {c: k for k, c in enumerate(class_ids)}
    train_items = _check_items(train_items, index, "train_items")
    val_items = _check_items(val_items, index, "val_items")
    backbone_path = Path(backbone_path)
    t0 = time.time()
    model = backbone if backbone is not None else cx.load(backbone_path)
    model.eval()  # also stops every parameter's gradient (Jittor); tuned ones restart below

    train_tf = cx.TrainTransform(train_resize, train_crop)
    resized, train_cids, skipped_train = _decode_train(train_items, train_tf)
    empty = sorted(set(class_ids) - set(train_cids))
    if empty:
        raise ValueError(
            f"no decodable training image for class ids {empty} "
            f"({len(skipped_train)} training images skipped)"
        )
    y_train = np.array([index[c] for c in train_cids], np.int64)
    n_train, k = len(y_train), len(class_ids)
    val_paths = [p for p, _ in val_items]
    val_fn = model.forward_features if mode == "head" else model.forward_trunk
    val_out, val_pos, skipped_val = _eval_outputs(
        val_fn, val_paths, eval_size, feature_batch, "val features"
    )
    y_val = np.array([index[val_items[i][1]] for i in val_pos], np.int64)
    log.info(
        "expert (%s): %d classes, %d train / %d val images (%d / %d skipped)",
        mode,
        k,
        n_train,
        len(y_val),
        len(skipped_train),
        len(skipped_val),
    )
    head = _trunc_normal_head(model.num_features, k, seed)
    if mode == "head":
        feats = _view_features(model, resized, train_tf, views, seed, feature_batch)
        t_feat = time.time() - t0
        plan = _head_plan(head, feats, y_train, val_out, seed, lr, weight_decay)
    else:
        t_feat = time.time() - t0
        plan = _last_stage_plan(
            model, head, resized, y_train, val_out, train_tf, seed,
            lr, backbone_lr, weight_decay, feature_batch,
        )  # fmt: skip
    try:
        history, best_epoch, best = _run_epochs(epochs, n_train, batch_size, plan, y_val, seed)
    finally:
        for p in plan.tuned.values():
            p.stop_grad()
    t_train = time.time() - t0 - t_feat

    info = {
        "version": ARTEFACT_VERSION,
        "mode": mode,
        "class_ids": class_ids,
        "backbone": {
            "path": str(backbone_path.resolve()),
            "fingerprint": fingerprint(backbone_path),
            "config": model.config(),
        },
        "settings": {
            "epochs": epochs,
            "lr": lr,
            "backbone_lr": backbone_lr if mode == "last_stage" else None,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "views": views if mode == "head" else None,
            "seed": seed,
            "schedule": "cosine per epoch, eta_min 0",
            "optimizer": "AdamW",
        },
        "transforms": {
            "train": train_tf.describe(),
            "eval": cx.EvalTransform(eval_size).describe(),
            "eval_size": eval_size,
        },
        "history": history,
        "best_epoch": best_epoch,
        "selection": "max val_acc, ties: min val_loss, then earliest"
        if len(y_val)
        else "last epoch (no validation images)",
        "n_train": n_train,
        "n_val": int(len(y_val)),
        "skipped": {"train": skipped_train, "val": skipped_val},
        "tuned_sha256": _tuned_hash(best) if mode == "last_stage" else None,
        "seconds": {"features": round(t_feat, 2), "training": round(t_train, 2)},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights.save(
        out_dir / WEIGHTS_FILE,
        best,
        family=EXPERT_FAMILY,
        config={"mode": mode, "num_classes": k, "num_features": model.num_features},
        source={"backbone": info["backbone"]["path"]},
    )
    write_json_atomic(out_dir / INFO_FILE, info)  # last: a complete JSON means a complete expert
    log.info(
        "expert saved to %s: best epoch %d (val acc %s); features %.1fs, training %.1fs",
        out_dir,
        best_epoch,
        f"{history[best_epoch - 1].get('val_acc', float('nan')):.4f}",
        t_feat,
        t_train,
    )
    if mode == "last_stage":
        model.load_numpy(
            {k_[len("backbone.") :]: v for k_, v in best.items() if k_.startswith("backbone.")},
            source="best epoch",
            strict=False,
        )
    return DogExpert(
        model, best["head.weight"], best["head.bias"], class_ids, eval_size=eval_size, info=info
    )
