"""test.py's work: the cascade on the test images (-> result.txt) or on the labelled validation
split (-> an evaluation report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models import weights
from pipeline import stages
from pipeline.backbones import backbone_features
from pipeline.cascade import (
    EXPERT,
    SEEN,
    STAGE_NAMES,
    UNSEEN,
    CascadeResult,
    run_cascade,
    topk,
)
from pipeline.config import Config
from pipeline.fileio import write_text_atomic
from pipeline.heads import head_path, load_head
from pipeline.lists import list_test_images
from pipeline.metrics import evaluate as evaluate_metrics
from pipeline.settings import Settings
from pipeline.submission import validate_result, write_result, write_warnings
from pipeline.training import Workspace, read_pseudo_unseen

log = logging.getLogger(__name__)


def _load_expert(ws: Workspace):
    from pipeline.expert import INFO_FILE, DogExpert

    if not ws.settings.expert_domain:
        return None
    if not (ws.expert_dir / INFO_FILE).is_file():
        log.warning("no trained expert in %s: stage 3 is skipped", ws.expert_dir)
        return None
    with ws.timed("load expert"):
        return DogExpert.load(ws.expert_dir, ws.cfg.convnext)


def cascade(
    ws: Workspace,
    paths: list[str],
    X: dict[str, np.ndarray],
    T: dict[str, np.ndarray],
    probes: dict[str, Any],
    seen: np.ndarray,
    expert,
    label: str,
) -> CascadeResult:
    """All stages on the images ``paths`` with CLIP features X; the expert encodes only the
    images routed to it (through the feature cache)."""
    s = ws.settings
    n, C = len(paths), ws.classes.num_classes
    unseen = np.setdiff1d(np.arange(C), seen)
    if s.unseen_stage and unseen.size:
        name, variant, params = stages.stage1_choice(ws)
        log.info("stage 1: InMaP %s %s on %d images", variant, params or "", n)
        with ws.timed("stage 1 (InMaP)"):
            all_scores = stages.stage1_scores(X, T, variant, params, s.inmap_fusion)
    else:
        all_scores, unseen = np.zeros((n, C), np.float32), np.zeros(0, np.int64)
    with ws.timed("stage 2 (LP++)"):
        seen_scores = stages.stage2_scores(X, probes, s.lpp_fusion)
    result = run_cascade(all_scores, unseen, seen_scores, seen)
    if expert is None:
        return result
    # Under the pseudo-unseen protocol some expert classes may be held out: it ranks the rest.
    keep = np.isin(expert.class_ids, seen)
    expert_ids = expert.class_ids[keep]
    routed = np.nonzero((result.stage == SEEN) & np.isin(result.top1, expert_ids))[0]
    expert_scores = np.zeros((n, expert.num_classes), np.float32)
    if routed.size:
        with ws.timed("stage 3 (expert)"):
            fs = ws.cache.get_or_compute(
                expert.key_parts(),
                [paths[i] for i in routed],
                expert.encode,
                expert.preprocess,
                batch_size=max(1, ws.cfg.batch_size // 4),
                workers=ws.cfg.workers,
                label=f"{label}-expert",
            )
            expert_scores[routed] = expert.logits(fs["orig"])
    return run_cascade(all_scores, unseen, seen_scores, seen, expert_scores[:, keep], expert_ids)


def _stage_counts(result: CascadeResult) -> dict[str, int]:
    return {name: int((result.stage == i).sum()) for i, name in enumerate(STAGE_NAMES)}


def predict(cfg: Config, settings: Settings) -> Path:
    """Run the cascade on every image of TEST_DIR and write result.txt (validated)."""
    ws = Workspace.open(cfg, settings)
    names = list_test_images(cfg.test_dir)
    paths = [str(Path(cfg.test_dir) / n) for n in names]
    log.info("%d test images in %s", len(names), cfg.test_dir)
    T = ws.text_classifiers()
    with ws.timed("features test"):
        X, failed = backbone_features(
            ws.backbones,
            paths,
            "test",
            flip_tta=settings.flip_tta,
            batch_size=cfg.batch_size,
            workers=cfg.workers,
        )
    probes, seen = stages.load_probes(ws)
    result = cascade(ws, paths, X, T, probes, seen, _load_expert(ws), "test")
    write_result(cfg.result_path, names, result.top5)
    problems = validate_result(cfg.result_path, names, ws.classes.num_classes)
    if problems:
        raise RuntimeError(f"{cfg.result_path}: invalid submission: " + "; ".join(problems[:5]))
    reason = "undecodable image: predicted from a grey placeholder"
    write_warnings(cfg.warnings_path, [(names[i], reason) for i in sorted(failed)])
    if failed:
        log.warning("%d test images could not be decoded; see %s", len(failed), cfg.warnings_path)
    log.info("answered by stage: %s", _stage_counts(result))
    log.info("timings: %s", {k: round(v, 2) for k, v in ws.timings.items()})
    # Which stage answered each image: for inspection, never read by the pipeline.
    rows = [
        f"{n}\t{STAGE_NAMES[st]}\t{' '.join(map(str, t5))}"
        for n, st, t5 in zip(names, result.stage, result.top5)
    ]
    write_text_atomic(
        cfg.out_dir / "predictions.tsv", "name\tstage\ttop5\n" + "\n".join(rows) + "\n"
    )
    summary = {
        "images": len(names),
        "undecodable": len(failed),
        "stages": _stage_counts(result),
        "clip_loaded": {name: bb.loaded for name, bb in ws.backbones.items()},
        "timings": ws.timings,
    }
    write_text_atomic(cfg.out_dir / "test.json", json.dumps(summary, indent=1) + "\n")
    return cfg.result_path


def compare_seen_heads(
    ws: Workspace,
    paths: list[str],
    X: dict[str, np.ndarray],
    y: np.ndarray,
    T: dict[str, np.ndarray],
    probes: dict[str, Any],
    seen: np.ndarray,
) -> dict[str, dict]:
    """Heads over the seen classes alone (no routing), on the validation images of seen classes:
    zero-shot CLIP per backbone, LP++ fused, and AMU-Tuning when it was trained."""
    from fewshot.amu import AMUConfig, AMUTuning
    from fewshot.zeroshot import zero_shot_logits
    from pipeline.metrics import accuracy

    mask = np.isin(y, seen)
    Xs = {k: v[mask] for k, v in X.items()}
    ys = y[mask]

    def acc(scores: np.ndarray) -> dict:
        return accuracy(topk(scores, 5, seen), ys).as_dict()

    out = {f"zero-shot {k}": acc(zero_shot_logits(Xs[k], T[k][:, seen])) for k in Xs}
    out["LP++ fused"] = acc(stages.stage2_scores(Xs, probes, ws.settings.lpp_fusion))
    name = ws.settings.backbones[0]
    amu_path = head_path(ws.heads_dir, "amu", name)
    if ws.settings.amu and amu_path.is_file():
        from pipeline.auxiliary import ConvNeXtFeatures

        arrays, info = load_head(amu_path, {"weights": ws.backbones[name].key_parts()["weights"]})
        if info["seen_ids"] == seen.tolist():
            amu = AMUTuning.from_state_dict(arrays, AMUConfig(**info["config"]))
            aux = ConvNeXtFeatures(ws.cfg.convnext, ws.cache, ws.settings.expert_eval_size)
            seen_paths = [p for p, k in zip(paths, mask) if k]
            A, _ = aux.features(seen_paths, "val", workers=ws.cfg.workers)
            out[f"AMU {name} + ConvNeXt-V2"] = acc(amu.logits(Xs[name], A))
    return out


def parameter_counts(ws: Workspace, expert) -> dict[str, int]:
    """Parameters of every model the cascade loads (CLIP counted whole: both towers)."""
    counts = {f"CLIP {name}": bb.num_parameters() for name, bb in ws.backbones.items()}
    for name in ws.backbones:
        p = head_path(ws.heads_dir, "lpp", name)
        if p.is_file():
            arrays, _ = weights.load(p)
            counts[f"LP++ {name}"] = int(sum(a.size for a in arrays.values()))
    if expert is not None:
        counts["ConvNeXt-V2 expert"] = int(expert.num_parameters())
    return counts


def evaluate(cfg: Config, settings: Settings) -> Path:
    """The cascade on the labelled validation split; writes $OUT_DIR/report/report.md."""
    from pipeline.report import write_report

    ws = Workspace.open(cfg, settings)
    val = ws.read_list(cfg.val_list, "validation")
    T = ws.text_classifiers()
    X, keep = ws.features(val, "val")
    y = val.labels[keep]
    paths = [val.resolve(cfg.data_dir)[i] for i in keep]
    domains = np.asarray(ws.classes.domains)[y]
    probes, seen = stages.load_probes(ws)
    expert = _load_expert(ws)
    unseen = np.setdiff1d(np.arange(ws.classes.num_classes), seen)
    expert_ids = expert.class_ids if expert is not None else np.zeros(0, np.int64)

    result = cascade(ws, paths, X, T, probes, seen, expert, "val")
    metrics = evaluate_metrics(result.top5, result.stage, y, domains, unseen, expert_ids)
    notes = [
        "The validation split holds only seen classes: the 'unseen' routing row counts seen "
        "images wrongly sent to stage 1. The pseudo-unseen protocol below measures real routing."
    ]
    variants = None
    pseudo = read_pseudo_unseen(cfg)
    if pseudo is not None:
        probes_p, seen_p = stages.load_probes(ws, "pseudo")
        unseen_p = np.setdiff1d(np.arange(ws.classes.num_classes), seen_p)
        r = cascade(ws, paths, X, T, probes_p, seen_p, expert, "val")
        metrics["pseudo_unseen"] = evaluate_metrics(
            r.top5, r.stage, y, domains, unseen_p, expert_ids
        )
        with ws.timed("stage-1 variants"):
            variants = stages.compare_stage1(ws, T, X, y, probes_p, seen_p)
        notes.append(
            f"Pseudo-unseen classes ({len(pseudo)}): "
            + ", ".join(ws.classes.names[c] for c in pseudo[:10])
            + (" ..." if len(pseudo) > 10 else "")
        )
    else:
        notes.append("Run process.py with --pseudo-unseen K to measure routing to stage 1.")
    name, variant, params = stages.stage1_choice(ws)
    notes.append(f"Stage 1 ran InMaP {name} ({variant}, {params or 'defaults'}).")
    metrics["seen_heads"] = compare_seen_heads(ws, paths, X, y, T, probes, seen)
    params_count = parameter_counts(ws, expert)
    path = write_report(
        cfg.out_dir / "report", metrics, dict(ws.timings), params_count, variants, notes
    )
    o = metrics["overall"]
    log.info("validation top-1 %.4f top-5 %.4f (%d images)", o["top1"], o["top5"], o["n"])
    log.info("report: %s", path)
    return path


__all__ = ["EXPERT", "SEEN", "UNSEEN", "cascade", "evaluate", "parameter_counts", "predict"]
