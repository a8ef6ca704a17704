"""Choices of the cascade made on labelled validation features: the stage-1 variant, compared on
the validation split with pseudo-unseen classes (held out of training to play the unseen ones).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.cascade import UNSEEN, run_cascade
from pipeline.metrics import accuracy, routing
from pipeline.scores import DEFAULT_STAGE1, STAGE1_CANDIDATES, stage1_scores, stage2_scores
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def compare_stage1(
    settings: Settings,
    num_classes: int,
    T: dict[str, np.ndarray],
    X: dict[str, np.ndarray],
    y: np.ndarray,
    probes: dict[str, Any],
    seen: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Cascade accuracy (stages 1-2) and unseen routing of every stage-1 candidate on labelled
    features X, with the probes trained on ``seen`` (some classes held out as pseudo-unseen)."""
    unseen = np.setdiff1d(np.arange(num_classes), seen)
    seen_scores = stage2_scores(X, probes, settings.lpp_fusion)
    results = {}
    for name, (variant, params) in STAGE1_CANDIDATES.items():
        all_scores = stage1_scores(X, T, variant, params, settings.inmap_fusion)
        r = run_cascade(all_scores, unseen, seen_scores, seen)
        acc, rt = accuracy(r.top5, y), routing(r.stage, y, UNSEEN, unseen)
        results[name] = {
            "top1": acc.top1,
            "top5": acc.top5,
            "unseen_precision": rt.precision,
            "unseen_recall": rt.recall,
            "stage1_top1": float((all_scores.argmax(1) == y).mean()),
        }
        log.info(
            "stage-1 candidate %-18s cascade top-1 %.4f, unseen recall %.3f precision %.3f",
            name,
            acc.top1,
            rt.recall,
            rt.precision,
        )
    return results


def select_stage1(results: dict[str, dict[str, float]]) -> str:
    """The candidate with the best cascade top-1 (ties: the default, then the first)."""
    chosen = max(results, key=lambda k: (results[k]["top1"], k == DEFAULT_STAGE1))
    log.info("stage 1: chose %s", chosen)
    return chosen
