"""Scores of the learned stages from features: stage 1 (InMaP per backbone over all classes,
transductive: it sees every image being classified at once, fused across backbones) and stage 2
(LP++ per backbone over the seen classes, fused); and which stage-1 variant runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cascade import fuse
from pipeline.heads import HeadError, read_json_artefact
from pipeline.settings import Settings

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
STAGE1_FILE = "stage1.json"  # train.py's choice, in the heads folder


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


def stage1_choice(settings: Settings, heads_dir: Path) -> tuple[str, str, dict[str, float]]:
    """(candidate name, variant, params) of stage 1 from the settings, or train.py's choice."""
    if settings.inmap_variant == "auto":
        path = Path(heads_dir) / STAGE1_FILE
        name = read_json_artefact(path).get("chosen") if path.is_file() else DEFAULT_STAGE1
        if name not in STAGE1_CANDIDATES:
            raise HeadError(
                f"{path}: corrupted ({name!r} is not a stage-1 candidate); re-run bash train.sh"
            )
        variant, params = STAGE1_CANDIDATES[name]
    else:
        name, variant, params = settings.inmap_variant, settings.inmap_variant, {}
    params = dict(params)
    if settings.inmap_gamma is not None:
        params["gamma"] = float(settings.inmap_gamma)
    return name, variant, params
