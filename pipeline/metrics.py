"""Accuracy and routing quality of the cascade on a labelled split."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.cascade import EXPERT, STAGE_NAMES, UNSEEN


@dataclass(frozen=True)
class Accuracy:
    n: int
    top1: float
    top5: float


@dataclass(frozen=True)
class Routing:
    """precision: routed images whose true class the stage owns; recall: images of owned classes
    that were routed to the stage."""

    routed: int
    owned: int
    precision: float
    recall: float


def accuracy(top5: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 and top-5 accuracy (NaN on an empty set)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return Accuracy(0, float("nan"), float("nan"))
    top5 = np.asarray(top5)
    hit5 = (top5 == labels[:, None]).any(1)
    return Accuracy(int(labels.size), float((top5[:, 0] == labels).mean()), float(hit5.mean()))


def routing(stage: np.ndarray, labels: np.ndarray, stage_id: int, owned_ids) -> Routing:
    """Routing quality of one stage over the classes it owns."""
    routed = np.asarray(stage) == stage_id
    owned = np.isin(labels, np.asarray(owned_ids))
    both = int((routed & owned).sum())
    return Routing(
        routed=int(routed.sum()),
        owned=int(owned.sum()),
        precision=both / routed.sum() if routed.any() else float("nan"),
        recall=both / owned.sum() if owned.any() else float("nan"),
    )


def cascade_metrics(
    top5: np.ndarray,
    stage: np.ndarray,
    labels: np.ndarray,
    domains_of_labels: np.ndarray,
    unseen_ids,
    expert_ids,
) -> dict:
    """All metrics of a cascade run as a JSON-ready dict."""
    top5, stage, labels = np.asarray(top5), np.asarray(stage), np.asarray(labels)
    domains = np.asarray(domains_of_labels)

    def acc(rows: np.ndarray) -> dict:
        return asdict(accuracy(top5[rows], labels[rows]))

    return {
        "overall": asdict(accuracy(top5, labels)),
        "per_domain": {str(d): acc(domains == d) for d in np.unique(domains)},
        "per_stage": {name: acc(stage == i) for i, name in enumerate(STAGE_NAMES)},
        "routing": {
            "unseen": asdict(routing(stage, labels, UNSEEN, unseen_ids)),
            "expert": asdict(routing(stage, labels, EXPERT, expert_ids)),
        },
    }
