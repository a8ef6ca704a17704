"""The evaluation report: Markdown with PNG plots under ``$OUT_DIR/report/``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

# Jittor's kernels switch the CPU to flush-denormals-to-zero; numpy then warns, once per float
# type, when matplotlib asks for the type's limits. Harmless for plots.
warnings.filterwarnings("ignore", message="The value of the smallest subnormal")


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if np.isnan(x) else f"{x:.4f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _accuracy_table(first: str, count: str, groups: dict[str, dict]) -> str:
    rows = [[k, v["n"], v["top1"], v["top5"]] for k, v in groups.items()]
    return _table([first, count, "top-1", "top-5"], rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _bar_plot(path: Path, groups: dict[str, dict], title: str) -> None:
    names = list(groups)
    x = np.arange(len(names))
    fig, ax = _pyplot().subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.2))
    for i, key in enumerate(("top1", "top5")):
        ax.bar(x + (i - 0.5) * 0.4, [np.nan_to_num(groups[n][key]) for n in names], 0.4, label=key)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    _save(fig, path)


def _timing_plot(path: Path, timings: dict[str, float]) -> None:
    names = list(timings)
    fig, ax = _pyplot().subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [timings[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("wall time per stage")
    _save(fig, path)


def _board_section(board: dict) -> list[str]:
    p = board["predicted_top1"]
    md = ["## Predicted board score", ""]
    md += [
        f"Board-shaped validation ({len(board['folds'])} folds; unseen share "
        f"{board['unseen_share']:.2f}; {board['n_test'] or 'unknown number of'} test images): "
        f"predicted top-1 **{_fmt(p['value'])}**, 95% interval {_fmt(p['low'])} - "
        f"{_fmt(p['high'])}.",
        "",
        "Chosen: " + ", ".join(f"{k} = {v}" for k, v in board["choice"].items()) + ".",
        "",
    ]
    b = board["breakdown"]
    md.append(_table(["domain", "predicted top-1"], [[k, v] for k, v in b["per_domain"].items()]))
    stages = b["per_stage"].items()
    rows = [[k, v["share"], float("nan") if v["top1"] is None else v["top1"]] for k, v in stages]
    md += ["", _table(["stage", "share of images", "predicted top-1"], rows)]
    if board["candidates"]:
        md += ["", "## Candidates", ""]
        md += [
            "Each open choice in turn, from the challenge solution's: an option replaces the",
            "current one only when its gain exceeds the gain's standard error.",
            "",
        ]
        rows = [
            [
                c["choice"],
                str(c["option"]) + (" (chosen)" if c.get("chosen") else ""),
                c["estimate"]["value"],
                f"{_fmt(c['estimate']['low'])} - {_fmt(c['estimate']['high'])}",
                f"{c['gain']:+.4f} +- {c['se']:.4f}",
            ]
            for c in board["candidates"]
        ]
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

    metrics: the dict of pipeline.metrics.cascade_metrics on the validation images (optionally
    with "seen_heads": head -> accuracy); timings: stage -> seconds; params: model -> parameter
    count; board: train.py's heads/cascade.json (predicted board score, candidates).
    """
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
    _bar_plot(out / "per_domain.png", metrics["per_domain"], "accuracy per domain")
    if metrics.get("seen_heads"):
        md += ["", "### Seen-class heads", ""]
        md += ["Each head alone on the validation images of the seen classes (no routing):", ""]
        md.append(_accuracy_table("head", "images", metrics["seen_heads"]))
    md += ["", "## Timings", ""]
    md.append(_table(["stage", "seconds"], [[k, round(v, 3)] for k, v in timings.items()]))
    _timing_plot(out / "timings.png", timings)
    md += ["", "![timings](timings.png)", "", "## Parameters", ""]
    total = sum(params.values())
    md.append(_table(["model", "parameters"], [[k, f"{v:,}"] for k, v in params.items()]))
    md += ["", f"Total parameters loaded: **{total:,}** ({total / 1e6:.1f} M)."]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    everything = {"metrics": metrics, "timings": timings, "params": params, "board": board}
    (out / "metrics.json").write_text(json.dumps(everything, indent=2, default=float))
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
