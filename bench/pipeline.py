"""process.py, train.py and test.py end to end with full-size random weights on a generated photo
dataset: wall time per step, model loads and peak memory as the scripts record them in
``train.json`` and ``test.json``, GPU memory peak, and for a subset (every ``--class-step``-th
class) the extrapolation to the challenge's sizes (docs/PERFORMANCE.md, sections 3 and 4).

    python -m bench.pipeline --test-runs 2 --json out/bench/pipeline_subset.json   # CPU: 10 min
    python -m bench.pipeline --full --test-runs 2 --json out/bench/pipeline_full.json  # GPU

The scripts inherit the environment (WORKERS, BATCH_SIZE). Extrapolation (docs/PERFORMANCE.md,
section 3): each step that grows with the images, classes or expert views, model loads taken out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench as B

FULL = {"classes": 403, "seen": 374, "dogs": 130, "shots": 4, "val": 20, "test": 4305, "views": 10}


def subset_classes(src: Path, dst: Path, step: int) -> None:
    """Every ``step``-th class of the list, ids renumbered 0..K-1 (the domains' shares kept)."""
    lines = [ln.rsplit(" ", 1)[0] for ln in src.read_text().splitlines() if ln.strip()]
    dst.write_text("\n".join(f"{name} {i}" for i, name in enumerate(lines[::step])) + "\n")


def run(script: str, env: dict, log: Path) -> dict:
    """One script as users run it; its wall time, load average and GPU memory peak."""
    before = B.load_average()
    with B.GpuMemory() as gpu, open(log, "w") as f:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, script], cwd=B.ROOT, env=env, stdout=f, stderr=f)
        wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{script} failed (exit {r.returncode}); see {log}")
    return {"wall_s": wall, "load": f"{before:.1f}-{B.load_average():.1f}", "gpu_mb": gpu.used_mb}


def units(step: str, sizes: dict, rec: dict) -> dict[str, tuple[float, float, str]]:
    """Timing key -> (count here, count at the challenge's size, unit) of the steps that grow."""
    s, f = sizes, FULL
    if step == "train":
        return {
            "text classifiers": (s["classes"], f["classes"], "classes"),
            "features train": (s["seen"] * s["shots"], f["seen"] * f["shots"], "images"),
            "features val": (s["seen"] * s["val"], f["seen"] * f["val"], "images"),
            "features val-expert convnext": (s["dogs"] * s["val"], f["dogs"] * f["val"], "images"),
            "expert": (s["dogs"] * s["shots"] * s["views"], f["dogs"] * f["shots"] * f["views"],
                       "views of the shots"),
        }  # fmt: skip
    routed = rec.get("stages", {}).get("expert", 0)
    full_routed = round(f["test"] * f["dogs"] / f["classes"])
    return {
        "features test": (s["test"], f["test"], "images"),
        "stage 3 (expert)": (routed, full_routed, "routed images"),
        "features test-expert convnext": (routed, full_routed, "routed images"),
    }


# Steps timed inside another one: child -> parent.
NESTED = {
    "features val-expert convnext": "expert",
    "features test-expert convnext": "stage 3 (expert)",
}


def summarise(name: str, rec: dict, sizes: dict, extrapolate: bool) -> list[dict]:
    """One row per recorded step (nested ones under their parent), then the whole script:
    measured, and with every growing step's own time (model loads and nested steps taken out)
    scaled to the challenge's count."""
    timings, loads_in = rec["timings"], rec.get("model_load_seconds_in_steps", {})
    grow = units(name.split(" ")[0], sizes, rec)
    kids = {k: [c for c, p in NESTED.items() if p == k and c in timings] for k in timings}
    own = {k: timings[k] - sum(timings[c] for c in kids[k]) for k in timings}
    own_load = {
        k: loads_in.get(k, 0.0) - sum(loads_in.get(c, 0.0) for c in kids[k]) for k in timings
    }
    scaled = {}
    for k in timings:
        here, full, _ = grow.get(k, (0, 0, ""))
        rate = full / here if here and extrapolate else 1.0
        scaled[k] = own_load[k] + (own[k] - own_load[k]) * rate
    order = [k for k in timings if NESTED.get(k) not in timings]
    order = [x for k in order for x in (k, *kids[k])]
    rows = []
    for k in order:
        row = {"script": name, "step": f"  of which {k}" if NESTED.get(k) in timings else k,
               "seconds": timings[k], "model loads s": loads_in.get(k, 0.0)}  # fmt: skip
        if k in grow and grow[k][0]:
            here, full, unit = grow[k]
            row.update({"count": f"{here:g} {unit}", "s per unit": (own[k] - own_load[k]) / here,
                        "challenge count": full})  # fmt: skip
        if extrapolate:
            row["extrapolated s"] = scaled[k] + sum(scaled[c] for c in kids[k])
        rows.append(row)
    total = rec["wall_s"] + sum(scaled[k] - own[k] for k in timings)
    note = f"peak RSS {rec['peak_rss_mb']:.0f} MiB, load {rec['load']}"
    if rec["gpu_mb"] == rec["gpu_mb"]:  # not NaN: nvidia-smi was there
        note += f", GPU peak {rec['gpu_mb']:.0f} MiB"
    rows.append({"script": name, "step": "whole script (start-up included)",
                 "seconds": rec["wall_s"], "extrapolated s": total if extrapolate else None,
                 "note": note})  # fmt: skip
    return rows


def main() -> None:
    ap = B.parser(__doc__)
    ap.add_argument("--full", action="store_true", help="the challenge's sizes (for a GPU)")
    ap.add_argument("--size", choices=["full", "demo"], default="full", help="weights")
    ap.add_argument("--class-step", type=int, default=10, help="subset: every k-th class")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--val-per-class", type=int, default=2)
    ap.add_argument("--test-images", type=int, default=300)
    ap.add_argument("--expert-views", type=int, default=2, help="(full: 10)")
    ap.add_argument("--lpp-epochs", type=int, default=300)
    ap.add_argument("--set", action="append", default=[], help="a settings line, e.g. 'amu: true'")
    ap.add_argument("--test-runs", type=int, default=1, help="2: again, kernels compiled")
    ap.add_argument("--out", default="out/bench/pipeline")
    ap.add_argument("--weights-dir", default=B.WEIGHTS_DIR)
    args = ap.parse_args()
    if args.full:
        args.class_step, args.val_per_class = 1, FULL["val"]
        args.test_images, args.expert_views = FULL["test"], FULL["views"]
    files = B.weights(args.weights_dir, args.size)
    from pipeline.lists import read_class_list
    from pipeline.synthetic import photo_dataset

    out = Path(args.out).resolve() / ("full" if args.full else f"step{args.class_step}")
    out.mkdir(parents=True, exist_ok=True)
    classes_file = out / "classes.txt"
    subset_classes(B.ROOT / "data" / "classes_b.txt", classes_file, args.class_step)
    data = out / f"data-s{args.shots}-v{args.val_per_class}-t{args.test_images}"
    photo_dataset(data, classes_file, train_per_class=args.shots + args.val_per_class,
                  test_images=args.test_images)  # fmt: skip
    domains = read_class_list(classes_file).domains
    sizes = dict(
        classes=len(domains),
        seen=sum(d != "Stanford-Cars" for d in domains),
        dogs=sum(d == "Thu-dog" for d in domains),
        shots=args.shots,
        val=args.val_per_class,
        test=args.test_images,
        views=args.expert_views,
    )
    settings = out / "settings.yaml"
    settings.write_text(f"expert_views: {args.expert_views}\nlpp_epochs: {args.lpp_epochs}\n"
                        "stage1: challenge\n" + "".join(f"{x}\n" for x in args.set))  # fmt: skip
    run_out = out / "run"
    shutil.rmtree(run_out, ignore_errors=True)
    env = dict(os.environ, DATA_DIR=str(data), OUT_DIR=str(run_out), SETTINGS=str(settings),
               CLIP_VIT=str(files["vit"].resolve()), CLIP_RN=str(files["rn"].resolve()),
               CONVNEXT=str(files["convnext"].resolve()), SHOTS=str(args.shots),
               VAL_PER_CLASS=str(args.val_per_class))  # fmt: skip
    print(f"sizes here: {sizes}", flush=True)
    process = run("process.py", env, out / "log-process.txt")
    records = {"train": run("train.py", env, out / "log-train.txt")}
    records["train"].update(json.loads((run_out / "train.json").read_text()))

    def save(jittor: bool = False) -> None:  # after every script: a stopped run keeps what finished
        rows = [r for n, rec in records.items() for r in summarise(n, rec, sizes, not args.full)]
        B.finish(args, rows, jittor, sizes=sizes, records=records, process=process)

    save()
    for i in range(args.test_runs):
        if i:  # the test features again, with the kernels compiled
            for p in (run_out / "cache").glob("test-*"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        name = "test" if i == 0 else f"test (run {i + 1})"
        records[name] = run("test.py", env, out / f"log-{name}.txt")
        records[name].update(json.loads((run_out / "test.json").read_text()))
        save()
    if not args.full:
        print("'extrapolated s': the rate here times the challenge's count (an extrapolation)")
    save(jittor=True)  # the device the scripts chose (the same environment)


if __name__ == "__main__":
    main()
