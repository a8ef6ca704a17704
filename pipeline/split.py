"""The 4-shot training list and the labelled validation list, chosen reproducibly.

Procedure (docs/DATA.md): for every class, its images are sorted by path (so the order of
train.txt does not matter) and shuffled with ``numpy.random.default_rng([seed, class_id])``
(PCG64: the same on every machine and numpy version that keeps the stream stable, and each
class independent of the others). The first ``shots`` usable images are the training shots;
the next ``val_per_class`` are the validation images. Validation images are never shots.

(train.py's board-shaped validation holds classes out itself, per fold: pipeline.validation.)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from models.fileio import write_text_atomic
from pipeline.lists import (
    ClassList,
    LabeledList,
    ListError,
    PathLike,
    write_labeled_list,
)

log = logging.getLogger(__name__)


# Check a batch of paths; True where the image is usable (exists and decodes).
Checker = Callable[[Sequence[str]], Sequence[bool]]


class SplitError(ValueError):
    """The training pool cannot give the requested split."""


@dataclass(frozen=True)
class Split:
    """The chosen lists."""

    train: LabeledList
    val: LabeledList


def _class_order(pool: LabeledList, seed: int, num_classes: int) -> dict[int, list[int]]:
    """Per class, pool indices in their seeded random order (independent of the line order)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(pool.labels.tolist()):
        by_class.setdefault(y, []).append(i)
    order = {}
    for c, idx in by_class.items():
        idx.sort(key=lambda i: pool.paths[i])
        perm = np.random.default_rng([seed, c]).permutation(len(idx))
        order[c] = [idx[j] for j in perm]
    return order


def select_shots(
    pool: LabeledList,
    classes: ClassList,
    shots: int = 4,
    seed: int = 0,
    *,
    val_per_class: int = 20,
    allow_fewer: bool = False,
    check: Optional[Checker] = None,
) -> Split:
    """Choose ``shots`` training images per class of ``pool`` and up to ``val_per_class``
    validation images from the rest.

    Classes without any image in the pool are unseen and get neither. A class with fewer than
    ``shots`` usable images is an error, unless ``allow_fewer``: then all its usable images are
    shots (with a warning) and it has no validation images. ``check`` (optional) tests candidate
    shots (e.g. that they decode); a failing image is skipped for the next one in the order.
    """
    if shots < 1:
        raise SplitError(f"shots must be >= 1, got {shots}")
    for i, y in enumerate(pool.labels.tolist()):
        classes.check_label(y, f"{pool.source}: image {pool.paths[i]}")
    order = _class_order(pool, seed, len(classes))
    chosen: dict[int, list[int]] = {c: [] for c in order}
    cursor = dict.fromkeys(order, 0)
    rejected: list[str] = []
    # Rounds: propose the next candidates of every class still short of shots and check them
    # together (so a parallel checker sees a whole batch); a rejected image is never proposed
    # again, so this ends.
    while True:
        proposals: list[tuple[int, int]] = []
        for c, idx in order.items():
            need = shots - len(chosen[c])
            take = idx[cursor[c] : cursor[c] + max(0, need)]
            cursor[c] += len(take)
            proposals.extend((c, i) for i in take)
        if not proposals:
            break
        ok = (
            [True] * len(proposals)
            if check is None
            else list(check([pool.paths[i] for _, i in proposals]))
        )
        for (c, i), good in zip(proposals, ok):
            if good:
                chosen[c].append(i)
            else:
                rejected.append(pool.paths[i])
    if rejected:
        log.warning(
            "%d candidate shot(s) were missing or undecodable and were replaced: %s%s",
            len(rejected),
            ", ".join(rejected[:5]),
            " ..." if len(rejected) > 5 else "",
        )
    short = {c: len(v) for c, v in chosen.items() if len(v) < shots}
    if short:
        desc = ", ".join(f"{classes.names[c]} ({k})" for c, k in sorted(short.items())[:10])
        if not allow_fewer:
            raise SplitError(
                f"{pool.source}: {len(short)} class(es) have fewer than {shots} usable images: "
                f"{desc}; add images, or pass --allow-fewer to train them on what they have"
            )
        log.warning("%d class(es) have fewer than %d usable images: %s", len(short), shots, desc)

    train_idx: list[int] = []
    val_idx: list[int] = []
    rejected_set = set(rejected)
    for c in sorted(order):
        train_idx.extend(sorted(chosen[c], key=lambda i: pool.paths[i]))
        if c in short:
            continue  # every usable image went to training
        rest = [i for i in order[c][cursor[c] :] if pool.paths[i] not in rejected_set]
        val_idx.extend(sorted(rest[:val_per_class], key=lambda i: pool.paths[i]))

    return Split(pool.subset(train_idx, "train_4shot"), pool.subset(val_idx, "val"))


def validate_shot_list(
    shot_list: LabeledList, pool: LabeledList, classes: ClassList, shots: int
) -> None:
    """A user's own shot list: labels must be class ids, an image that is in the pool must have
    the pool's label, and no class may have more than ``shots`` images (the challenge rule)."""
    pool_label = dict(zip(pool.paths, pool.labels.tolist()))
    for p, y in zip(shot_list.paths, shot_list.labels.tolist()):
        classes.check_label(y, f"{shot_list.source}: {p}")
        if p in pool_label and pool_label[p] != y:
            raise ListError(
                f"{shot_list.source}: {p} is labelled {y} but {pool_label[p]} in {pool.source}"
            )
    counts = shot_list.counts(len(classes))
    over = np.flatnonzero(counts > shots)
    if len(over):
        desc = ", ".join(f"{classes.names[c]} ({counts[c]})" for c in over[:10])
        raise ListError(f"{shot_list.source}: more than {shots} images for {desc}")
    pool_classes = np.flatnonzero(pool.counts(len(classes)) > 0)
    under = [c for c in pool_classes if counts[c] < shots]
    if under:
        log.warning(
            "%s: %d seen class(es) have fewer than %d shots: %s",
            shot_list.source,
            len(under),
            shots,
            ", ".join(classes.names[c] for c in under[:10]),
        )


def split_from_shot_list(
    shot_list: LabeledList,
    pool: LabeledList,
    classes: ClassList,
    shots: int = 4,
    seed: int = 0,
    *,
    val_per_class: int = 20,
) -> Split:
    """Use a given shot list; validation images are drawn (seeded, as in ``select_shots``) from
    the pool images that are not shots."""
    validate_shot_list(shot_list, pool, classes, shots)
    taken = set(shot_list.paths)
    order = _class_order(pool, seed, len(classes))
    val_idx: list[int] = []
    for c in sorted(order):
        rest = [i for i in order[c] if pool.paths[i] not in taken]
        val_idx.extend(sorted(rest[:val_per_class], key=lambda i: pool.paths[i]))
    train = LabeledList(shot_list.paths, shot_list.labels, "train_4shot")
    return Split(train, pool.subset(val_idx, "val"))


def write_split(
    split: Split, lists_dir: PathLike, classes: ClassList, info: dict
) -> dict[str, Path]:
    """Write the lists atomically into ``lists_dir``: train_4shot.txt, val.txt and split.json.
    Returns the paths by name."""
    d = Path(lists_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = {"train": d / "train_4shot.txt", "val": d / "val.txt", "info": d / "split.json"}
    train_set, val_set = set(split.train.paths), set(split.val.paths)
    overlap = train_set & val_set
    if overlap:  # a bug upstream, never write such lists
        raise SplitError(f"{len(overlap)} image(s) in both training and validation lists")
    write_labeled_list(out["train"], split.train)
    write_labeled_list(out["val"], split.val)
    counts = split.train.counts(len(classes))
    summary = dict(info)
    summary.update(
        {
            "train_images": len(split.train),
            "val_images": len(split.val),
            "seen_classes": int((counts > 0).sum()),
            "unseen_classes": int((counts == 0).sum()),
        }
    )
    write_text_atomic(out["info"], json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return out


def make_checker(root: PathLike, workers: int = 4) -> Checker:
    """A checker that decodes every candidate (relative to ``root``) on ``workers`` threads."""
    import concurrent.futures as cf

    from pipeline.images import ImageError, load_rgb

    def ok(p: str) -> bool:
        try:
            load_rgb(os.path.join(root, p))
            return True
        except ImageError as e:
            log.warning("%s", e)
            return False

    def check(paths: Sequence[str]) -> list[bool]:
        if workers <= 0:
            return [ok(p) for p in paths]
        with cf.ThreadPoolExecutor(workers) as ex:
            return list(ex.map(ok, paths))

    return check
