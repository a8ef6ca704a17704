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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Routing:
    """How well images are sent to a stage that owns a set of classes.

    precision: of the images routed to the stage, the share whose true class the stage owns;
    recall: of the images whose true class the stage owns, the share routed to it.
    """

    routed: int
    owned: int
    precision: float
    recall: float

    def as_dict(self) -> dict:
        return asdict(self)


def accuracy(top5: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 and top-5 accuracy (NaN on an empty set)."""
    labels = np.asarray(labels)
    n = int(labels.size)
    if n == 0:
        return Accuracy(0, float("nan"), float("nan"))
    top5 = np.asarray(top5)
    hit1 = top5[:, 0] == labels
    hit5 = (top5 == labels[:, None]).any(1)
    return Accuracy(n, float(hit1.mean()), float(hit5.mean()))


def accuracy_by(top5: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Accuracy]:
    """Accuracy per group value (e.g. the domain of each image's true class)."""
    groups = np.asarray(groups)
    return {str(g): accuracy(top5[groups == g], labels[groups == g]) for g in np.unique(groups)}


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
    per_stage = {
        name: accuracy(top5[stage == i], labels[stage == i]).as_dict()
        for i, name in enumerate(STAGE_NAMES)
    }
    by_domain = accuracy_by(top5, labels, domains_of_labels)
    return {
        "overall": accuracy(top5, labels).as_dict(),
        "per_domain": {k: v.as_dict() for k, v in by_domain.items()},
        "per_stage": per_stage,
        "routing": {
            "unseen": routing(stage, labels, UNSEEN, unseen_ids).as_dict(),
            "expert": routing(stage, labels, EXPERT, expert_ids).as_dict(),
        },
    }
