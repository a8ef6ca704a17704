"""``test.py --eval``: accuracy and routing of the trained cascade on the labelled validation list,
and the report in ``$OUT_DIR/report/`` (Markdown, PNG plots) with train.py's predicted board
score and candidates."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from models import weights
from pipeline.cascade import EXPERT, STAGE_NAMES, UNSEEN, topk
from pipeline.env import Env
from pipeline.predict import cascade
from pipeline.scores import head_scores
from pipeline.settings import Settings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
# Jittor's kernels switch the CPU to flush-denormals-to-zero; numpy then warns, once per float
# type, when matplotlib asks for the type's limits. Harmless for plots.
warnings.filterwarnings("ignore", message="The value of the smallest subnormal")


def accuracy(top5: np.ndarray, labels: np.ndarray) -> dict:
    """{"n", "top1", "top5"}: top-1 and top-5 accuracy (NaN on an empty set)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {"n": 0, "top1": float("nan"), "top5": float("nan")}
    hits = np.asarray(top5) == labels[:, None]  # [n, 5]
    top1, in_top5 = float(hits[:, 0].mean()), float(hits.any(1).mean())
    return {"n": int(labels.size), "top1": top1, "top5": in_top5}


def routing(stage: np.ndarray, labels: np.ndarray, stage_id: int, owned_ids) -> dict:
    """{"routed", "owned", "precision", "recall"} of one stage over the classes it owns, as the
    report defines them."""
    routed = np.asarray(stage) == stage_id
    owned = np.isin(labels, np.asarray(owned_ids))
    both, n_routed, n_owned = int((routed & owned).sum()), int(routed.sum()), int(owned.sum())
    precision = both / n_routed if n_routed else float("nan")
    recall = both / n_owned if n_owned else float("nan")
    return {"routed": n_routed, "owned": n_owned, "precision": precision, "recall": recall}


def cascade_metrics(
    top5: np.ndarray,
    stage: np.ndarray,
    labels: np.ndarray,
    domains_of_labels: np.ndarray,
    unseen_ids,
    expert_ids,
) -> dict:
    """All metrics of a cascade run as a JSON-ready dict."""
    top5, stage, labels = np.asarray(top5), np.asarray(stage), np.asarray(labels)
    domains = np.asarray(domains_of_labels)

    def acc(rows: np.ndarray) -> dict:
        return accuracy(top5[rows], labels[rows])

    return {
        "overall": accuracy(top5, labels),
        "per_domain": {str(d): acc(domains == d) for d in np.unique(domains)},
        "per_stage": {name: acc(stage == i) for i, name in enumerate(STAGE_NAMES)},
        "routing": {
            "unseen": routing(stage, labels, UNSEEN, unseen_ids),
            "expert": routing(stage, labels, EXPERT, expert_ids),
        },
    }


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _accuracy_table(first: str, count: str, groups: dict[str, dict]) -> str:
    rows = [[k, v["n"], v["top1"], v["top5"]] for k, v in groups.items()]
    return _table([first, count, "top-1", "top-5"], rows)


def _plots(out: Path, groups: dict[str, dict], timings: dict[str, float]) -> None:
    """per_domain.png (top-1 and top-5 of ``groups``) and timings.png (seconds per stage)."""
    from matplotlib.figure import Figure  # no pyplot: no backend, no global figure state

    names = list(groups)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(4, 1.2 * len(names) + 2), 3.2), layout="tight")
    ax = fig.subplots()
    for i, key in enumerate(("top1", "top5")):
        ax.bar(x + (i - 0.5) * 0.4, [np.nan_to_num(groups[n][key]) for n in names], 0.4, label=key)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy per domain")
    ax.legend(loc="lower right")
    fig2 = Figure(figsize=(6, 0.4 * len(timings) + 1.2), layout="tight")
    ax = fig2.subplots()
    ax.barh(list(timings), list(timings.values()))
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("wall time per stage")
    fig.savefig(out / "per_domain.png", dpi=100)
    fig2.savefig(out / "timings.png", dpi=100)


def _board_section(board: dict) -> list[str]:
    p, n_test = board["predicted_top1"], board["n_test"] or "unknown number of"
    md = ["## Predicted board score", ""]
    md.append(
        f"Board-shaped validation ({len(board['folds'])} folds; unseen share "
        f"{board['unseen_share']:.2f}; {n_test} test images): predicted top-1 "
        f"**{_fmt(p['value'])}**, 95% interval {_fmt(p['low'])} - {_fmt(p['high'])}."
    )
    md += ["", "Chosen: " + ", ".join(f"{k} = {v}" for k, v in board["choice"].items()) + ".", ""]
    b = board["breakdown"]
    md.append(_table(["domain", "predicted top-1"], [[k, v] for k, v in b["per_domain"].items()]))
    rows = [[k, v["share"], v["top1"]] for k, v in b["per_stage"].items()]
    md += ["", _table(["stage", "share of images", "predicted top-1"], rows)]
    if board["candidates"]:
        md += ["", "## Candidates", ""]
        md += ["Each open choice in turn, from the challenge solution's: an option replaces the"]
        md += ["current one only when its gain exceeds the gain's standard error.", ""]
        rows = []
        for c in board["candidates"]:
            e, chosen = c["estimate"], " (chosen)" if c.get("chosen") else ""
            interval = f"{_fmt(e['low'])} - {_fmt(e['high'])}"
            gain = f"{c['gain']:+.4f} +- {c['se']:.4f}"
            rows.append([c["choice"], f"{c['option']}{chosen}", e["value"], interval, gain])
        md.append(_table(["choice", "option", "predicted top-1", "95% interval", "gain"], rows))
    return md


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict,
    timings: dict[str, float],
    params: dict[str, int],
    board: dict | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``report.md``, ``metrics.json`` and PNG plots into ``out_dir``; returns report.md.
    metrics: :func:`cascade_metrics` (optionally with "seen_heads": head -> accuracy); timings:
    stage -> seconds; params: model -> parameter count; board: train.py's heads/cascade.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    o = metrics["overall"]
    md = ["# Evaluation report", ""]
    if board:
        md += _board_section(board) + [""]
    md += ["## Validation images", ""]
    md += [f"Validation images: {o['n']}. Top-1 **{_fmt(o['top1'])}**, top-5 {_fmt(o['top5'])}."]
    md += ["", "### Per domain", "", _accuracy_table("domain", "images", metrics["per_domain"])]
    md += ["", "![per domain](per_domain.png)", "", "### Per stage", ""]
    md.append(_accuracy_table("stage", "images answered", metrics["per_stage"]))
    md += ["", "Routing (precision: routed images whose true class the stage owns; recall: images"]
    md += ["of owned classes that were routed there):", ""]
    routing = metrics["routing"].items()
    rows = [[s, v["routed"], v["owned"], v["precision"], v["recall"]] for s, v in routing]
    md.append(_table(["stage", "routed", "owned", "precision", "recall"], rows))
    if metrics.get("seen_heads"):
        md += ["", "### Seen-class heads", ""]
        md += ["Each head alone on the validation images of the seen classes (no routing):", ""]
        md.append(_accuracy_table("head", "images", metrics["seen_heads"]))
    md += ["", "## Timings", ""]
    md.append(_table(["stage", "seconds"], [[k, round(v, 3)] for k, v in timings.items()]))
    md += ["", "![timings](timings.png)", "", "## Parameters", ""]
    total = sum(params.values())
    md.append(_table(["model", "parameters"], [[k, f"{v:,}"] for k, v in params.items()]))
    md += ["", f"Total parameters loaded: **{total:,}** ({total / 1e6:.1f} M)."]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    _plots(out, metrics["per_domain"], timings)
    everything = {"metrics": metrics, "timings": timings, "params": params, "board": board}
    (out / "metrics.json").write_text(json.dumps(everything, indent=2, default=float))
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


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

    ws = Workspace.open(env, settings)
    val = ws.read_list(env.val_list, "validation")
    paths = val.resolve(env.data_dir)
    result, failed, choice, features = cascade(ws, paths, "val")
    keep = np.setdiff1d(np.arange(len(val)), failed)
    y = val.labels[keep]
    _, models, seen, record = ws.load_cascade()
    expert = ws.load_expert()
    unseen = np.setdiff1d(np.arange(len(ws.classes)), seen)
    expert_ids = expert.class_ids if expert is not None else np.zeros(0, np.int64)
    domains = np.asarray(ws.classes.domains)[y]
    metrics = cascade_metrics(result.top5[keep], result.stage[keep], y, domains, unseen, expert_ids)
    # Each seen-class head alone, on the validation images of seen classes (no routing).
    mask = np.isin(y, seen)
    X = {b: x[keep][mask] for b, x in features.items()}
    T = ws.text_classifiers("templates")
    scores = {f"zero-shot {b}": zero_shot_logits(X[b], T[b][:, seen]) for b in X}
    if choice.seen_head != "amu":
        scores[f"{choice.seen_head} (chosen head)"] = head_scores(models, X, settings.lpp_fusion)
    metrics["seen_heads"] = {k: accuracy(topk(s, 5, seen), y[mask]) for k, s in scores.items()}
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
    return path
