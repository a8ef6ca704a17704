"""test.py's work: the cascade on the test images -> result.txt (validated), warnings.txt,
predictions.tsv (which stage answered each image) and test.json (stage counts and timings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from models.fileio import write_text_atomic
from pipeline.backbones import combine_views
from pipeline.cascade import STAGE_NAMES, CascadeResult
from pipeline.env import Env
from pipeline.lists import list_test_images
from pipeline.scores import head_scores, run_stages, stage1_scores
from pipeline.settings import Settings
from pipeline.submission import validate_result, write_result, write_warnings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def stage_counts(result: CascadeResult) -> dict[str, int]:
    return {name: int((result.stage == i).sum()) for i, name in enumerate(STAGE_NAMES)}


def cascade(ws: Workspace, paths: list[str], label: str) -> tuple[CascadeResult, tuple, Any]:
    """The trained cascade on ``paths``: (result, undecodable images, the choice)."""
    choice, models, seen, _ = ws.load_cascade()
    s = ws.settings
    views = ("orig", "flip") if choice.flip_tta else ("orig",)
    sets, failed = ws.clip_views(paths, label, views)
    X = {b: combine_views(fs, choice.flip_tta) for b, fs in sets.items()}
    aux: Optional[np.ndarray] = None
    if choice.seen_head == "amu":
        from models.convnext import preprocess

        pre = preprocess(s.expert_eval_size, s.expert_resample)
        aux, _ = ws.convnext_features(paths, label, pre, normalize=True)
    with ws.timed("stage 2 (seen-class head)"):
        seen_scores = head_scores(models, X, s.lpp_fusion, aux)
    stage1 = None
    C = ws.classes.num_classes
    if s.unseen_stage and np.setdiff1d(np.arange(C), seen).size:
        T = ws.text_classifiers("bare" if choice.inmap_prompts == "bare" else "templates")
        log.info("stage 1: InMaP %s on %d images", choice.stage1, len(paths))
        with ws.timed("stage 1 (InMaP)"):
            stage1 = stage1_scores(X, T, choice.stage1, s.inmap_fusion)
    if choice.transclip != "off":
        with ws.timed("TransCLIP"):
            stage1, seen_scores = _transclip(ws, choice, X, stage1, seen_scores, seen)
    with ws.timed("load expert"):
        expert = ws.load_expert()
    if expert is None:
        return (
            run_stages(choice, s.lpp_fusion, stage1, np.arange(C), seen_scores, seen),
            failed,
            choice,
        )

    def expert_logits(rows: np.ndarray) -> np.ndarray:
        with ws.timed("stage 3 (expert)"):
            feats, _ = ws.convnext_features(
                [paths[i] for i in rows], f"{label}-expert", expert.preprocess
            )
            return expert.logits(feats)

    result = run_stages(
        choice, s.lpp_fusion, stage1, np.arange(C), seen_scores, seen, expert.class_ids,
        expert_logits,
    )  # fmt: skip
    return result, failed, choice


def _transclip(ws: Workspace, choice, X, stage1, seen_scores, seen):
    """Stage scores with TransCLIP over all classes: the shots (the head's training view) as
    support, the validation images choosing gamma; their features come from train.py's cache."""
    from pipeline.scores import apply_transclip

    env, C = ws.env, ws.classes.num_classes
    shots = ws.read_list(env.train_shots_list, "4-shot training")
    val = ws.read_list(env.val_list, "validation")
    aug = choice.lpp_views == "aug"
    flip = ("orig", "flip") if choice.flip_tta else ("orig",)
    tr, keep_tr = ws.list_views(shots, "train", ("aug",) if aug else flip)
    va, keep_va = ws.list_views(val, "val", flip)
    Xs = {
        b: combine_views(fs, not aug and choice.flip_tta, "aug" if aug else "orig")
        for b, fs in tr.items()
    }
    Xv = {b: combine_views(fs, choice.flip_tta) for b, fs in va.items()}
    ys, yv = shots.labels[keep_tr], val.labels[keep_va]
    ms, mv = np.isin(ys, seen), np.isin(yv, seen)
    return apply_transclip(
        choice.transclip, X, ws.text_classifiers("templates"),
        ({b: v[ms] for b, v in Xs.items()}, ys[ms]), ({b: v[mv] for b, v in Xv.items()}, yv[mv]),
        stage1, seen_scores, np.arange(C), seen, ws.settings.inmap_fusion,
    )  # fmt: skip


def predict(env: Env, settings: Settings) -> Path:
    """Run the cascade on every image of TEST_DIR and write result.txt (validated)."""
    ws = Workspace.open(env, settings)
    names = list_test_images(env.test_dir)
    paths = [str(Path(env.test_dir) / n) for n in names]
    log.info("%d test images in %s", len(names), env.test_dir)
    result, failed, choice = cascade(ws, paths, "test")
    write_result(env.result_path, names, result.top5)
    problems = validate_result(env.result_path, names, ws.classes.num_classes)
    if problems:
        raise RuntimeError(f"{env.result_path}: invalid submission: " + "; ".join(problems[:5]))
    reason = "undecodable image: predicted from a grey placeholder"
    write_warnings(env.warnings_path, [(names[i], reason) for i in failed])
    if failed:
        log.warning("%d test images could not be decoded; see %s", len(failed), env.warnings_path)
    log.info("answered by stage: %s", stage_counts(result))
    log.info("timings: %s", {k: round(v, 2) for k, v in ws.timings.items()})
    # Which stage answered each image: for inspection, never read by the pipeline.
    rows = [
        f"{n}\t{STAGE_NAMES[st]}\t{' '.join(map(str, t5))}"
        for n, st, t5 in zip(names, result.stage, result.top5)
    ]
    write_text_atomic(
        env.out_dir / "predictions.tsv", "name\tstage\ttop5\n" + "\n".join(rows) + "\n"
    )
    summary = {
        "images": len(names),
        "undecodable": len(failed),
        "stages": stage_counts(result),
        "choice": choice.as_dict(),
        "clip_loaded": {name: bb.loaded for name, bb in ws.backbones.items()},
        **ws.record(),
    }
    write_text_atomic(env.out_dir / "test.json", json.dumps(summary, indent=1) + "\n")
    return env.result_path
