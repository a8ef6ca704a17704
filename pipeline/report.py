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


def _routing_table(routing: dict[str, dict]) -> str:
    return _table(
        ["stage", "routed", "owned", "precision", "recall"],
        [[s, v["routed"], v["owned"], v["precision"], v["recall"]] for s, v in routing.items()],
    )


def _bar_plot(path: Path, groups: dict[str, dict], title: str, keys=("top1", "top5")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.2))
    for i, key in enumerate(keys):
        vals = [np.nan_to_num(groups[n][key]) for n in names]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=key)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _timing_plot(path: Path, timings: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timings)
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [timings[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("wall time per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict,
    timings: dict[str, float],
    params: dict[str, int],
    variants: dict[str, dict] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``report.md``, ``metrics.json`` and PNG plots into ``out_dir``; returns report.md.

    metrics: the dict of pipeline.metrics.evaluate (optionally with a "pseudo_unseen" entry of
    the same shape); timings: stage -> seconds; params: model -> parameter count;
    variants: name -> {"top1": .., "top5": ..} for alternative stage-1 methods.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    o = metrics["overall"]
    md = ["# Evaluation report", ""]
    md += [f"Validation images: {o['n']}. Top-1 **{_fmt(o['top1'])}**, top-5 {_fmt(o['top5'])}."]
    md += [""]
    md += ["## Per domain", ""]
    md.append(
        _table(
            ["domain", "images", "top-1", "top-5"],
            [[d, v["n"], v["top1"], v["top5"]] for d, v in metrics["per_domain"].items()],
        )
    )
    md += ["", "![per domain](per_domain.png)", "", "## Per stage", ""]
    md.append(
        _table(
            ["stage", "images answered", "top-1", "top-5"],
            [[s, v["n"], v["top1"], v["top5"]] for s, v in metrics["per_stage"].items()],
        )
    )
    md += ["", "Routing (precision: routed images whose true class the stage owns; recall: images"]
    md += ["of owned classes that were routed there):", ""]
    md.append(_routing_table(metrics["routing"]))
    _bar_plot(out / "per_domain.png", metrics["per_domain"], "accuracy per domain")
    if "pseudo_unseen" in metrics:
        p = metrics["pseudo_unseen"]
        md += ["", "## Pseudo-unseen protocol", ""]
        md += [
            "Some seen classes were held out of training and treated as unseen; routing to stage 1",
            "is measured on them.",
            "",
        ]
        md.append(_routing_table(p["routing"]))
        po = p["overall"]
        md += ["", f"Overall top-1 {_fmt(po['top1'])}, top-5 {_fmt(po['top5'])}."]
    if metrics.get("seen_heads"):
        md += ["", "## Seen-class heads", ""]
        md += ["Each head alone on the validation images of the seen classes (no routing):", ""]
        md.append(
            _table(
                ["head", "images", "top-1", "top-5"],
                [[k, v["n"], v["top1"], v["top5"]] for k, v in metrics["seen_heads"].items()],
            )
        )
    if variants:
        md += ["", "## Stage-1 variants", ""]
        md.append(
            _table(
                ["variant", "top-1", "top-5", "unseen recall", "unseen precision"],
                [
                    [
                        k,
                        v.get("top1", float("nan")),
                        v.get("top5", float("nan")),
                        v.get("unseen_recall", float("nan")),
                        v.get("unseen_precision", float("nan")),
                    ]
                    for k, v in variants.items()
                ],
            )
        )
        _bar_plot(out / "variants.png", variants, "stage-1 variants")
        md += ["", "![variants](variants.png)"]
    md += ["", "## Timings", ""]
    md.append(_table(["stage", "seconds"], [[k, round(v, 3)] for k, v in timings.items()]))
    _timing_plot(out / "timings.png", timings)
    md += ["", "![timings](timings.png)", "", "## Parameters", ""]
    total = sum(params.values())
    md.append(_table(["model", "parameters"], [[k, f"{v:,}"] for k, v in params.items()]))
    md += ["", f"Total parameters loaded: **{total:,}** ({total / 1e6:.1f} M)."]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (out / "metrics.json").write_text(
        json.dumps(
            {"metrics": metrics, "timings": timings, "params": params, "variants": variants},
            indent=2,
            default=float,
        )
    )
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
