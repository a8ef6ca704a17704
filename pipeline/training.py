"""train.py's work: text classifiers, LP++ probes, the domain expert, the stage-1 choice.

Everything lands in ``$OUT_DIR/heads`` (safetensors + JSON) and ``$OUT_DIR/expert``; a summary in
``$OUT_DIR/train.json``. Image features come from the feature cache, so re-running train.sh after
an interruption recomputes nothing that was finished.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from models.fileio import write_text_atomic
from pipeline import selection
from pipeline.env import Env
from pipeline.heads import head_path, save_head
from pipeline.lists import LabeledList, ListError, seen_class_ids
from pipeline.scores import STAGE1_FILE
from pipeline.settings import Settings
from pipeline.split import read_pseudo_unseen
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def train(env: Env, settings: Settings) -> dict[str, Any]:
    """Fit every head; returns (and writes to train.json) a summary."""
    ws = Workspace.open(env, settings)
    train_list = ws.read_list(env.train_shots_list, "4-shot training")
    val_list = ws.read_list(env.val_list, "validation") if env.val_list.is_file() else None
    seen = seen_class_ids(train_list, ws.classes)
    summary: dict[str, Any] = {
        "classes": str(env.classes),
        "seen_classes": int(seen.size),
        "unseen_classes": int(ws.classes.num_classes - seen.size),
        "settings": settings.as_dict(),
    }
    log.info(
        "%d classes: %d seen, %d unseen; %d training images, %d validation images",
        ws.classes.num_classes,
        seen.size,
        ws.classes.num_classes - seen.size,
        len(train_list),
        len(val_list) if val_list else 0,
    )
    T = ws.text_classifiers()
    Xtr, keep_tr = ws.list_features(train_list, "train")
    ytr = train_list.labels[keep_tr]
    lost = np.setdiff1d(seen, ytr)
    if lost.size:
        names = ", ".join(ws.classes.names[c] for c in lost[:5])
        raise ListError(
            f"{env.train_shots_list}: every training image of {lost.size} class(es) failed to "
            f"decode ({names}); replace them or re-run process.py, which skips undecodable shots"
        )
    Xval = yval = None
    val_paths: list[str] = []
    if val_list is not None and len(val_list):
        Xval, keep_val = ws.list_features(val_list, "val")
        yval = val_list.labels[keep_val]
        val_paths = [val_list.resolve(env.data_dir)[i] for i in keep_val]

    summary["lpp"], _ = fit_probes(ws, Xtr, ytr, T, Xval, yval, seen)
    if settings.amu:
        train_paths = [train_list.resolve(env.data_dir)[i] for i in keep_tr]
        summary["amu"] = fit_amu(ws, train_paths, Xtr, ytr, T, val_paths, Xval, yval, seen)

    pseudo = read_pseudo_unseen(env.lists_dir)
    if pseudo is not None and Xval is not None:
        train_pseudo = ws.read_list(env.lists_dir / "train_4shot_pseudo.txt", "pseudo-unseen")
        Xp, keep_p = ws.list_features(train_pseudo, "train")
        seen_p = np.setdiff1d(seen, pseudo)
        yp = train_pseudo.labels[keep_p]
        summary["lpp_pseudo"], probes_p = fit_probes(ws, Xp, yp, T, Xval, yval, seen_p, "pseudo")
        with ws.timed("stage-1 selection"):
            results = selection.compare_stage1(
                settings, ws.classes.num_classes, T, Xval, yval, probes_p, seen_p
            )
        choice = {"chosen": selection.select_stage1(results), "candidates": results}
        summary["stage1"] = choice
        write_text_atomic(ws.heads_dir / STAGE1_FILE, json.dumps(choice, indent=1) + "\n")
    else:
        log.info("no pseudo-unseen classes in the split: stage 1 uses the 'challenge' variant")
        (ws.heads_dir / STAGE1_FILE).unlink(missing_ok=True)

    expert_ids = _domain_class_ids(ws, settings.expert_domain, seen)
    if expert_ids.size:
        summary["expert"] = train_expert_stage(ws, train_list, val_list, expert_ids)

    summary.update(ws.record())
    write_text_atomic(env.out_dir / "train.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _domain_class_ids(ws: Workspace, domain: str | None, seen: np.ndarray) -> np.ndarray:
    if not domain:
        return np.zeros(0, np.int64)
    if domain not in ws.classes.domain_names:
        log.warning("expert domain %r is not in the class list; no expert", domain)
        return np.zeros(0, np.int64)
    return np.intersect1d(ws.classes.ids_in_domain(domain), seen)


def _seen_index(num_classes: int, seen: np.ndarray) -> np.ndarray:
    """Class id -> column among the seen classes (-1 for the others)."""
    index = np.full(num_classes, -1, np.int64)
    index[seen] = np.arange(seen.size)
    return index


def fit_probes(
    ws: Workspace,
    Xtr: dict[str, np.ndarray],
    ytr: np.ndarray,
    T: dict[str, np.ndarray],
    Xval: dict[str, np.ndarray] | None,
    yval: np.ndarray | None,
    seen: np.ndarray,
    tag: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One LP++ probe per backbone over the ``seen`` classes; validation (restricted to seen
    classes) selects the epoch. Saved to heads/lpp_<backbone>[_tag].safetensors; returns
    (summary, the probes by backbone)."""
    from fewshot.lpp import LPPlusPlus

    s = ws.settings
    index = _seen_index(ws.classes.num_classes, seen)
    mask_tr = index[ytr] >= 0
    out, probes = {}, {}
    for name in ws.backbones:
        val = None
        if Xval is not None:
            mv = index[yval] >= 0
            if mv.any():
                val = (Xval[name][mv], index[yval[mv]])
        with ws.timed(f"lpp {name}{' ' + tag if tag else ''}"):
            probe = LPPlusPlus(epochs=s.lpp_epochs, learn_alpha=s.lpp_learn_alpha).fit(
                Xtr[name][mask_tr], index[ytr[mask_tr]], T[name][:, seen], val=val
            )
        info = probe.info()
        info.update(ws.head_expect(name))
        info.update({"backbone": name, "seen_ids": seen.tolist(), "tag": tag})
        if probe.val_history is not None:
            info["val_accuracy"] = float(probe.val_history[probe.best_epoch])
        save_head(head_path(ws.heads_dir, "lpp", name, tag), probe.state_dict(), info)
        log.info(
            "LP++ %s%s: best epoch %s, validation accuracy %s",
            name,
            f" ({tag})" if tag else "",
            probe.best_epoch,
            f"{info['val_accuracy']:.4f}" if "val_accuracy" in info else "n/a",
        )
        out[name] = {k: info[k] for k in ("best_epoch", "alpha0") if k in info}
        out[name]["val_accuracy"] = info.get("val_accuracy")
        probes[name] = probe
    return out, probes


def fit_amu(
    ws: Workspace,
    train_paths: list[str],
    Xtr: dict[str, np.ndarray],
    ytr: np.ndarray,
    T: dict[str, np.ndarray],
    val_paths: list[str],
    Xval: dict[str, np.ndarray] | None,
    yval: np.ndarray | None,
    seen: np.ndarray,
) -> dict[str, Any]:
    """AMU-Tuning on the first CLIP backbone with ConvNeXt-V2 auxiliary features (the expert's
    evaluation view), over the seen classes; validation selects the epoch. Saved to
    heads/amu_<backbone>.safetensors."""
    from fewshot.amu import AMUTuning
    from models.convnext import preprocess

    name = ws.settings.backbones[0]
    pre = preprocess(ws.settings.expert_eval_size)
    index = _seen_index(ws.classes.num_classes, seen)
    Atr, _ = ws.convnext_features(train_paths, "train", pre, normalize=True)
    m = index[ytr] >= 0
    val = None
    if val_paths:
        Aval, _ = ws.convnext_features(val_paths, "val", pre, normalize=True)
        mv = index[yval] >= 0
        val = (Xval[name][mv], Aval[mv], index[yval[mv]])
    with ws.timed(f"amu {name}"):
        amu = AMUTuning(seed=ws.env.seed).fit(
            Xtr[name][m], Atr[m], index[ytr[m]], T[name][:, seen], val=val
        )
    info = amu.info()
    info.update(ws.head_expect(name))
    info.update(
        {"backbone": name, "aux_weights": ws.convnext.fingerprint(), "seen_ids": seen.tolist()}
    )
    save_head(head_path(ws.heads_dir, "amu", name), amu.state_dict(), info)
    log.info("AMU-Tuning %s + ConvNeXt-V2 auxiliary: best epoch %s", name, info["best_epoch"])
    return {"backbone": name, "best_epoch": info["best_epoch"]}


def train_expert_stage(
    ws: Workspace, train_list: LabeledList, val_list: LabeledList | None, expert_ids: np.ndarray
) -> dict[str, Any]:
    """Fine-tune the ConvNeXt-V2 expert on the training images of its classes."""
    from models.convnext import preprocess
    from pipeline.expert import train_expert

    s, env = ws.settings, ws.env
    mine = set(expert_ids.tolist())

    def items(lst: LabeledList | None) -> list[tuple[str, int]]:
        if lst is None:
            return []
        return [(p, int(y)) for p, y in zip(lst.resolve(env.data_dir), lst.labels) if y in mine]

    val_items = items(val_list)
    if not val_items:
        log.warning("no validation images of the expert's classes: the last epoch is kept")
    with ws.timed("expert"):
        val_feats = np.zeros((0, ws.convnext.num_features), np.float32)
        val_ids = np.zeros(0, np.int64)
        if val_items:
            pre = preprocess(s.expert_eval_size)
            feats, failed = ws.convnext_features([p for p, _ in val_items], "val-expert", pre)
            ok = np.setdiff1d(np.arange(len(val_items)), failed)
            val_feats, val_ids = feats[ok], np.array([val_items[i][1] for i in ok], np.int64)
        expert = train_expert(
            ws.convnext,
            items(train_list),
            val_feats,
            val_ids,
            expert_ids.tolist(),
            epochs=s.expert_epochs,
            views=s.expert_views,
            seed=env.seed,
            train_resize=s.expert_train_resize,
            train_crop=s.expert_train_crop,
            eval_size=s.expert_eval_size,
        )
        expert.save(ws.expert_dir)
    info = expert.info
    best = info["best_epoch"]
    val_acc = next((h.get("val_acc") for h in info["history"] if h.get("epoch") == best), None)
    return {"best_epoch": best, "val_accuracy": val_acc}
