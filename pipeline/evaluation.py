"""``test.py --eval``: the cascade on the labelled validation split -> ``$OUT_DIR/report/``
(top-1/top-5 overall, per domain and per stage, routing quality, stage-1 variants under the
pseudo-unseen protocol, each seen-class head alone, timings and parameter count)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from models import weights
from pipeline import selection
from pipeline.cascade import topk
from pipeline.env import Env
from pipeline.heads import head_path, load_head
from pipeline.metrics import accuracy, cascade_metrics
from pipeline.scores import stage1_choice, stage2_scores
from pipeline.settings import Settings
from pipeline.split import read_pseudo_unseen
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


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
    from models.convnext import preprocess

    mask = np.isin(y, seen)
    Xs = {k: v[mask] for k, v in X.items()}
    ys = y[mask]

    def acc(scores: np.ndarray) -> dict:
        return accuracy(topk(scores, 5, seen), ys).as_dict()

    out = {f"zero-shot {k}": acc(zero_shot_logits(Xs[k], T[k][:, seen])) for k in Xs}
    out["LP++ fused"] = acc(stage2_scores(Xs, probes, ws.settings.lpp_fusion))
    name = ws.settings.backbones[0]
    amu_path = head_path(ws.heads_dir, "amu", name)
    if ws.settings.amu and amu_path.is_file():
        arrays, info = load_head(amu_path, ws.head_expect(name))
        if info["seen_ids"] == seen.tolist():
            amu = AMUTuning.from_state_dict(arrays, AMUConfig(**info["config"]))
            seen_paths = [p for p, k in zip(paths, mask) if k]
            pre = preprocess(ws.settings.expert_eval_size)
            A, _ = ws.convnext_features(seen_paths, "val", pre, normalize=True)
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
        counts["ConvNeXt-V2 expert"] = ws.convnext.num_parameters() + expert.num_parameters()
    return counts


def evaluate(env: Env, settings: Settings) -> Path:
    """The cascade on the labelled validation split; writes $OUT_DIR/report/report.md."""
    from pipeline.report import write_report

    ws = Workspace.open(env, settings)
    val = ws.read_list(env.val_list, "validation")
    T = ws.text_classifiers()
    X, keep = ws.list_features(val, "val")
    y = val.labels[keep]
    paths = [val.resolve(env.data_dir)[i] for i in keep]
    domains = np.asarray(ws.classes.domains)[y]
    probes, seen = ws.load_probes()
    with ws.timed("load expert"):
        expert = ws.load_expert()
    unseen = np.setdiff1d(np.arange(ws.classes.num_classes), seen)
    expert_ids = expert.class_ids if expert is not None else np.zeros(0, np.int64)

    result = ws.run_stages(paths, X, T, probes, seen, expert, "val")
    metrics = cascade_metrics(result.top5, result.stage, y, domains, unseen, expert_ids)
    notes = [
        "The validation split holds only seen classes: the 'unseen' routing row counts seen "
        "images wrongly sent to stage 1. The pseudo-unseen protocol below measures real routing."
    ]
    variants = None
    pseudo = read_pseudo_unseen(env.lists_dir)
    if pseudo is not None:
        probes_p, seen_p = ws.load_probes("pseudo")
        unseen_p = np.setdiff1d(np.arange(ws.classes.num_classes), seen_p)
        r = ws.run_stages(paths, X, T, probes_p, seen_p, expert, "val")
        metrics["pseudo_unseen"] = cascade_metrics(
            r.top5, r.stage, y, domains, unseen_p, expert_ids
        )
        with ws.timed("stage-1 variants"):
            variants = selection.compare_stage1(
                settings, ws.classes.num_classes, T, X, y, probes_p, seen_p
            )
        notes.append(
            f"Pseudo-unseen classes ({len(pseudo)}): "
            + ", ".join(ws.classes.names[c] for c in pseudo[:10])
            + (" ..." if len(pseudo) > 10 else "")
        )
    else:
        notes.append("Run process.py with --pseudo-unseen K to measure routing to stage 1.")
    name, variant, params = stage1_choice(settings, ws.heads_dir)
    notes.append(f"Stage 1 ran InMaP {name} ({variant}, {params or 'defaults'}).")
    device = ws.record()["device"]
    cuda = device["cuda"] or {}
    libs = ", ".join(f"{k} {'yes' if cuda.get(k) else 'no'}" for k in ("cublas", "cudnn", "cub"))
    notes.append(f"Device: {device['device']}" + (f" ({libs})" if cuda else "") + ".")
    metrics["seen_heads"] = compare_seen_heads(ws, paths, X, y, T, probes, seen)
    params_count = parameter_counts(ws, expert)
    path = write_report(
        env.out_dir / "report", metrics, dict(ws.timings), params_count, variants, notes
    )
    o = metrics["overall"]
    log.info("validation top-1 %.4f top-5 %.4f (%d images)", o["top1"], o["top5"], o["n"])
    log.info("report: %s", path)
    return path
