"""The 4-shot training list and the labelled validation list, chosen reproducibly (docs/DATA.md,
"The split"; ``default_rng`` is PCG64: the same draws on every machine)."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from models.fileio import write_json_atomic
from pipeline.images import ImageError, load_rgb
from pipeline.lists import ClassList, LabeledList, ListError, PathLike, preview, write_labeled_list

log = logging.getLogger(__name__)

# Checks a batch of paths: True where the image is usable (exists and decodes).
Checker = Callable[[Sequence[str]], Sequence[bool]]


class SplitError(ValueError):
    """The training pool cannot give the requested split."""


class Split(NamedTuple):
    train: LabeledList
    val: LabeledList


def _class_order(pool: LabeledList, seed: int) -> dict[int, list[int]]:
    """Per class, pool indices in their seeded random order (independent of the line order)."""
    order = {}
    for c in np.unique(pool.labels).tolist():
        idx = _by_path(pool, np.flatnonzero(pool.labels == c).tolist())
        order[c] = [idx[j] for j in np.random.default_rng([seed, c]).permutation(len(idx))]
    return order


def _by_path(pool: LabeledList, index: Iterable[int]) -> list[int]:
    return sorted(index, key=lambda i: pool.paths[i])


def _validation(
    pool: LabeledList, order: dict[int, list[int]], classes: Iterable[int], taken: set, k: int
) -> list[int]:
    """Up to ``k`` images per class of ``classes``, the first in the seeded order whose paths are
    not ``taken``."""
    val: list[int] = []
    for c in classes:
        val += _by_path(pool, [i for i in order[c] if pool.paths[i] not in taken][:k])
    return val


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
    validation images from the rest. ``check`` tests candidate shots (a failing one is replaced
    by the next); a class short of usable images is a SplitError unless ``allow_fewer``."""
    for i, y in enumerate(pool.labels.tolist()):
        classes.check_label(y, f"{pool.source}: image {pool.paths[i]}")
    order = _class_order(pool, seed)
    chosen: dict[int, list[int]] = {c: [] for c in order}
    cursor = dict.fromkeys(order, 0)
    rejected: list[str] = []
    # Rounds: the next candidates of every class still short of shots are checked together (a
    # parallel checker sees a whole batch); a rejected image is never proposed again.
    while True:
        proposals: list[tuple[int, int]] = []
        for c, idx in order.items():
            take = idx[cursor[c] : cursor[c] + shots - len(chosen[c])]
            cursor[c] += len(take)
            proposals += [(c, i) for i in take]
        if not proposals:
            break
        paths = [pool.paths[i] for _, i in proposals]
        ok = [True] * len(paths) if check is None else check(paths)
        for (c, i), good in zip(proposals, ok):
            if good:
                chosen[c].append(i)
            else:
                rejected.append(pool.paths[i])
    if rejected:
        what = f"{len(rejected)} candidate shot(s) were missing or undecodable"
        log.warning("%s and were replaced: %s", what, preview(rejected))
    short = {c: len(v) for c, v in chosen.items() if len(v) < shots}
    if short:
        desc = ", ".join(f"{classes.names[c]} ({k})" for c, k in sorted(short.items())[:10])
        if not allow_fewer:
            raise SplitError(
                f"{pool.source}: {len(short)} class(es) have fewer than {shots} usable images: "
                f"{desc}; add images, or pass --allow-fewer to train them on what they have"
            )
        log.warning("%d class(es) have fewer than %d usable images: %s", len(short), shots, desc)
    train = [i for c in sorted(order) for i in _by_path(pool, chosen[c])]
    taken = {pool.paths[i] for i in train} | set(rejected)
    full = [c for c in sorted(order) if c not in short]  # short classes: every image is a shot
    val = _validation(pool, order, full, taken, val_per_class)
    return Split(pool.subset(train, "train_4shot"), pool.subset(val, "val"))


def split_from_shot_list(
    shot_list: LabeledList,
    pool: LabeledList,
    classes: ClassList,
    shots: int = 4,
    seed: int = 0,
    *,
    val_per_class: int = 20,
) -> Split:
    """Use a given shot list (labels agreeing with the pool, at most ``shots`` per class);
    validation images are drawn as in ``select_shots`` from the other pool images."""
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
    under = [c for c in np.flatnonzero(pool.counts(len(classes)) > 0) if counts[c] < shots]
    if under:
        names = ", ".join(classes.names[c] for c in under[:10])
        what = f"{len(under)} seen class(es) have fewer than {shots} shots"
        log.warning("%s: %s: %s", shot_list.source, what, names)
    order = _class_order(pool, seed)
    val = _validation(pool, order, sorted(order), set(shot_list.paths), val_per_class)
    train = LabeledList(shot_list.paths, shot_list.labels, "train_4shot")
    return Split(train, pool.subset(val, "val"))


def write_split(
    split: Split, lists_dir: PathLike, classes: ClassList, info: dict
) -> dict[str, Path]:
    """Write train_4shot.txt, val.txt and split.json (``info`` and the counts) atomically into
    ``lists_dir``; returns their paths by name."""
    d = Path(lists_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = {"train": d / "train_4shot.txt", "val": d / "val.txt", "info": d / "split.json"}
    overlap = set(split.train.paths) & set(split.val.paths)
    if overlap:  # a bug upstream, never write such lists
        raise SplitError(f"{len(overlap)} image(s) in both training and validation lists")
    write_labeled_list(out["train"], split.train)
    write_labeled_list(out["val"], split.val)
    counts = split.train.counts(len(classes))
    summary = {
        **info,
        "train_images": len(split.train),
        "val_images": len(split.val),
        "seen_classes": int((counts > 0).sum()),
        "unseen_classes": int((counts == 0).sum()),
    }
    write_json_atomic(out["info"], summary)
    log.info(
        "%d training images (%d seen classes, %d unseen), %d validation images; wrote %s",
        *(summary[k] for k in ("train_images", "seen_classes", "unseen_classes", "val_images")),
        ", ".join(map(str, out.values())),
    )
    return out


def make_checker(root: PathLike, workers: int = 4) -> Checker:
    """A checker that decodes every candidate (relative to ``root``) on ``workers`` threads."""

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
