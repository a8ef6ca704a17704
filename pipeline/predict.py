"""test.py's work: the cascade on the test images -> result.txt (validated), warnings.txt,
predictions.tsv (which stage answered each image) and test.json (stage counts and timings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.fileio import write_text_atomic
from pipeline.backbones import combine_views
from pipeline.cascade import STAGE_NAMES, CascadeResult
from pipeline.env import Env
from pipeline.lists import LabeledList, list_test_images
from pipeline.scores import Choice, run_stages, trained_scores
from pipeline.settings import Settings
from pipeline.submission import validate_result, write_result, write_warnings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def cascade(ws: Workspace, paths: list[str], label: str) -> tuple[CascadeResult, tuple, Any, dict]:
    """The trained cascade on ``paths``: (result, undecodable images, choice, CLIP features)."""
    choice, models, seen, _ = ws.load_cascade()
    s, C = ws.settings, len(ws.classes)
    sets, failed = ws.clip_views(paths, label, ("orig", "flip") if choice.flip_tta else ("orig",))
    X = {b: combine_views(fs, choice.flip_tta) for b, fs in sets.items()}
    aux = ws.aux_features(paths, label) if choice.seen_head == "amu" else None
    stage1, seen_scores = trained_scores(
        choice, s, X, models, seen, C, ws.text_classifiers,
        lambda: _transclip_sets(ws, choice, seen), aux, ws.timed,
    )  # fmt: skip
    with ws.timed("load expert"):
        expert = ws.load_expert()

    def expert_logits(rows: np.ndarray) -> np.ndarray:
        with ws.timed("stage 3 (expert)"):
            routed = [paths[i] for i in rows]
            feats, _ = ws.convnext_features(routed, f"{label}-expert", expert.preprocess)
            return expert.logits(feats)

    ids = None if expert is None else expert.class_ids
    result = run_stages(choice, stage1, np.arange(C), seen_scores, seen, ids, expert_logits)
    return result, failed, choice, X


def _transclip_sets(ws: Workspace, choice: Choice, seen: np.ndarray) -> tuple[tuple, tuple]:
    """TransCLIP's support (the shots in the head's training view) and validation images (for
    gamma) of the seen classes, from train.py's feature cache."""
    aug = choice.lpp_views == "aug"

    def features(items: LabeledList, label: str, flip: bool, view: str) -> tuple:
        sets, keep = ws.list_views(items, label, (view, "flip") if flip else (view,))
        y = items.labels[keep]
        m = np.isin(y, seen)
        return {b: combine_views(fs, flip, view)[m] for b, fs in sets.items()}, y[m]

    shots = ws.read_list(ws.env.train_shots_list, "4-shot training")
    val = ws.read_list(ws.env.val_list, "validation")
    support = features(shots, "train", not aug and choice.flip_tta, "aug" if aug else "orig")
    return support, features(val, "val", choice.flip_tta, "orig")


def predict(env: Env, settings: Settings) -> Path:
    """Run the cascade on every image of TEST_DIR and write result.txt (validated)."""
    ws = Workspace.open(env, settings)
    names = list_test_images(env.test_dir)
    paths = [str(Path(env.test_dir) / n) for n in names]
    log.info("%d test images in %s", len(names), env.test_dir)
    result, failed, choice, _ = cascade(ws, paths, "test")
    write_result(env.result_path, names, result.top5)
    problems = validate_result(env.result_path, names, len(ws.classes))
    if problems:
        raise RuntimeError(f"{env.result_path}: invalid submission: " + "; ".join(problems[:5]))
    reason = "undecodable image: predicted from a grey placeholder"
    write_warnings(env.warnings_path, [(names[i], reason) for i in failed])
    if failed:
        log.warning("%d test images could not be decoded; see %s", len(failed), env.warnings_path)
    counts = {name: int((result.stage == i).sum()) for i, name in enumerate(STAGE_NAMES)}
    log.info("answered by stage: %s", counts)
    log.info("timings: %s", {k: round(v, 2) for k, v in ws.timings.items()})
    # Which stage answered each image: for inspection, never read by the pipeline.
    top5 = [" ".join(map(str, t5)) for t5 in result.top5]
    rows = [f"{n}\t{STAGE_NAMES[st]}\t{t}" for n, st, t in zip(names, result.stage, top5)]
    write_text_atomic(env.out_dir / "predictions.tsv", "\n".join(["name\tstage\ttop5", *rows, ""]))
    summary = {
        "images": len(names),
        "undecodable": len(failed),
        "stages": counts,
        "choice": choice.as_dict(),
        "clip_loaded": {name: bb.loaded for name, bb in ws.backbones.items()},
        **ws.record(),
    }
    write_text_atomic(env.out_dir / "test.json", json.dumps(summary, indent=1) + "\n")
    return env.result_path
