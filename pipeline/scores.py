"""The cascade on features for one configuration of its choices (``Choice``): stage-1 scores
(InMaP per backbone, fused), the seen-class heads of stage 2, TransCLIP and the routing with the
expert. Pure functions of arrays and fitted models, for train.py's validation and test.py."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, ContextManager, Optional

import numpy as np

from pipeline.cascade import CascadeResult, fuse, run_cascade
from pipeline.settings import CHOICE_OPTIONS, Settings

log = logging.getLogger(__name__)

# Stage 1's InMaP variants: gamma 0 is the official uniform class marginal, which fights the
# seen/unseen imbalance; 0.5 / 1 follow the pseudo-label marginal (docs/METHODS.md).
STAGE1_CANDIDATES: dict[str, tuple[str, dict[str, float]]] = {
    "challenge": ("challenge", {}),
    "official-gamma0": ("official", {"gamma": 0.0}),
    "official-gamma0.5": ("official", {"gamma": 0.5}),
    "official-gamma1": ("official", {"gamma": 1.0}),
}
CHOICE_FILE = "cascade.json"  # train.py's choices, in the heads folder


@dataclass(frozen=True)
class Choice:
    """One configuration of the cascade's choices (pipeline.settings.CHOICE_OPTIONS)."""

    flip_tta: bool
    inmap_prompts: str
    stage1: str
    lpp_views: str
    seen_head: str
    expert_integration: str
    transclip: str

    @classmethod
    def challenge(cls) -> Choice:
        """The challenge solution's choices (the first option of each)."""
        return cls(**{k: v[0] for k, v in CHOICE_OPTIONS.items()})

    def pinned(self, settings: Settings) -> Choice:
        """This choice with every field that ``settings`` pins set to the pinned value."""
        pins = {k: getattr(settings, k) for k in CHOICE_OPTIONS}
        return replace(self, **{k: v for k, v in pins.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage1_scores(
    X: dict[str, np.ndarray], T: dict[str, np.ndarray], stage1: str, fusion: dict[str, float]
) -> np.ndarray:
    """Fused InMaP logits [n, C'] over the columns of T: sum_b fusion[b] * X_b @ W_b."""
    from fewshot.inmap import run_inmap

    variant, params = STAGE1_CANDIDATES[stage1]
    logits = [X[b] @ run_inmap(X[b], T[b], variant=variant, **params) for b in fusion]
    return fuse(logits, list(fusion.values()))


HEAD_METHODS = {"lpp": ("lpp",), "tip": ("tip",), "lpp+tip": ("lpp", "tip"), "amu": ("amu",)}


def fit_head(
    kind: str,
    settings: Settings,
    X: dict[str, np.ndarray],
    y: np.ndarray,
    T: dict[str, np.ndarray],
    val: tuple[dict[str, np.ndarray], np.ndarray],
    aux: Optional[tuple[np.ndarray, Optional[np.ndarray]]] = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Fit the seen-class head ``kind`` (method -> backbone -> model) on features X by backbone
    with labels y, columns of T (the seen classes); ``val`` = (features, labels) selects epochs
    and hyperparameters; ``aux`` = ConvNeXt features (of the shots, of val) for AMU."""
    from fewshot.amu import AMUTuning
    from fewshot.lpp import LPPConfig, LPPlusPlus
    from fewshot.tip_adapter import TipAdapterF

    # The LPPConfig fields that the settings lpp_<field> set (and lpp_t_max, per backbone).
    fields = ("epochs", "learn_alpha", "schedule", "strict_best", "bias_init")
    lpp = {k: getattr(settings, f"lpp_{k}") for k in fields}
    out: dict[str, dict[str, Any]] = {m: {} for m in HEAD_METHODS[kind]}
    for b in X:
        v = (val[0][b], val[1]) if len(val[1]) else None
        if "lpp" in out:
            config = LPPConfig(**lpp, t_max=settings.lpp_t_max.get(b))
            out["lpp"][b] = LPPlusPlus(config, seed=seed).fit(X[b], y, T[b], v)
        if "tip" in out:
            out["tip"][b] = TipAdapterF().fit(X[b], y, T[b], v)
        if "amu" in out:
            av = None if v is None else (v[0], aux[1], v[1])
            out["amu"][b] = AMUTuning(seed=seed).fit(X[b], aux[0], y, T[b], av)
    return out


def head_scores(
    models: dict[str, dict[str, Any]],
    X: dict[str, np.ndarray],
    fusion: dict[str, float],
    aux: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Fused logits [n, S] of a fitted head over backbones; two methods add their log-softmaxes
    (a product of experts)."""
    from fewshot._tensor import as_numpy, jt, log_softmax

    def one(method: str, b: str) -> np.ndarray:
        m = models[method][b]
        return m.logits(X[b], aux) if method == "amu" else m.logits(X[b])

    per_backbone = []
    for b in fusion:
        parts = [one(method, b) for method in models]
        if len(parts) > 1:
            parts = [as_numpy(log_softmax(jt().array(p), dim=1)) for p in parts]
        per_backbone.append(np.sum(parts, axis=0))
    return fuse(per_backbone, list(fusion.values()))


def cascade_distribution(
    stage1: Optional[np.ndarray], seen_scores: np.ndarray, cols: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """The cascade's soft routing [n, len(cols)]: stage 1's unseen mass split as stage 1 ranks
    the unseen classes, the rest as stage 2 ranks the seen ones (stage 1 as CLIP logits, x100)."""
    out = np.zeros((len(seen_scores), len(cols)), np.float64)
    p2 = np.exp(log_softmax_np(seen_scores.astype(np.float64)))
    p_unseen = 0.0
    if stage1 is not None:
        p1 = np.exp(log_softmax_np(100.0 * stage1.astype(np.float64)))
        is_unseen = ~np.isin(cols, seen)
        p_unseen = p1[:, is_unseen].sum(1, keepdims=True)
        out[:, is_unseen] = p1[:, is_unseen]
    out[:, np.searchsorted(cols, seen)] = (1.0 - p_unseen) * p2
    return out


def apply_transclip(
    mode: str,
    X: dict[str, np.ndarray],
    T: dict[str, np.ndarray],
    support: tuple[dict[str, np.ndarray], np.ndarray],
    val: tuple[dict[str, np.ndarray], np.ndarray],
    stage1: Optional[np.ndarray],
    seen_scores: np.ndarray,
    cols: np.ndarray,
    seen: np.ndarray,
    fusion: dict[str, float],
) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(stage-1, stage-2 scores) with TransCLIP over the class columns ``cols``, mode as in
    docs/METHODS.md. T [d, len(cols)]; support: the shots (features, column indices); val:
    labelled images choosing gamma (from the zero-shot start, as the released solver does)."""
    from fewshot.transclip import OFFICIAL, choose_gamma, transclip

    n = len(seen_scores)
    if n <= OFFICIAL.neighbors:  # its graph links each image to 3 others
        log.warning("TransCLIP needs more than %d images, not %d: left out", OFFICIAL.neighbors, n)
        return stage1, seen_scores
    init = None if mode == "alone" else cascade_distribution(stage1, seen_scores, cols, seen)
    logs = []
    for b in fusion:
        shots = (support[0][b], support[1])
        gamma, _ = choose_gamma(X[b], T[b], shots, (val[0][b], val[1]))
        z = transclip(X[b], T[b], shots, init=init, gamma=gamma)
        logs.append(np.log(np.maximum(z, 1e-30)))
    z_log = fuse(logs, list(fusion.values()))
    seen_log = z_log[:, np.searchsorted(cols, seen)]
    return (stage1 if stage1 is None or mode == "stage2" else z_log), seen_log


def trained_scores(
    choice: Choice,
    settings: Settings,
    X: dict[str, np.ndarray],
    models: dict[str, dict[str, Any]],
    seen: np.ndarray,
    num_classes: int,
    text: Callable[[str], dict[str, np.ndarray]],
    transclip_sets: Callable[[], tuple[tuple, tuple]],
    aux: Optional[np.ndarray] = None,
    timed: Callable[[str], ContextManager] = lambda step: contextlib.nullcontext(),
) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(stage-1, stage-2) scores of the cascade ``choice`` with the head ``models`` trained on
    all ``seen`` classes, over all classes (as test.py): ``text(prompts)`` gives the text
    classifiers [d, C], ``transclip_sets()`` TransCLIP's (support, val) of the seen classes."""
    with timed("stage 2 (seen-class head)"):
        seen_scores = head_scores(models, X, settings.lpp_fusion, aux)
    stage1, cols = None, np.arange(num_classes)
    if settings.unseen_stage and np.setdiff1d(cols, seen).size:
        T = text(choice.inmap_prompts)
        log.info("stage 1: InMaP %s on %d images", choice.stage1, len(seen_scores))
        with timed("stage 1 (InMaP)"):
            stage1 = stage1_scores(X, T, choice.stage1, settings.inmap_fusion)
    if choice.transclip == "off":
        return stage1, seen_scores
    with timed("TransCLIP"):
        support, val = transclip_sets()
        return apply_transclip(
            choice.transclip, X, text("templates"), support, val, stage1, seen_scores, cols, seen,
            settings.inmap_fusion,
        )  # fmt: skip


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def run_stages(
    choice: Choice,
    stage1: Optional[np.ndarray],
    cols: np.ndarray,
    seen_scores: np.ndarray,
    seen: np.ndarray,
    expert_ids: Optional[np.ndarray] = None,
    expert_logits: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> CascadeResult:
    """Route and answer: ``stage1`` [n, len(cols)] over the class ids ``cols`` (None: no stage 1),
    ``seen_scores`` [n, len(seen)]; ``expert_logits(rows)`` over ``expert_ids`` is asked for the
    routed rows only (with "fusion", added to stage 2's as log-softmaxes)."""
    n = len(seen_scores)
    C = int(max(cols.max(), seen.max())) + 1
    unseen = np.setdiff1d(cols, seen)
    if stage1 is None or not unseen.size:
        all_scores, unseen = np.zeros((n, C), np.float32), np.zeros(0, np.int64)
    else:
        # Columns outside ``cols`` can never win: stage 1 only knows the classes it was given.
        all_scores = np.full((n, C), -np.finfo(np.float32).max / 4, np.float32)
        all_scores[:, cols] = stage1
    if expert_logits is None or expert_ids is None:
        return run_cascade(all_scores, unseen, seen_scores, seen)
    keep = np.isin(expert_ids, seen)  # a held-out expert class is not the expert's to answer
    where = np.searchsorted(seen, expert_ids[keep])

    def expert(rows: np.ndarray) -> np.ndarray:
        scores = expert_logits(rows)[:, keep]
        if choice.expert_integration == "fusion":
            scores = log_softmax_np(scores) + log_softmax_np(seen_scores[rows][:, where])
        return scores

    return run_cascade(all_scores, unseen, seen_scores, seen, expert_ids[keep], expert)
