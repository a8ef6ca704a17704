"""train.py and test.py end to end with full-size architectures on a generated dataset: wall time
per stage, peak memory, and (on a subset) the extrapolation to the challenge's sizes.

    python bench/bench_pipeline.py                      # CPU-sized subset (about 10 minutes)
    python bench/bench_pipeline.py --full               # challenge sizes: 374 seen classes x 4
                                                        # shots, 20 val/class, 4305 test images
    python bench/bench_pipeline.py --full --steps test --test-runs 2   # test.py cold + warm

Weights: random ViT-B/32, RN101 and ConvNeXt-V2-base written in the upstream formats and
converted (bench/_common.py). Data: photo-sized JPEGs (long side 300-640 px) in the challenge
layout over board B's class list, or over every ``1/--class-step``-th class of it (domain shares
kept) for a CPU-sized run. The scripts run as users run them (``process.py``, ``train.py``,
``test.py`` with DATA_DIR, OUT_DIR, CLIP_VIT, CLIP_RN, CONVNEXT, SETTINGS), each under
``bench/_instrument.py``, which times the functions that matter (model loads, feature
extraction per backbone and list, pure encoder time, time blocked on the image loader, text
classifiers, LP++ fits, InMaP, every part of the expert) and records the peak RSS; the peak GPU
memory is sampled with nvidia-smi. ``--test-runs 2`` runs test.py a second time with the test
features removed from the cache: Jittor's kernels are compiled by then, as in any run after the
first on a machine.

For a subset run the table ends with an extrapolation to the challenge's sizes, labelled as
such: per-image (per-view, per-class) rates measured here times the full counts, and the
feature-level stages (LP++ fit, InMaP, LP++ logits) measured here at full size on synthetic
features. The expert's share of test images is assumed to be the dog classes' share of the
classes (130 / 403), since random weights route arbitrarily.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

FULL = {"seen": 374, "classes": 403, "shots": 4, "val": 20, "test": 4305, "dogs": 130, "views": 10}


def subset_classes(src: Path, dst: Path, step: int) -> int:
    """Every ``step``-th class of the list (ids renumbered 0..K-1): domain shares are kept."""
    lines = [ln for ln in src.read_text().splitlines() if ln.strip()]
    keep = [ln.rsplit(" ", 1)[0] for ln in lines][::step]
    dst.write_text("\n".join(f"{name} {i}" for i, name in enumerate(keep)) + "\n")
    return len(keep)


def run_step(name: str, script: str, args: list[str], env: dict, out: Path) -> dict:
    """One script under the instrumentation wrapper; returns its record."""
    record = out / f"record-{name}.json"
    log = out / f"log-{name}.txt"
    cmd = [sys.executable, str(C.ROOT / "bench" / "_instrument.py"), str(record), script, *args]
    with C.Contention() as cpu, C.GpuMemoryMonitor() as gpu, open(log, "w") as f:
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=C.ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {r.returncode}); see {log}")
    rec = json.loads(record.read_text())
    rec.update(
        step=name,
        wall_outer_s=wall,
        gpu_peak_mb=gpu.peak_mb,
        gpu_baseline_mb=gpu.baseline_mb,
        load_before=cpu.load_before,
        load_after=cpu.load_after,
        others_cores=cpu.others_cores,
    )
    return rec


def feature_stages_full_size() -> dict[str, float]:
    """LP++ fits, stage 1 and stage 2 at the challenge's sizes on synthetic features (seconds)."""
    from bench_scaling import synthetic

    from fewshot.lpp import LPPlusPlus
    from models.runtime import jittor
    from pipeline.stages import stage1_scores, stage2_scores

    jt = jittor()
    out = {}
    n_tr, n_val = FULL["seen"] * FULL["shots"], FULL["seen"] * FULL["val"]
    X, T, _ = synthetic(FULL["test"], FULL["classes"])
    Xtr, _, ytr = synthetic(n_tr, FULL["seen"], seed=3)
    Xv, _, yv = synthetic(n_val, FULL["seen"], seed=4)
    seen = np.arange(FULL["seen"])

    def fit():
        return LPPlusPlus().fit(Xtr, ytr, T[:, seen], val=(Xv, yv))

    for phase in ("warm-up", "timed"):  # the first call compiles Jittor's kernels
        t = time.perf_counter()
        probe = fit()
        jt.sync_all(True)
        out["LP++ fit (1 backbone, 300 epochs, val every epoch)"] = time.perf_counter() - t
        Xs = {"vit": X, "rn": X}
        Ts = {"vit": T, "rn": T}
        t = time.perf_counter()
        stage1_scores(Xs, Ts, "challenge", {}, {"vit": 0.5, "rn": 0.5})
        out["stage 1: InMaP challenge, 2 backbones"] = time.perf_counter() - t
        t = time.perf_counter()
        stage2_scores(Xs, {"vit": probe, "rn": probe}, {"vit": 0.6, "rn": 0.4})
        out["stage 2: LP++ logits, 2 backbones"] = time.perf_counter() - t
        if phase == "warm-up":
            out = {}
    return out


def _fn(rec: dict, key: str) -> dict:
    return rec["functions"].get(key, {"seconds": 0.0, "calls": 0, "items": 0, "nested": {}})


def _net(rec: dict, key: str, *inner: str) -> tuple[float, int]:
    """(seconds of ``key`` without the ``inner`` calls made inside it, items)."""
    f = _fn(rec, key)
    return f["seconds"] - sum(f["nested"].get(k, 0.0) for k in inner), f["items"]


def _features(rec: dict, lst: str) -> tuple[float, int]:
    """(seconds, images) of the CLIP features of one list, both backbones (one decoding pass),
    without the model loads inside. Records made before the backbones shared a pass have one
    entry per backbone: their sum."""
    loads = [f"load CLIP {name}" for name in ("vit", "rn")]
    if f"features {lst}" in rec["functions"]:
        return _net(rec, f"features {lst}", *loads)
    parts = [_net(rec, f"features {lst} {name}", *loads) for name in ("vit", "rn")]
    return sum(p[0] for p in parts), parts[0][1]


def summarise(records: dict[str, dict], sizes: dict) -> list[dict]:
    """Rows (stage, seconds here, count here, per-unit, extrapolated to full size)."""
    rows = []

    def row(step, what, seconds, count=None, unit="", full_count=None, note=""):
        r = {"step": step, "what": what, "seconds": seconds}
        if count:
            r["count"] = f"{count} {unit}"
            r["s/unit"] = seconds / count
            if full_count is not None:
                r["full count"] = full_count
                r["extrapolated s"] = seconds / count * full_count
        elif full_count == "same":
            r["extrapolated s"] = seconds
        r["note"] = note
        rows.append(r)

    if "train" in records:
        rec = records["train"]
        row("train", "whole script (incl. start-up)", rec["wall_outer_s"])
        for name in ("vit", "rn"):
            row("train", f"load CLIP {name}", _fn(rec, f"load CLIP {name}")["seconds"], None, "",
                "same")  # fmt: skip
            t = _fn(rec, f"text classifier {name}")
            row("train", f"text classifier {name}", t["seconds"], sizes["classes"], "classes",
                FULL["classes"])  # fmt: skip
        for lst, full in (("train", FULL["seen"] * FULL["shots"]),
                          ("val", FULL["seen"] * FULL["val"])):  # fmt: skip
            sec, items = _features(rec, lst)
            row("train", f"features {lst} (vit + rn, one decoding pass)", sec, items, "img", full)
        row("train", "LP++ fits (2 backbones)", _fn(rec, "LP++ fit")["seconds"], None, "",
            None, "full size: see the synthetic rows")  # fmt: skip
        dogs_here = sizes["dogs"] * sizes["shots"]
        views = sizes["views"]
        row("train", "expert: decode + resize train", _fn(rec, "expert: decode + resize train")[
            "seconds"], dogs_here, "img", FULL["dogs"] * FULL["shots"])  # fmt: skip
        row("train", f"expert: view features ({views} views)",
            _fn(rec, "expert: view features")["seconds"], dogs_here * views, "views",
            FULL["dogs"] * FULL["shots"] * FULL["views"],
            f"extrapolated with {FULL['views']} views")  # fmt: skip
        f = _fn(rec, "expert: val features")
        row("train", "expert: val features (384 px)", f["seconds"], f["items"], "img",
            FULL["dogs"] * FULL["val"])  # fmt: skip
        v = _fn(rec, "expert: view features")
        dev = v["nested"].get("expert: device compute (_to_numpy)", 0.0)
        row("train", "  of which augmentation etc. (main thread)", v["seconds"] - dev,
            dogs_here * views, "views", FULL["dogs"] * FULL["shots"] * FULL["views"])  # fmt: skip
        row("train", "expert: 31 epochs of head training", _fn(rec, "expert: epochs")["seconds"],
            dogs_here, "train img", FULL["dogs"] * FULL["shots"])  # fmt: skip
        row("train", "blocked on loader (feature cache)",
            _fn(rec, "blocked on loader (feature cache)")["seconds"])  # fmt: skip
    for key in [k for k in records if k.startswith("test")]:
        rec = records[key]
        row(key, "whole script (incl. start-up)", rec["wall_outer_s"])
        for name in ("vit", "rn"):
            row(key, f"load CLIP {name}", _fn(rec, f"load CLIP {name}")["seconds"], None, "",
                "same")  # fmt: skip
        sec, items = _features(rec, "test")
        row(key, "features test (vit + rn, one decoding pass, without loads)", sec, items, "img",
            FULL["test"])  # fmt: skip
        for name in ("vit", "rn"):
            sec, items = _net(rec, f"encode {name}", f"load CLIP {name}")
            row(key, f"  of which encoder {name}", sec, items, "img", FULL["test"])
        row(key, "blocked on loader (feature cache)",
            _fn(rec, "blocked on loader (feature cache)")["seconds"])  # fmt: skip
        row(key, "stage 1 (InMaP, both backbones)", _fn(rec, "stage 1 scores")["seconds"], None,
            "", None, "full size: see the synthetic rows")  # fmt: skip
        row(key, "stage 2 (LP++ logits)", _fn(rec, "stage 2 scores")["seconds"])
        row(key, "expert: load", _fn(rec, "expert: load")["seconds"], None, "", "same")
        e = _fn(rec, "expert: encode")
        routed_full = round(FULL["test"] * FULL["dogs"] / FULL["classes"])
        row(key, "expert: encode routed images (384 px)", e["seconds"], e["items"], "img",
            routed_full, "routed share assumed 130/403")  # fmt: skip
    return rows


def add_totals(rows: list[dict], records: dict[str, dict], synthetic: dict[str, float]) -> None:
    """Per script: the measured wall time, and that time with every scaled part replaced by its
    extrapolation (nested "of which" rows are not counted twice) and the feature-level stages
    replaced by their full-size synthetic measurements. What is neither (start-up, imports,
    writing files) is carried over unchanged."""
    by_step: dict[str, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    lpp = synthetic.get("LP++ fit (1 backbone, 300 epochs, val every epoch)")
    s1 = synthetic.get("stage 1: InMaP challenge, 2 backbones")
    s2 = synthetic.get("stage 2: LP++ logits, 2 backbones")
    for step, rs in by_step.items():
        if step not in records or step == "process":
            continue
        wall = records[step]["wall_outer_s"]
        total = wall
        for r in rs:
            if r["what"].startswith("  ") or "count" not in r:
                continue
            total += r["extrapolated s"] - r["seconds"]
        swaps = {
            "LP++ fits (2 backbones)": None if lpp is None else 2 * lpp,
            "stage 1 (InMaP, both backbones)": s1,
            "stage 2 (LP++ logits)": s2,
        }
        complete = True
        for r in rs:
            if r["what"] in swaps:
                if swaps[r["what"]] is None:
                    complete = False
                else:
                    total += swaps[r["what"]] - r["seconds"]
        rows.append(
            {
                "step": step,
                "what": "TOTAL",
                "seconds": wall,
                "extrapolated s": total if complete else float("nan"),
                "note": "extrapolation to the challenge's sizes" if complete else "",
            }
        )


COLUMNS = ["step", "what", "seconds", "count", "s/unit", "full count", "extrapolated s", "note"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--full", action="store_true", help="the challenge's sizes (needs a GPU)")
    ap.add_argument("--class-step", type=int, default=10, help="subset: every k-th class")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--val-per-class", type=int, default=2)
    ap.add_argument("--test-images", type=int, default=300)
    ap.add_argument("--expert-views", type=int, default=2, help="(full: 10)")
    ap.add_argument("--lpp-epochs", type=int, default=300)
    ap.add_argument("--steps", default="process,train,test", help="comma list")
    ap.add_argument("--test-runs", type=int, default=1, help="2: again, kernels compiled")
    ap.add_argument("--workers", type=int, default=None, help="WORKERS for the scripts")
    ap.add_argument("--batch-size", type=int, default=None, help="BATCH_SIZE for the scripts")
    ap.add_argument("--out", default="out/bench/pipeline")
    ap.add_argument("--weights-dir", default="out/bench/weights")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the full-size feature rows")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--summarise", metavar="JSON", help="only rebuild the table of a saved run")
    args = ap.parse_args()
    if args.summarise:
        saved = json.loads(Path(args.summarise).read_text())
        rows = summarise(saved["records"], saved["sizes"])
        synthetic = saved.get("synthetic_full_size", {})
        for what, sec in synthetic.items():
            rows.append({"step": "full size", "what": what, "seconds": sec,
                         "extrapolated s": sec, "note": "synthetic features"})  # fmt: skip
        if not saved["args"].get("full"):
            add_totals(rows, saved["records"], synthetic)
        saved["rows"] = rows
        Path(args.summarise).write_text(json.dumps(saved, indent=1, default=str) + "\n")
        print(f"sizes here: {saved['sizes']}")
        print(C.format_table(rows, COLUMNS))
        return
    if args.full:
        args.class_step, args.val_per_class = 1, FULL["val"]
        args.test_images, args.expert_views = FULL["test"], FULL["views"]

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    weights = C.write_full_size_weights(args.weights_dir)
    classes_file = out / "classes_subset.txt"
    n_classes = subset_classes(C.ROOT / "data" / "classes_b.txt", classes_file, args.class_step)
    data = out / f"data-c{n_classes}-s{args.shots}-v{args.val_per_class}-t{args.test_images}"
    t = time.perf_counter()
    C.make_dataset(
        data,
        classes_file,
        train_per_class=args.shots + args.val_per_class,
        test_images=args.test_images,
    )
    print(f"dataset {data} ready ({time.perf_counter() - t:.0f} s)", flush=True)
    from pipeline.lists import read_class_list

    classes = read_class_list(classes_file)
    sizes = {
        "classes": n_classes,
        "seen": sum(d != "Stanford-Cars" for d in classes.domains),
        "dogs": sum(d == "Thu-dog" for d in classes.domains),
        "shots": args.shots,
        "val": args.val_per_class,
        "test": args.test_images,
        "views": args.expert_views,
    }
    settings = out / "settings.yaml"
    settings.write_text(
        f"expert_views: {args.expert_views}\nlpp_epochs: {args.lpp_epochs}\n"
        "inmap_variant: challenge\n"
    )
    run_out = out / "run"
    env = dict(os.environ)
    env.update(
        DATA_DIR=str(data),
        OUT_DIR=str(run_out),
        CLIP_VIT=str(weights["vit"].resolve()),
        CLIP_RN=str(weights["rn"].resolve()),
        CONVNEXT=str(weights["convnext"].resolve()),
        SETTINGS=str(settings),
        SHOTS=str(args.shots),
        VAL_PER_CLASS=str(args.val_per_class),
    )
    if args.workers is not None:
        env["WORKERS"] = str(args.workers)
    if args.batch_size is not None:
        env["BATCH_SIZE"] = str(args.batch_size)
    steps = [s for s in args.steps.split(",") if s]
    records: dict[str, dict] = {}
    if "process" in steps:
        shutil.rmtree(run_out, ignore_errors=True)
        records["process"] = run_step("process", "process.py", [], env, out)
    if "train" in steps:
        records["train"] = run_step("train", "train.py", [], env, out)
    if "test" in steps:
        for i in range(args.test_runs):
            if i:  # drop the test features so that they are computed again, kernels compiled
                for entry in (run_out / "cache").glob("test-*"):
                    shutil.rmtree(entry)
            name = "test" if i == 0 else f"test (run {i + 1})"
            records[name] = run_step(name, "test.py", [], env, out)
            tj = json.loads((run_out / "test.json").read_text())
            records[name]["test_json"] = tj
    for name, rec in records.items():
        print(
            f"{name}: {rec['wall_outer_s']:.1f} s, peak RSS {rec['peak_rss_mb']:.0f} MiB, "
            f"GPU peak {rec['gpu_peak_mb']:.0f} MiB, load {rec['load_before']:.1f}->"
            f"{rec['load_after']:.1f}, other processes {rec['others_cores']:.2f} cores",
            flush=True,
        )
    rows = summarise(records, sizes)
    synthetic = {}
    if not args.no_synthetic and not args.full:
        synthetic = feature_stages_full_size()
        for what, s in synthetic.items():
            rows.append(
                {
                    "step": "full size",
                    "what": what,
                    "seconds": s,
                    "extrapolated s": s,
                    "note": "synthetic features",
                }
            )
    if not args.full:
        add_totals(rows, records, synthetic)
    from models.runtime import jittor

    jt = jittor()
    print(f"\ndevice: {C.device_description(jt)}; sizes here: {sizes}")
    if not args.full:
        print("'extrapolated s': per-unit rate here x the challenge's count (an extrapolation)")
    print(C.format_table(rows, COLUMNS))
    C.write_json(
        args.json,
        {
            "info": C.run_info(jt),
            "args": vars(args),
            "sizes": sizes,
            "records": records,
            "rows": rows,
            "synthetic_full_size": synthetic,
        },
    )


if __name__ == "__main__":
    main()
