"""How the cost of the cascade's feature-level stages grows with the number of test images n and
of classes C, on synthetic CLIP-like features (no images, no encoders).

    python bench/bench_scaling.py                                  # n 1k..64k, C 403 and 1000
    python bench/bench_scaling.py --n 1000,4305 --classes 403 --json out/bench/scaling.json

Per (n, C), in a fresh subprocess (so its peak resident memory is its own; d = 512):

- **InMaP official** (Sinkhorn 20 iterations + 2000 proxy steps): too long to run in full at
  the large sizes on a CPU, so Sinkhorn and the proxy loop are each timed at two iteration counts
  (``--iters-lo``, ``--iters-hi``); the difference gives the cost per iteration, the rest the
  fixed cost (transfers, X @ T, pseudo-labels), and the full run is *computed* as
  fixed + iterations x per-iteration. ``--full-official`` runs the 2000 steps instead.
- **InMaP challenge** (2 x 20 proxy steps + 100 Sinkhorn iterations): run in full.
- **LP++ logits** of a fitted probe over the seen classes (C - 29, as board B): X W^T + b +
  alpha (X T).
- **routing**: the fused stage-1 and stage-2 scores through ``pipeline.cascade.run_cascade``
  (argmax, the unseen test, top-5 of each stage) with an expert over 130 classes.

Each stage is run once untimed first (Jittor compiles its kernels per shape), then timed. The
peak RSS over the timed work minus the RSS before it is the stage's extra memory. The fitted
growth laws come from least squares on log-log: time = a n^p C^q.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

D = 512
UNSEEN = 29  # board B's car classes
EXPERT = 130  # board B's dog classes


def synthetic(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit image features X [n, d] around class centres, unit text columns T [d, c], labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    X = centres[y] + 1.2 * rng.standard_normal((n, D)).astype(np.float32) / np.sqrt(D)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    T = centres + 0.8 * rng.standard_normal((c, D)).astype(np.float32) / np.sqrt(D)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    return X.astype(np.float32), np.ascontiguousarray(T.T), y


def _measure(fn, sync=lambda: None, gc=lambda: None, warm: bool = True) -> tuple[float, float]:
    """(seconds, extra peak RSS MiB) of one call of fn, after an untimed warm-up call.

    ``gc`` returns the memory Jittor's allocator keeps cached to the system first, so the timed
    call allocates (and is charged for) what it needs, as the single call in the pipeline is.
    ``warm=False`` skips the warm-up (same kernels as an earlier measurement).
    """
    if warm:
        fn()
        sync()
    gc()
    base = C.rss_mb()
    C.reset_peak_rss()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t, max(0.0, C.peak_rss_mb() - base)


def worker(args) -> dict:
    from models.runtime import jittor

    jt = jittor()
    from fewshot import inmap as im
    from fewshot.lpp import LPPlusPlus
    from pipeline.cascade import fuse, run_cascade

    n, c = args.n, args.c
    X, T, _ = synthetic(n, c)
    X2, T2, _ = synthetic(n, c, seed=1)  # the second backbone
    sync = lambda: jt.sync_all(True)  # noqa: E731
    gc = jt.gc
    out: dict = {"n": n, "C": c, "device": C.device_description(jt)}
    lo, hi = args.iters_lo, args.iters_hi

    # InMaP official, per part
    M = X @ T
    Y = im.sinkhorn(M, iters=20)
    s_lo, m1 = _measure(lambda: im.sinkhorn(M, iters=lo), sync, gc)
    s_hi, m2 = _measure(lambda: im.sinkhorn(M, iters=hi), sync, gc, warm=False)
    p_lo, m3 = _measure(lambda: im.vision_proxies(X, T, Y, iters=lo), sync, gc)
    p_hi, m4 = _measure(lambda: im.vision_proxies(X, T, Y, iters=hi), sync, gc, warm=False)
    sink_it = (s_hi - s_lo) / (hi - lo)
    prox_it = (p_hi - p_lo) / (hi - lo)
    fixed = (s_lo - lo * sink_it) + (p_lo - lo * prox_it)
    out["sinkhorn_per_iter_s"] = sink_it
    out["proxy_per_iter_s"] = prox_it
    out["official_fixed_s"] = fixed
    out["official_s"] = fixed + 20 * sink_it + 2000 * prox_it
    out["official_computed"] = True
    out["official_mem_mb"] = max(m1, m2, m3, m4)
    if args.full_official:
        t, m = _measure(lambda: im.inmap(X, T), sync, gc)
        out.update(official_s=t, official_computed=False, official_mem_mb=m)

    # InMaP challenge, in full
    out["challenge_s"], out["challenge_mem_mb"] = _measure(
        lambda: im.inmap_challenge(X, T), sync, gc
    )

    # LP++ logits of a probe over the seen classes
    seen = np.arange(c - UNSEEN)
    rng = np.random.default_rng(2)
    probe = LPPlusPlus.from_state_dict(
        {
            "weight": rng.standard_normal((seen.size, D)).astype(np.float32),
            "bias": np.zeros(seen.size, np.float32),
            "alpha": np.ones(seen.size, np.float32),
            "text": np.ascontiguousarray(T[:, seen]),
        }
    )
    out["lpp_logits_s"], out["lpp_logits_mem_mb"] = _measure(lambda: probe.logits(X), sync, gc)

    # routing over fused scores (numpy)
    s1 = [X @ T, X2 @ T2]
    s2 = [probe.logits(X), probe.logits(X2)]
    expert_ids = seen[-EXPERT:]
    expert_scores = rng.standard_normal((n, EXPERT)).astype(np.float32)
    unseen = np.arange(c - UNSEEN, c)

    def route():
        all_scores = fuse(s1, [0.5, 0.5])
        seen_scores = fuse(s2, [0.6, 0.4])
        return run_cascade(all_scores, unseen, seen_scores, seen, expert_scores, expert_ids)

    out["routing_s"], out["routing_mem_mb"] = _measure(route)
    return out


def run_one(n: int, c: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--c", str(c)]
    cmd += ["--iters-lo", str(args.iters_lo), "--iters-hi", str(args.iters_hi)]
    if args.full_official:
        cmd.append("--full-official")
    if args.quiet >= 0:
        C.wait_for_quiet(args.quiet)
    with C.Contention() as cpu, C.GpuMemoryMonitor() as gpu:
        r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"n={n} C={c} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    res = json.loads(lines[-1][len("RESULT ") :])
    res.update(
        load_before=cpu.load_before,
        load_after=cpu.load_after,
        others_cores=cpu.others_cores,
        gpu_peak_mb=gpu.peak_mb,
    )
    return res


STAGES = {
    "official": "InMaP official (s, 1 backbone)",
    "challenge": "InMaP challenge (s, 1 backbone)",
    "lpp_logits": "LP++ logits (s)",
    "routing": "routing (s)",
}


def fit_growth(results: list[dict]) -> dict[str, dict[str, float]]:
    """Least squares on log-log of every quantity against n and C; prints and returns the fits.

    Points below 1 ms or 1 MiB are left out: at the small sizes the allocator serves them from
    memory the process already holds, so they measure nothing."""
    quantities = {
        "proxy step": "proxy_per_iter_s",
        "Sinkhorn iteration": "sinkhorn_per_iter_s",
        **{v: f"{k}_s" for k, v in STAGES.items()},
        "InMaP official memory (MiB)": "official_mem_mb",
        "InMaP challenge memory (MiB)": "challenge_mem_mb",
        "routing memory (MiB)": "routing_mem_mb",
    }
    fits: dict[str, dict[str, float]] = {}
    print("\nfitted growth (least squares on log-log): value = a * n^p * C^q")
    for name, key in quantities.items():
        floor = 1.0 if key.endswith("_mb") else 1e-3
        pts = [r for r in results if r[key] >= floor]
        if len(pts) < 3:
            continue
        feats = np.array([[r["n"], r["C"]] for r in pts], float)
        y = np.array([r[key] for r in pts])
        if len({r["C"] for r in pts}) > 1 and len({r["n"] for r in pts}) > 1:
            la, p, q = C.fit_loglinear(feats, y)
        else:
            a, p = C.fit_power_law(feats[:, 0], y)
            la, q = np.log(a), float("nan")
        pred = np.exp(la + p * np.log(feats[:, 0]) + (0 if q != q else q * np.log(feats[:, 1])))
        err = float(np.max(np.abs(np.log(pred / y))))
        fits[name] = {"a": float(np.exp(la)), "p": float(p), "q": float(q), "points": len(pts),
                      "max_rel_error": float(np.exp(err) - 1)}  # fmt: skip
        print(
            f"  {name:32s} a = {np.exp(la):.3g}  p(n) = {p:.2f}  q(C) = {q:.2f}  "
            f"({len(pts)} points, worst fit error {100 * (np.exp(err) - 1):.0f}%)"
        )
        # The same data as fixed cost + cost per (image x class): the power law's exponents
        # below 1 come from a per-call overhead that the largest sizes amortise.
        nc = feats[:, 0] * feats[:, 1]
        A = np.column_stack([np.ones_like(nc), nc])
        (t0, k), *_ = np.linalg.lstsq(A / y[:, None], np.ones_like(y), rcond=None)  # rel. error
        fits[name].update(fixed=float(t0), per_nC=float(k))
        print(f"  {'':32s} = {t0:.3g} + {k:.3g} * n * C")
    return fits


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", default="1000,4000,16000,64000", help="test-set sizes (comma list)")
    ap.add_argument("--classes", default="403,1000", help="class counts (comma list)")
    ap.add_argument("--iters-lo", type=int, default=5, help="short run for per-iteration cost")
    ap.add_argument("--iters-hi", type=int, default=25, help="long run for per-iteration cost")
    ap.add_argument("--full-official", action="store_true", help="run 2000 proxy steps for real")
    ap.add_argument(
        "--quiet",
        type=float,
        default=0.3,
        metavar="CORES",
        help="before each size, wait until other processes use fewer cores than this "
        "(default 0.3; -1: do not wait)",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--refit", metavar="JSON", help="only redo the fits of a saved --json file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--c", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.n = int(args.n)
        print("RESULT " + json.dumps(worker(args)))
        return

    if args.refit:
        saved = json.loads(Path(args.refit).read_text())
        saved["fits"] = fit_growth(saved["results"])
        Path(args.refit).write_text(json.dumps(saved, indent=1, default=str) + "\n")
        return
    sizes = [int(v) for v in args.n.split(",")]
    classes = [int(v) for v in args.classes.split(",")]
    results = []
    for c in classes:
        for n in sizes:
            res = run_one(n, c, args)
            results.append(res)
            print(
                f"n={n:6d} C={c:5d}: official {res['official_s']:.1f}s"
                f"{' (computed)' if res['official_computed'] else ''}, challenge "
                f"{res['challenge_s']:.2f}s, LP++ {res['lpp_logits_s']:.3f}s, routing "
                f"{res['routing_s']:.3f}s, other processes {res['others_cores']:.2f} cores",
                flush=True,
            )
    rows = []
    for r in results:
        row = {"n": r["n"], "C": r["C"]}
        row["proxy step ms"] = 1000 * r["proxy_per_iter_s"]
        row["Sinkhorn it ms"] = 1000 * r["sinkhorn_per_iter_s"]
        for k, name in STAGES.items():
            row[name] = r[f"{k}_s"]
        row["InMaP off. MiB"] = r["official_mem_mb"]
        row["InMaP chal. MiB"] = r["challenge_mem_mb"]
        row["routing MiB"] = r["routing_mem_mb"]
        row["load"] = f"{r['load_before']:.1f}-{r['load_after']:.1f}"
        row["others"] = r["others_cores"]
        rows.append(row)
    print(f"\ndevice: {results[0]['device']}; d = {D}")
    print(C.format_table(rows, list(rows[0])))

    fits = fit_growth(results)
    from models.runtime import jittor

    C.write_json(
        args.json,
        {"info": C.run_info(jittor()), "args": vars(args), "results": results, "fits": fits},
    )


if __name__ == "__main__":
    main()
