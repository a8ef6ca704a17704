"""Scores of each cascade stage from features, and the choice of the stage-1 variant.

Stage 1 is InMaP per backbone over all classes (transductive: it sees every image being
classified at once), fused across backbones; stage 2 is LP++ per backbone over the seen classes,
fused; stage 3 (the expert) lives in pipeline.expert.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.cascade import UNSEEN, fuse, run_cascade
from pipeline.heads import classes_fingerprint, head_path, load_head
from pipeline.metrics import accuracy, routing

if TYPE_CHECKING:
    from pipeline.training import Workspace

log = logging.getLogger(__name__)

# Stage-1 candidates compared on the validation split with pseudo-unseen classes. The official
# algorithm's uniform class marginal (gamma 0) fights class imbalance between seen and unseen
# images; gamma 0.5 / 1 follow the pseudo-label marginal instead (ALGORITHMS.md, section 2).
STAGE1_CANDIDATES: dict[str, tuple[str, dict[str, float]]] = {
    "official-gamma0": ("official", {"gamma": 0.0}),
    "official-gamma0.5": ("official", {"gamma": 0.5}),
    "official-gamma1": ("official", {"gamma": 1.0}),
    "challenge": ("challenge", {}),
}
DEFAULT_STAGE1 = "challenge"


def stage1_scores(
    X: dict[str, np.ndarray],
    T: dict[str, np.ndarray],
    variant: str,
    params: dict[str, float],
    fusion: dict[str, float],
) -> np.ndarray:
    """Fused InMaP logits [n, C] over all classes: sum_b fusion[b] * X_b @ W_b."""
    from fewshot.inmap import run_inmap

    logits = []
    for name in fusion:
        W = run_inmap(X[name], T[name], variant=variant, **params)
        logits.append(X[name] @ W)
    return fuse(logits, [fusion[n] for n in fusion])


def stage2_scores(
    X: dict[str, np.ndarray], probes: dict[str, Any], fusion: dict[str, float]
) -> np.ndarray:
    """Fused LP++ logits [n, S] over the seen classes."""
    return fuse([probes[n].logits(X[n]) for n in fusion], [fusion[n] for n in fusion])


def load_probes(ws: Workspace, tag: str = "") -> tuple[dict[str, Any], np.ndarray]:
    """The LP++ probes of every backbone (checked against the class list and the weights) and
    the seen class ids they cover."""
    from fewshot.lpp import LPPlusPlus

    probes, seen = {}, None
    for name, bb in ws.backbones.items():
        arrays, info = load_head(
            head_path(ws.heads_dir, "lpp", name, tag),
            {
                "classes": classes_fingerprint(ws.classes.names),
                "weights": bb.key_parts()["weights"],
            },
        )
        probes[name] = LPPlusPlus.from_state_dict(arrays)
        ids = np.asarray(info["seen_ids"], np.int64)
        if seen is not None and not np.array_equal(seen, ids):
            raise ValueError("LP++ probes of the backbones cover different classes; re-run train")
        seen = ids
    return probes, seen


def stage1_choice(ws: Workspace) -> tuple[str, str, dict[str, float]]:
    """(candidate name, variant, params) of stage 1 from the settings, or train.py's choice."""
    s = ws.settings
    if s.inmap_variant == "auto":
        path = Path(ws.heads_dir) / "stage1.json"
        name = json.loads(path.read_text())["chosen"] if path.is_file() else DEFAULT_STAGE1
        variant, params = STAGE1_CANDIDATES[name]
    else:
        name, variant, params = s.inmap_variant, s.inmap_variant, {}
    params = dict(params)
    if s.inmap_gamma is not None:
        params["gamma"] = float(s.inmap_gamma)
    return name, variant, params


def compare_stage1(
    ws: Workspace,
    T: dict[str, np.ndarray],
    X: dict[str, np.ndarray],
    y: np.ndarray,
    probes: dict[str, Any],
    seen: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Cascade accuracy (stages 1-2) and unseen routing of every stage-1 candidate on labelled
    features X (with some classes missing from ``seen``, e.g. pseudo-unseen ones)."""
    s = ws.settings
    unseen = np.setdiff1d(np.arange(ws.classes.num_classes), seen)
    seen_scores = stage2_scores(X, probes, s.lpp_fusion)
    results = {}
    for name, (variant, params) in STAGE1_CANDIDATES.items():
        all_scores = stage1_scores(X, T, variant, params, s.inmap_fusion)
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


def select_stage1(
    ws: Workspace,
    T: dict[str, np.ndarray],
    X: dict[str, np.ndarray],
    y: np.ndarray,
    seen: np.ndarray,
    tag: str,
) -> dict[str, Any]:
    """Pick the stage-1 candidate with the best cascade top-1 on validation features, using the
    probes trained without the pseudo-unseen classes."""
    probes, seen_saved = load_probes(ws, tag)
    if not np.array_equal(seen_saved, seen):
        raise ValueError("pseudo-unseen probes do not match the split; re-run train")
    results = compare_stage1(ws, T, X, y, probes, seen)
    chosen = max(results, key=lambda k: (results[k]["top1"], k == DEFAULT_STAGE1))
    log.info("stage 1: chose %s", chosen)
    return {"chosen": chosen, "candidates": results}
