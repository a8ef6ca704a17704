"""``test.py --eval``: the report in ``$OUT_DIR/report/`` (pipeline.report) of train.py's predicted
board score and candidates, and of the trained cascade and its seen-class heads on validation."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from models import weights
from pipeline.backbones import combine_views
from pipeline.cascade import topk
from pipeline.env import Env
from pipeline.metrics import accuracy, cascade_metrics
from pipeline.predict import cascade
from pipeline.scores import head_scores
from pipeline.settings import Settings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def parameter_counts(ws: Workspace, expert) -> dict[str, int]:
    """Parameters of every model the cascade loads (CLIP counted whole: both towers)."""
    counts = {f"CLIP {name}": bb.num_parameters() for name, bb in ws.backbones.items()}
    for path in sorted(ws.heads_dir.glob("*.safetensors")):
        if not path.name.startswith("text_"):
            arrays, _ = weights.load(path)
            counts[f"head {path.stem}"] = int(sum(a.size for a in arrays.values()))
    if expert is not None:
        counts["ConvNeXt-V2 expert"] = ws.convnext.num_parameters() + expert.num_parameters()
    return counts


def evaluate(env: Env, settings: Settings) -> Path:
    """The cascade on the labelled validation split; writes $OUT_DIR/report/report.md."""
    from fewshot.zeroshot import zero_shot_logits
    from pipeline.report import write_report

    ws = Workspace.open(env, settings)
    val = ws.read_list(env.val_list, "validation")
    paths = val.resolve(env.data_dir)
    result, failed, choice = cascade(ws, paths, "val")
    keep = np.setdiff1d(np.arange(len(val)), failed)
    y = val.labels[keep]
    _, models, seen, record = ws.load_cascade()
    expert = ws.load_expert()
    unseen = np.setdiff1d(np.arange(ws.classes.num_classes), seen)
    expert_ids = expert.class_ids if expert is not None else np.zeros(0, np.int64)
    domains = np.asarray(ws.classes.domains)[y]
    metrics = cascade_metrics(result.top5[keep], result.stage[keep], y, domains, unseen, expert_ids)
    # Each seen-class head alone, on the validation images (no routing).
    views = ("orig", "flip") if choice.flip_tta else ("orig",)
    sets, _ = ws.clip_views(paths, "val", views)  # the cascade's features, from the cache
    X = {b: combine_views(fs, choice.flip_tta)[keep] for b, fs in sets.items()}
    T = ws.text_classifiers("templates")
    mask = np.isin(y, seen)

    def acc(scores: np.ndarray) -> dict:
        return asdict(accuracy(topk(scores, 5, seen), y[mask]))

    heads = {f"zero-shot {b}": acc(zero_shot_logits(X[b][mask], T[b][:, seen])) for b in X}
    if choice.seen_head != "amu":
        scores = head_scores(models, {b: v[mask] for b, v in X.items()}, settings.lpp_fusion)
        heads[f"{choice.seen_head} (chosen head)"] = acc(scores)
    metrics["seen_heads"] = heads
    notes = [
        "The heads chose their epochs on these validation images, so the plain validation "
        "above is optimistic; the board-shaped prediction scores other images than those.",
        f"Device: {ws.record()['device']['device']}.",
    ]
    out = env.out_dir / "report"
    counts = parameter_counts(ws, expert)
    path = write_report(out, metrics, dict(ws.timings), counts, board=record, notes=notes)
    o, p = metrics["overall"], record["predicted_top1"]
    log.info("validation top-1 %.4f top-5 %.4f (%d images)", o["top1"], o["top5"], o["n"])
    log.info("predicted board top-1 %.4f (%.4f-%.4f)", p["value"], p["low"], p["high"])
    log.info("report: %s", path)
    (out / "cascade.json").write_text(json.dumps(record, indent=1) + "\n")
    return path
