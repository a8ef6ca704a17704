"""train.py's work: text classifiers, the domain expert, every choice of the cascade
(pipeline.selection) and the chosen seen-class head, into ``$OUT_DIR/heads`` (``cascade.json``:
the choices and the predicted board score), ``$OUT_DIR/expert`` and ``$OUT_DIR/train.json``."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import numpy as np

from models.fileio import write_text_atomic
from pipeline import validation
from pipeline.backbones import combine_views
from pipeline.env import Env
from pipeline.heads import save_models
from pipeline.lists import LabeledList, ListError, list_test_images, seen_class_ids
from pipeline.scores import CHOICE_FILE, Choice, stage1_scores
from pipeline.selection import Search, ValidationData
from pipeline.settings import Settings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
# The ExpertOptions that the settings expert_<option> set.
EXPERT_OPTIONS = ("epochs", "views", "train_resize", "train_crop", "eval_size", "resample")
EXPERT_OPTIONS += ("weight_decay", "schedule", "t_max", "eta_min", "select")


def train(env: Env, settings: Settings) -> dict[str, Any]:
    """Fit everything; returns (and writes to train.json) a summary."""
    ws = Workspace.open(env, settings)
    train_list = ws.read_list(env.train_shots_list, "4-shot training")
    val_list = ws.read_list(env.val_list, "validation") if env.val_list.is_file() else None
    if val_list is None or not len(val_list):
        raise ListError(
            f"{env.val_list}: no validation images; train.py chooses and validates on them "
            "(run process.py with VAL_PER_CLASS >= 2)"
        )
    C = len(ws.classes)
    seen = seen_class_ids(train_list, ws.classes)
    unseen = np.setdiff1d(np.arange(C), seen)
    counts = C, seen.size, unseen.size, len(train_list), len(val_list)
    log.info("%d classes: %d seen, %d unseen; %d training images, %d validation images", *counts)
    summary: dict[str, Any] = {
        "classes": str(env.classes),
        "seen_classes": int(seen.size),
        "unseen_classes": int(unseen.size),
        "settings": settings.as_dict(),
    }

    # Which views the open choices need; each is encoded once and cached.
    flips = (True, False) if settings.flip_tta is None else (settings.flip_tta,)
    views = ("orig", "flip") if True in flips else ("orig",)
    aug = settings.lpp_views in (None, "aug")
    prompts = ("templates", "bare") if settings.inmap_prompts in (None, "bare") else ("templates",)
    text = {p: ws.text_classifiers(p) for p in prompts}
    train_sets, keep_tr = ws.list_views(train_list, "train", views + (("aug",) if aug else ()))
    ytr = train_list.labels[keep_tr]
    lost = np.setdiff1d(seen, ytr)
    if lost.size:
        names = ", ".join(ws.classes.names[c] for c in lost[:5])
        raise ListError(
            f"{env.train_shots_list}: every training image of {lost.size} class(es) failed to "
            f"decode ({names}); replace them or re-run process.py, which skips undecodable shots"
        )
    val_sets, keep_val = ws.list_views(val_list, "val", views)
    yval = val_list.labels[keep_val]
    val_paths = val_list.subset(keep_val).resolve(env.data_dir)

    expert_ids, expert_logits = np.zeros(0, np.int64), None
    if settings.expert_domain in ws.classes.domain_names:
        expert_ids = np.intersect1d(ws.classes.ids_in_domain(settings.expert_domain), seen)
    elif settings.expert_domain:
        log.warning("expert domain %r is not in the class list; no expert", settings.expert_domain)
    if expert_ids.size:
        summary["expert"], expert_logits = train_expert_stage(
            ws, train_list, val_paths, yval, expert_ids
        )
    aux = None
    if settings.amu:  # AMU-Tuning's auxiliary features
        train_paths = train_list.subset(keep_tr).resolve(env.data_dir)
        aux = ws.aux_features(train_paths, "train"), ws.aux_features(val_paths, "val")

    n_test, share = _test_set_facts(ws, text, unseen)
    train_aug = {b: combine_views(s, False, "aug") for b, s in train_sets.items()} if aug else None
    data = ValidationData(
        domains=np.asarray(ws.classes.domains),
        seen=seen,
        unseen=unseen,
        train={f: {b: combine_views(s, f) for b, s in train_sets.items()} for f in flips},
        train_aug=train_aug,
        train_y=ytr,
        val={f: {b: combine_views(s, f) for b, s in val_sets.items()} for f in flips},
        val_y=yval,
        text=text,
        expert_ids=expert_ids,
        expert_logits=expert_logits,
        aux=aux,
    )
    search = Search(data, settings, share, n_test, env.seed)
    with ws.timed("validation and choices"):
        result = search.search()
    choice = Choice(**result["choice"])
    p = result["predicted_top1"]
    log.info("chosen: %s", result["choice"])
    log.info("predicted board top-1 %(value).4f (95%% interval %(low).4f-%(high).4f)", p)

    with ws.timed("seen-class head"):
        models, _ = search.heads(np.zeros(0, np.int64), choice, final=True)
    trained_with = {k: result["choice"][k] for k in ("flip_tta", "lpp_views", "seen_head")}
    common = {"seen_ids": seen.tolist(), "trained_with": trained_with}
    save_models(ws.heads_dir, models, {b: {**ws.head_expect(b), **common} for b in ws.backbones})
    result["trained_with"] = trained_with
    result["settings"] = settings.as_dict()  # test.sh starts from these
    write_text_atomic(ws.heads_dir / CHOICE_FILE, json.dumps(result, indent=1) + "\n")
    keys = ("choice", "predicted_top1", "breakdown", "unseen_share", "n_test")
    summary.update({k: result[k] for k in keys}, **ws.record())
    write_text_atomic(env.out_dir / "train.json", json.dumps(summary, indent=1, default=str) + "\n")
    log.info("done: %s", env.out_dir / "train.json")
    return summary


def _test_set_facts(ws: Workspace, text: dict, unseen: np.ndarray) -> tuple[Optional[int], float]:
    """(test images or None, expected unseen share: the settings', else the share stage 1 routes
    to unseen classes on the test set, else the default; docs/METHODS.md, 'Batches')."""
    settings = ws.settings
    try:
        names = list_test_images(ws.env.test_dir)
    except ListError:
        names = []
    n_test = len(names) or None
    if not unseen.size:
        return n_test, 0.0
    if settings.val_unseen_share is not None:
        return n_test, settings.val_unseen_share
    if not names or not settings.unseen_stage:
        return n_test, validation.DEFAULT_UNSEEN_SHARE
    choice = Choice.challenge().pinned(settings)
    paths = [str(ws.env.test_dir / n) for n in names]
    sets, _ = ws.clip_views(paths, "test", ("orig", "flip") if choice.flip_tta else ("orig",))
    X = {b: combine_views(s, choice.flip_tta) for b, s in sets.items()}
    with ws.timed("stage 1 on the test set"):  # text has "bare" unless pinned to "templates"
        s1 = stage1_scores(X, text[choice.inmap_prompts], choice.stage1, settings.inmap_fusion)
    share = float(np.isin(s1.argmax(1), unseen).mean())
    log.info("stage 1 routes %.1f%% of %d test images to unseen classes", 100 * share, len(names))
    if share <= 0:
        log.warning("stage 1 routes no test image: validating with the default unseen share")
        return n_test, validation.DEFAULT_UNSEEN_SHARE
    return n_test, share


def train_expert_stage(
    ws: Workspace,
    train_list: LabeledList,
    val_paths: list[str],
    yval: np.ndarray,
    expert_ids: np.ndarray,
) -> tuple[dict[str, Any], Optional[np.ndarray]]:
    """Train the expert on its classes' shots, selecting on the ``fit`` half of their validation
    images; returns its summary and logits [n_val, K] on those images (zeros elsewhere)."""
    from models.convnext import preprocess
    from pipeline.expert import ExpertOptions, train_expert

    s, env = ws.settings, ws.env
    shots = train_list.subset(np.flatnonzero(np.isin(train_list.labels, expert_ids)))
    items = list(zip(shots.resolve(env.data_dir), shots.labels.tolist()))
    rows = np.flatnonzero(np.isin(yval, expert_ids))
    logits = np.zeros((len(yval), expert_ids.size), np.float32)
    with ws.timed("expert"):
        pre = preprocess(s.expert_eval_size, s.expert_resample)
        feats, failed = ws.convnext_features([val_paths[i] for i in rows], "val-expert", pre)
        fit, _ = validation.split_fit_score(yval)
        sel = np.isin(rows, fit) & ~np.isin(np.arange(rows.size), failed)
        from_settings = {k: getattr(s, f"expert_{k}") for k in EXPERT_OPTIONS}
        options = ExpertOptions(seed=env.seed, **from_settings)
        expert = train_expert(ws.convnext, items, feats[sel], yval[rows][sel], expert_ids, options)
        expert.save(ws.expert_dir)
        logits[rows] = expert.logits(feats)
    best = expert.info["best_epoch"]
    val_acc = expert.info["history"][best - 1].get("val_acc")  # history[e - 1]: epoch e
    return {"best_epoch": best, "val_accuracy": val_acc}, logits
