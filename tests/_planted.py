"""Planted CLIP-like features for the tests and the benchmarks (``bench/``): unit vectors clustered
by class with text columns across a modality gap, and whole board-shaped problems (seen and
unseen domains, shots, validation images, a test set, views, prompt sets, an expert) for the
validation search and the cascade on arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

D = 512
BOARD_B = "Animal:52,Caltech-101:91,Food-101:101,Thu-dog:130,Stanford-Cars:29"


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=axis, keepdims=True)).astype(np.float32)


def planted(y: np.ndarray, c: int, seed: int, d: int = D, gap=3.0, spread=1.5, text_noise=2.0):
    """Unit image features X [len(y), d] around class centres and text columns T [d, c] offset by
    a modality gap (zero-shot about 60% top-1 at the defaults)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(c, d)))
    u, v = unit(rng.normal(size=d)), unit(rng.normal(size=d))
    X = unit(centres[y] + spread * rng.normal(size=(len(y), d)) / np.sqrt(d) + gap * u)
    T = unit(unit(centres + text_noise * unit(rng.normal(size=(c, d)))) + gap * unit(0.35 * u + v))
    return X, np.ascontiguousarray(T.T)


def board_problem(
    domains: str = BOARD_B,
    *,
    shots: int = 4,
    val_per_class: int = 20,
    n: int = 4305,
    share: float = 0.28,
    expert_domain: str = "Thu-dog",
    seed: int = 0,
    d: int = D,
    spread: float = 1.5,
) -> dict[str, Any]:
    """A board-shaped problem: ``domains`` as "name:classes,..." (the last one unseen), features
    of two backbones in the views orig, flip and aug (perturbed copies), the prompt sets bare
    and templates, and expert logits (a prototype classifier on sharper features; on the
    validation rows only for the expert's classes, as train.py knows them). ``spread``: the
    images' scatter around their class centre (larger is harder)."""
    doms = [(x.split(":")[0], int(x.split(":")[1])) for x in domains.split(",")]
    dom = np.concatenate([[name] * k for name, k in doms]).astype(object)
    C = dom.size
    unseen = np.flatnonzero(dom == doms[-1][0])
    seen = np.setdiff1d(np.arange(C), unseen)
    rng = np.random.default_rng([seed, 5])
    n_u = int(round(n * share))
    y = {
        "train": np.repeat(seen, shots),
        "val": np.repeat(seen, val_per_class),
        "test": rng.permutation(
            np.concatenate([rng.choice(unseen, n_u), rng.choice(seen, n - n_u)])
        ),
    }
    parts = np.cumsum([len(v) for v in y.values()])[:-1]
    y_all = np.concatenate(list(y.values()))
    feats: dict[str, dict[str, dict[str, np.ndarray]]] = {
        v: {p: {} for p in y} for v in ("orig", "flip", "aug")
    }
    text: dict[str, dict[str, np.ndarray]] = {"bare": {}, "templates": {}}
    for i, b in enumerate(("vit", "rn")):
        X, text["templates"][b] = planted(y_all, C, seed * 10 + i, d, spread=spread)
        text["bare"][b] = planted(y_all[:1], C, seed * 10 + i, d, text_noise=2.4)[1]
        for view, noise in (("orig", 0.0), ("flip", 0.4), ("aug", 0.8)):
            Xv = unit(X + noise * rng.normal(size=X.shape) / np.sqrt(d))
            for part, rows in zip(y, np.split(Xv, parts)):
                feats[view][part][b] = rows
    E = dict(zip(y, np.split(planted(y_all, C, seed * 10 + 7, d, spread=1.0)[0], parts)))
    expert_ids = np.flatnonzero(dom == expert_domain)
    expert = None
    if expert_ids.size:
        protos = unit(np.stack([E["train"][y["train"] == c].mean(0) for c in expert_ids]))
        expert = {part: 30.0 * e @ protos.T for part, e in E.items()}
        expert["val"][~np.isin(y["val"], expert_ids)] = 0.0
    return dict(
        domains=dom,
        seen=seen,
        unseen=unseen,
        y=y,
        feats=feats,
        text=text,
        expert_ids=expert_ids,
        expert=expert,
    )


def views(p: dict[str, Any], part: str, flip: bool, view: str = "orig") -> dict[str, np.ndarray]:
    """Features of ``part`` by backbone, in ``view``, averaged with the flip view if ``flip``."""
    f = p["feats"]
    if not flip:
        return f[view][part]
    return {b: unit(x + f["flip"][part][b]) for b, x in f[view][part].items()}


def validation_data(p: dict[str, Any]):
    """The problem as train.py hands it to the validation search."""
    from pipeline.selection import ValidationData

    y = p["y"]
    return ValidationData(
        domains=p["domains"],
        seen=p["seen"],
        unseen=p["unseen"],
        train={f: views(p, "train", f) for f in (False, True)},
        train_aug=views(p, "train", False, "aug"),
        train_y=y["train"],
        val={f: views(p, "val", f) for f in (False, True)},
        val_y=y["val"],
        text=p["text"],
        expert_ids=p["expert_ids"],
        expert_logits=None if p["expert"] is None else p["expert"]["val"],
    )


def board_top1(p: dict[str, Any], choice, settings, seed: int = 0) -> float:
    """What test.py measures on the planted test set: the cascade of ``choice`` with the
    seen-class head fitted on every seen class (as pipeline.training and pipeline.predict)."""
    from pipeline.scores import fit_head, run_stages, trained_scores

    seen, y, C = p["seen"], p["y"], len(p["domains"])
    flip = choice.flip_tta
    aug = choice.lpp_views == "aug"
    shots = views(p, "train", False, "aug") if aug else views(p, "train", flip)
    index = np.full(C, -1, np.int64)
    index[seen] = np.arange(seen.size)
    T = {b: t[:, seen] for b, t in p["text"]["templates"].items()}
    val = (views(p, "val", flip), index[y["val"]])
    models = fit_head(choice.seen_head, settings, shots, index[y["train"]], T, val, None, seed)
    s1, s2 = trained_scores(
        choice, settings, views(p, "test", flip), models, seen, C, p["text"].__getitem__,
        lambda: ((shots, y["train"]), (val[0], y["val"])),
    )  # fmt: skip
    expert = None if p["expert"] is None else p["expert"]["test"].__getitem__
    r = run_stages(choice, s1, np.arange(C), s2, seen, p["expert_ids"], expert)
    return float(np.mean(r.top1 == y["test"]))


def routed_share(p: dict[str, Any], choice, settings) -> float:
    """The unseen share as train.py finds it: the test images stage 1 routes to unseen classes."""
    from pipeline.scores import stage1_scores

    X = views(p, "test", choice.flip_tta)
    T = p["text"]["bare" if choice.inmap_prompts == "bare" else "templates"]
    return float(
        np.isin(
            stage1_scores(X, T, choice.stage1, settings.inmap_fusion).argmax(1), p["unseen"]
        ).mean()
    )
