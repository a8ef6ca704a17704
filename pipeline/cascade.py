"""The three-stage cascade over score arrays (docs/METHODS.md, "The cascade and its choices"):
stage 1 (InMaP over all classes) answers images whose top-1 class is unseen, stage 2 (the
seen-class head) the rest, stage 3 (the expert) re-ranks its classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

STAGE_NAMES = ("unseen", "seen", "expert")
UNSEEN, SEEN, EXPERT = 0, 1, 2


@dataclass(frozen=True)
class CascadeResult:
    """top5 [n,5] global class ids best first; stage [n] in {UNSEEN, SEEN, EXPERT}."""

    top5: np.ndarray
    stage: np.ndarray

    @property
    def top1(self) -> np.ndarray:
        return self.top5[:, 0]


def fuse(logits: list[np.ndarray], weights: list[float] | tuple[float, ...]) -> np.ndarray:
    """Weighted sum of per-backbone logits of equal shape (weights: the settings' *_fusion)."""
    if len(logits) != len(weights) or not logits:
        raise ValueError(f"{len(logits)} logit arrays for {len(weights)} fusion weights")
    shapes = {np.shape(x) for x in logits}
    if len(shapes) != 1:
        raise ValueError(f"cannot fuse logits of different shapes {sorted(shapes)}")
    out = np.zeros(next(iter(shapes)), np.float64)
    for x, w in zip(logits, weights):
        out += float(w) * np.asarray(x, np.float64)
    return out.astype(np.float32)


def topk(scores: np.ndarray, k: int = 5, ids: np.ndarray | None = None) -> np.ndarray:
    """Indices (or ``ids[index]``) of the k largest scores per row, best first; ties broken by
    the lower index (a stable sort of the negated scores) so results are deterministic."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order if ids is None else np.asarray(ids)[order]


def check_finite(name: str, scores: np.ndarray) -> None:
    """Raise naming the stage when scores hold NaN or infinity (a broken model or feature)."""
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise FloatingPointError(
            f"stage {name!r}: {bad.sum()} non-finite scores in {rows.size} images "
            f"(first rows {rows[:5].tolist()}); check the features and the trained heads"
        )


def run_cascade(
    all_scores: np.ndarray,
    unseen_ids: np.ndarray,
    seen_scores: np.ndarray,
    seen_ids: np.ndarray,
    expert_ids: np.ndarray | None = None,
    expert_scores: Callable[[np.ndarray], np.ndarray] | None = None,
    k: int = 5,
) -> CascadeResult:
    """Route every image once: top-k class ids and the answering stage. all_scores [n, C]: stage
    1 over all classes; unseen_ids: the classes stage 1 answers (none: it answers nothing);
    seen_scores [n, S]: stage 2, column j = class seen_ids[j]; ``expert_scores(rows)`` [len(rows),
    K] over expert_ids (seen classes) is asked only for the rows routed to it (images to encode)."""
    all_scores = np.asarray(all_scores)
    seen_scores = np.asarray(seen_scores)
    n = all_scores.shape[0]
    seen_ids = np.asarray(seen_ids, np.int64)
    unseen_ids = np.asarray(unseen_ids, np.int64)
    if seen_scores.shape != (n, seen_ids.size):
        raise ValueError(f"seen scores {seen_scores.shape} do not match {n} x {seen_ids.size}")
    if np.intersect1d(seen_ids, unseen_ids).size:
        raise ValueError("a class cannot be both seen and unseen")
    check_finite("unseen (stage 1)", all_scores)
    check_finite("seen (stage 2)", seen_scores)

    stage = np.full(n, SEEN, np.int8)
    top5 = topk(seen_scores, k, seen_ids)
    if unseen_ids.size:
        is_unseen = np.isin(all_scores.argmax(1), unseen_ids)
        stage[is_unseen] = UNSEEN
        top5[is_unseen] = topk(all_scores[is_unseen], k)

    if expert_scores is not None:
        expert_ids = np.asarray(expert_ids, np.int64)
        if not np.isin(expert_ids, seen_ids).all():
            raise ValueError("the expert's classes must be seen classes")
        rows = np.flatnonzero((stage == SEEN) & np.isin(top5[:, 0], expert_ids))
        if rows.size == 0:
            return CascadeResult(top5=top5, stage=stage)
        scores = np.asarray(expert_scores(rows))
        if scores.shape != (rows.size, expert_ids.size):
            raise ValueError(
                f"expert scores {scores.shape} do not match {rows.size} x {expert_ids.size}"
            )
        check_finite("expert (stage 3)", scores)
        stage[rows] = EXPERT
        head = topk(scores, k, expert_ids)
        # Fewer expert classes than k: the expert's ranking first, then the probe's other classes.
        top5[rows] = head if expert_ids.size >= k else _merge_rankings(head, top5[rows], k)
    return CascadeResult(top5=top5, stage=stage)


def _merge_rankings(head: np.ndarray, tail: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((head.shape[0], k), np.int64)
    for i in range(head.shape[0]):  # only the rare case of an expert with < k classes
        merged = list(head[i]) + [c for c in tail[i] if c not in set(head[i])]
        out[i] = merged[:k]
    return out
