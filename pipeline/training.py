"""train.py's work: text classifiers, LP++ probes, the dog expert, the stage-1 choice.

Everything lands in ``$OUT_DIR/heads`` (safetensors + JSON) and ``$OUT_DIR/expert``; a summary in
``$OUT_DIR/train.json``. Image features come from the feature cache, so re-running train.sh after
an interruption recomputes nothing that was finished.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import stages
from pipeline.backbones import ClipBackbone, backbone_features
from pipeline.config import Config
from pipeline.features import FeatureCache
from pipeline.fileio import write_text_atomic
from pipeline.heads import classes_fingerprint, head_path, save_head
from pipeline.lists import (
    ClassList,
    LabeledList,
    ListError,
    read_class_list,
    read_labeled_list,
    seen_class_ids,
)
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """What train and test share: configuration, class list, lists, backbones."""

    cfg: Config
    settings: Settings
    classes: ClassList
    cache: FeatureCache
    backbones: dict[str, ClipBackbone]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: Config, settings: Settings) -> Workspace:
        classes = read_class_list(cfg.classes)
        cache = FeatureCache(cfg.cache_dir, backend=cfg.decode_backend)
        backbones = {
            name: ClipBackbone(name, path, cache)
            for name, path in settings.backbone_weights(cfg).items()
        }
        return cls(cfg, settings, classes, cache, backbones)

    @property
    def heads_dir(self) -> Path:
        return self.cfg.out_dir / "heads"

    @property
    def expert_dir(self) -> Path:
        return self.cfg.out_dir / "expert"

    def timed(self, name: str):
        ws = self

        class _T:
            def __enter__(self):
                self.t = time.time()

            def __exit__(self, *exc):
                ws.timings[name] = ws.timings.get(name, 0.0) + time.time() - self.t

        return _T()

    def read_list(self, path: Path, what: str) -> LabeledList:
        if not path.is_file():
            raise FileNotFoundError(f"{what} list not found: {path} (run process.py first)")
        return read_labeled_list(path, self.classes)

    def text_classifiers(self) -> dict[str, np.ndarray]:
        s = self.settings
        out = {}
        with self.timed("text classifiers"):
            for name, bb in self.backbones.items():
                out[name] = bb.text_classifier(
                    self.classes.names, s.templates, s.descriptions, self.heads_dir
                )
        return out

    def features(self, items: LabeledList, label: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-backbone normalised features of a labelled list, undecodable images dropped
        (with a warning); returns (features by backbone, kept row indices)."""
        paths = items.resolve(self.cfg.data_dir)
        with self.timed(f"features {label}"):
            feats, failed = backbone_features(
                self.backbones,
                paths,
                label,
                flip_tta=self.settings.flip_tta,
                batch_size=self.cfg.batch_size,
                workers=self.cfg.workers,
            )
        keep = np.array(sorted(set(range(len(paths))) - failed), np.int64)
        if failed:
            log.warning("%s: %d undecodable image(s) skipped", label, len(failed))
        return {k: v[keep] for k, v in feats.items()}, keep


def _domain_class_ids(classes: ClassList, domain: str | None, seen: np.ndarray) -> np.ndarray:
    if not domain:
        return np.zeros(0, np.int64)
    if domain not in classes.domain_names:
        log.warning("expert domain %r is not in the class list; no expert", domain)
        return np.zeros(0, np.int64)
    return np.intersect1d(classes.ids_in_domain(domain), seen)


def train(cfg: Config, settings: Settings) -> dict[str, Any]:
    """Fit every head; returns (and writes to train.json) a summary."""
    ws = Workspace.open(cfg, settings)
    train_list = ws.read_list(cfg.train_shots_list, "4-shot training")
    val_list = ws.read_list(cfg.val_list, "validation") if cfg.val_list.is_file() else None
    seen = seen_class_ids(train_list, ws.classes)
    summary: dict[str, Any] = {
        "classes": str(cfg.classes),
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
    Xtr, keep_tr = ws.features(train_list, "train")
    ytr = train_list.labels[keep_tr]
    lost = np.setdiff1d(seen, ytr)
    if lost.size:
        names = ", ".join(ws.classes.names[c] for c in lost[:5])
        raise ListError(
            f"{cfg.train_shots_list}: every training image of {lost.size} class(es) failed to "
            f"decode ({names}); replace them or re-run process.py, which skips undecodable shots"
        )
    Xval = yval = None
    if val_list is not None and len(val_list):
        Xval, keep_val = ws.features(val_list, "val")
        yval = val_list.labels[keep_val]

    summary["lpp"] = fit_probes(ws, "lpp", Xtr, ytr, T, Xval, yval, seen)

    if settings.amu:
        val_paths = val_list.resolve(cfg.data_dir) if Xval is not None else []
        summary["amu"] = fit_amu(
            ws,
            [train_list.resolve(cfg.data_dir)[i] for i in keep_tr],
            Xtr,
            ytr,
            T,
            [val_paths[i] for i in keep_val] if Xval is not None else None,
            Xval,
            yval,
            seen,
        )

    pseudo = read_pseudo_unseen(cfg)
    if pseudo is not None and Xval is not None:
        train_pseudo = ws.read_list(cfg.lists_dir / "train_4shot_pseudo.txt", "pseudo-unseen")
        Xp, keep_p = ws.features(train_pseudo, "train")
        seen_p = np.setdiff1d(seen, pseudo)
        summary["lpp_pseudo"] = fit_probes(
            ws, "lpp", Xp, train_pseudo.labels[keep_p], T, Xval, yval, seen_p, tag="pseudo"
        )
        with ws.timed("stage-1 selection"):
            choice = stages.select_stage1(ws, T, Xval, yval, seen_p, tag="pseudo")
        summary["stage1"] = choice
        write_text_atomic(ws.heads_dir / "stage1.json", json.dumps(choice, indent=1) + "\n")
    else:
        log.info("no pseudo-unseen classes in the split: stage 1 uses the 'challenge' variant")
        (ws.heads_dir / "stage1.json").unlink(missing_ok=True)

    expert_ids = _domain_class_ids(ws.classes, settings.expert_domain, seen)
    if expert_ids.size:
        summary["expert"] = train_expert_stage(ws, train_list, val_list, expert_ids)

    summary["timings"] = ws.timings
    write_text_atomic(cfg.out_dir / "train.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def fit_probes(
    ws: Workspace,
    method: str,
    Xtr: dict[str, np.ndarray],
    ytr: np.ndarray,
    T: dict[str, np.ndarray],
    Xval: dict[str, np.ndarray] | None,
    yval: np.ndarray | None,
    seen: np.ndarray,
    tag: str = "",
) -> dict[str, Any]:
    """One LP++ probe per backbone over the ``seen`` classes; validation (restricted to seen
    classes) selects the epoch. Saved to heads/lpp_<backbone>[_tag].safetensors."""
    from fewshot.lpp import LPPlusPlus

    s = ws.settings
    index = np.full(ws.classes.num_classes, -1, np.int64)
    index[seen] = np.arange(seen.size)
    mask_tr = index[ytr] >= 0
    out = {}
    for name in ws.backbones:
        val = None
        if Xval is not None:
            mv = index[yval] >= 0
            if mv.any():
                val = (Xval[name][mv], index[yval[mv]])
        with ws.timed(f"{method} {name}{' ' + tag if tag else ''}"):
            probe = LPPlusPlus(epochs=s.lpp_epochs, learn_alpha=s.lpp_learn_alpha).fit(
                Xtr[name][mask_tr], index[ytr[mask_tr]], T[name][:, seen], val=val
            )
        info = probe.info()
        info.update(
            {
                "backbone": name,
                "weights": ws.backbones[name].key_parts()["weights"],
                "classes": classes_fingerprint(ws.classes.names),
                "seen_ids": seen.tolist(),
                "tag": tag,
            }
        )
        if probe.val_history is not None:
            info["val_accuracy"] = float(probe.val_history[probe.best_epoch])
        save_head(head_path(ws.heads_dir, method, name, tag), probe.state_dict(), info)
        log.info(
            "LP++ %s%s: best epoch %s, validation accuracy %s",
            name,
            f" ({tag})" if tag else "",
            probe.best_epoch,
            f"{info['val_accuracy']:.4f}" if "val_accuracy" in info else "n/a",
        )
        out[name] = {k: info[k] for k in ("best_epoch", "alpha0") if k in info}
        out[name]["val_accuracy"] = info.get("val_accuracy")
    return out


def fit_amu(
    ws: Workspace,
    train_paths: list[str],
    Xtr: dict[str, np.ndarray],
    ytr: np.ndarray,
    T: dict[str, np.ndarray],
    val_paths: list[str] | None,
    Xval: dict[str, np.ndarray] | None,
    yval: np.ndarray | None,
    seen: np.ndarray,
) -> dict[str, Any]:
    """AMU-Tuning on the first CLIP backbone with ConvNeXt-V2 auxiliary features, over the seen
    classes; validation selects the epoch. Saved to heads/amu_<backbone>.safetensors."""
    from fewshot.amu import AMUTuning
    from pipeline.auxiliary import ConvNeXtFeatures

    name = ws.settings.backbones[0]
    aux = ConvNeXtFeatures(ws.cfg.convnext, ws.cache, ws.settings.expert_eval_size)
    index = np.full(ws.classes.num_classes, -1, np.int64)
    index[seen] = np.arange(seen.size)
    with ws.timed("features aux"):
        Atr, _ = aux.features(train_paths, "train", workers=ws.cfg.workers)
        Aval = aux.features(val_paths, "val", workers=ws.cfg.workers)[0] if val_paths else None
    m = index[ytr] >= 0
    val = None
    if Aval is not None:
        mv = index[yval] >= 0
        val = (Xval[name][mv], Aval[mv], index[yval[mv]])
    with ws.timed(f"amu {name}"):
        amu = AMUTuning(seed=ws.cfg.seed).fit(
            Xtr[name][m], Atr[m], index[ytr[m]], T[name][:, seen], val=val
        )
    info = amu.info()
    info.update(
        {
            "backbone": name,
            "weights": ws.backbones[name].key_parts()["weights"],
            "aux_weights": ws.cache.fingerprint(ws.cfg.convnext),
            "classes": classes_fingerprint(ws.classes.names),
            "seen_ids": seen.tolist(),
        }
    )
    save_head(head_path(ws.heads_dir, "amu", name), amu.state_dict(), info)
    log.info("AMU-Tuning %s + ConvNeXt-V2 auxiliary: best epoch %s", name, info["best_epoch"])
    return {"backbone": name, "best_epoch": info["best_epoch"]}


def read_pseudo_unseen(cfg: Config) -> np.ndarray | None:
    path = cfg.lists_dir / "pseudo_unseen.json"
    if not path.is_file():
        return None
    ids = json.loads(path.read_text()).get("class_ids") or []
    return np.asarray(ids, np.int64) if ids else None


def train_expert_stage(
    ws: Workspace, train_list: LabeledList, val_list: LabeledList | None, expert_ids: np.ndarray
) -> dict[str, Any]:
    """Fine-tune the ConvNeXt-V2 expert on the training images of its classes."""
    from pipeline.expert import train_expert

    s, cfg = ws.settings, ws.cfg

    def items(lst: LabeledList | None) -> list[tuple[str, int]]:
        if lst is None:
            return []
        paths = lst.resolve(cfg.data_dir)
        return [(p, int(y)) for p, y in zip(paths, lst.labels) if y in set(expert_ids.tolist())]

    val_items = items(val_list)
    if not val_items:
        log.warning("no validation images of the expert's classes: the last epoch is kept")
    with ws.timed("expert"):
        expert = train_expert(
            cfg.convnext,
            items(train_list),
            val_items,
            class_ids=expert_ids.tolist(),
            out_dir=ws.expert_dir,
            mode=s.expert_mode,
            epochs=s.expert_epochs,
            views=s.expert_views,
            seed=cfg.seed,
            train_resize=s.expert_train_resize,
            train_crop=s.expert_train_crop,
            eval_size=s.expert_eval_size,
        )
    info = expert.info
    best = info["best_epoch"]
    val_acc = next((h.get("val_acc") for h in info["history"] if h.get("epoch") == best), None)
    return {"mode": info["mode"], "best_epoch": best, "val_accuracy": val_acc}
