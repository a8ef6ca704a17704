"""The few-shot methods at the challenge's sizes, and how the cascade's feature-level stages grow
with test images n and classes C (docs/METHODS.md, "Speed"; docs/PERFORMANCE.md, section 5).

    python -m bench.fewshot speed                     # challenge sizes, best of 2 alternating runs
    python -m bench.fewshot speed --skip-torch --iters 200 --repeats 1   # CPU against CUDA
    python -m bench.fewshot growth                    # n 1k..64k, C 403 and 1000: 8 min
    python -m bench.fewshot selection --boards 3      # the validation search at board B's size

speed: Jittor (on each of --devices) against tests/_reference.py's torch loops, same planted
features (tests/_planted.py), best of --repeats alternating runs; each run's scores against the
first's: largest difference, how often both predict the same class (a device listed twice:
Jittor against itself, exactly equal). growth: each (n, C) in its own process; InMaP official
computed from timed Sinkhorn and proxy steps (--full-official: run); fits a n^p C^q and fixed +
k n C. selection: train.py's validation search on a planted board, the chosen cascade's top-1
against the predicted interval.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

import bench as B
from tests._planted import BOARD_B, D, planted


class Case(NamedTuple):
    """One method's benchmark: its size, the Jittor run, the torch run (None: Jittor only), a
    short Jittor run that compiles the same kernels, and scores(either run's output) [rows, C]."""

    size: str
    jittor: Callable[[], Any]
    torch: Optional[Callable[[], Any]]
    warmup: Callable[[], Any]
    scores: Callable[[Any], np.ndarray]


METHODS = (
    "InMaP official,InMaP challenge,LP++,Tip-Adapter-F,AMU,TransCLIP zero-shot,TransCLIP few-shot"
)


def cases(args) -> tuple[dict[str, Case], dict]:
    """Every method's Case on planted problems (a test set for InMaP and TransCLIP, a few-shot set,
    train and val, for the rest), and the test set's text classifier, labels and torch threads."""
    torch = R = None
    if not args.skip_torch:  # the torch side of `speed`, imported before Jittor
        import torch

        from tests import _reference as R
    from fewshot import amu as A
    from fewshot import tip_adapter as TA
    from fewshot.inmap import inmap, inmap_challenge
    from fewshot.lpp import LPPlusPlus
    from fewshot.transclip import transclip

    rng = np.random.default_rng(args.seed)
    y_test = rng.integers(0, args.classes, args.n)
    X, T = planted(y_test, args.classes, args.seed)
    Xt, Tt = (torch.tensor(X), torch.tensor(T)) if torch else (X, T)
    c, k = args.lpp_classes, args.shots
    y2 = np.tile(np.arange(c), 2 * k)
    F2, T2 = planted(y2, c, args.seed + 1)
    aux_centres = rng.standard_normal((c, 1024)).astype(np.float32)
    A2 = aux_centres[y2] + rng.standard_normal((len(y2), 1024)).astype(np.float32)
    n = c * k
    F, y, Fv, yv, Aux, Aux_v = F2[:n], y2[:n], F2[n:], y2[n:], A2[:n], A2[n:]
    tip, amu = TA.OFFICIAL, A.OFFICIAL
    tip_cfg = (tip.batch_size, tip.init_beta, tip.init_alpha, tip.seed)
    amu_cfg = (amu.batch_size, amu.alpha, amu.lambda_merge, amu.uncertainty, amu.seed)
    K0, L = TA.build_cache_keys(F), TA.build_cache_values(y, c)
    # TransCLIP's shots: `--shots` per class of the first `--lpp-classes` classes, from the test
    # problem's generator (support and queries share the class means)
    ys = np.tile(np.arange(min(c, args.classes)), k)
    support = (planted(ys, args.classes, args.seed)[0], ys)
    test, few = f"{len(X)} x {D}, C = {args.classes}", f"{n} x {D}, C = {c}"

    def lpp_scores(out) -> np.ndarray:
        if isinstance(out, tuple):  # torch: (W, b, alpha, best epoch)
            return Fv @ out[0].T + out[1] + out[2] * (Fv @ T2)
        return out.logits(Fv)

    def tip_scores(out) -> np.ndarray:
        return TA.tip_logits(Fv, T2, getattr(out, "keys", out), L, tip.init_alpha, tip.init_beta)

    def transclip_case(shots, gamma) -> Case:
        return Case(
            test + (f", {len(ys)} shots, gamma 0.02" if shots else ""),
            lambda: transclip(X, T, shots, gamma=gamma),
            None,  # the released solver is restated in tests (_transclip_reference), not timed
            lambda: transclip(X, T, shots, gamma=gamma, iters=0),
            lambda z: z,
        )

    all_cases = {
        "InMaP official": Case(
            f"{test}, {args.iters} steps",
            lambda: inmap(X, T, iters_proxy=args.iters),
            lambda: R.torch_inmap(Xt, Tt, args.iters).numpy(),
            lambda: inmap(X, T, iters_proxy=2),
            lambda W: X @ W,
        ),
        "InMaP challenge": Case(
            f"{test}, 2 x 20 steps, 100 Sinkhorn iterations",
            lambda: inmap_challenge(X, T),
            lambda: R.torch_inmap_challenge(Xt, Tt).numpy(),
            lambda: inmap_challenge(X, T, iters_proxy=2, iters_sinkhorn=2),
            lambda W: X @ W,
        ),
        "LP++": Case(
            f"{few}, {args.epochs} epochs, val {len(Fv)}",
            lambda: LPPlusPlus(epochs=args.epochs).fit(F, y, T2, val=(Fv, yv)),
            lambda: R.torch_lpp(F, y, T2, args.epochs, val=(Fv, yv)),
            lambda: LPPlusPlus(epochs=2).fit(F, y, T2, val=(Fv, yv)),
            lpp_scores,
        ),
        "Tip-Adapter-F": Case(
            f"{few}, {tip.epochs} epochs, batch {tip.batch_size}",
            lambda: TA.TipAdapterF().fit(F, y, T2),
            lambda: R.torch_tip_f(F, y, T2, K0, L, tip.epochs, *tip_cfg),
            lambda: TA.TipAdapterF(epochs=1).fit(F, y, T2),
            tip_scores,
        ),
        "AMU": Case(
            f"{n} x {D} + {Aux.shape[1]}, C = {c}, {amu.epochs} epochs, batch {amu.batch_size}",
            lambda: A.AMUTuning().fit(F, Aux, y, T2),
            lambda: R.torch_amu(F, Aux, y, T2, amu.epochs, *amu_cfg),
            lambda: A.AMUTuning(epochs=1).fit(F, Aux, y, T2),
            lambda out: Aux_v @ getattr(out, "W", out).T,
        ),
        "TransCLIP zero-shot": transclip_case(None, None),
        "TransCLIP few-shot": transclip_case(support, 0.02),
    }
    chosen = {name: all_cases[name] for name in args.methods.split(",")}
    return chosen, {"T": T, "y_test": y_test, "threads": torch and torch.get_num_threads()}


def cmd_speed(args) -> list[dict]:
    todo, d = cases(args)
    from models.runtime import jittor

    jt = jittor()
    devices = [x for x in args.devices.split(",") if x == "cpu" or jt.has_cuda]
    for dev in devices:  # compile every kernel outside the timings
        jittor(dev)
        for case in todo.values():
            case.warmup()
    # (run, Jittor device or None for torch); a device listed twice runs twice: "jittor-cpu 2"
    runs = [(f"jittor-{x}" + f" {i + 1}" * (x in devices[:i]), x) for i, x in enumerate(devices)]
    runs += [("torch-cpu", None)] * (not args.skip_torch)
    best: dict[tuple[str, str], float] = {}
    out: dict[tuple[str, str], Any] = {}
    for _ in range(args.repeats):
        for name, case in todo.items():
            for run, dev in runs:
                fn = case.jittor if dev else case.torch
                if fn is None:
                    continue
                if dev:
                    jittor(dev)
                t = time.perf_counter()
                out[name, run] = fn()
                best[name, run] = min(time.perf_counter() - t, best.get((name, run), np.inf))
    rows, ref = [], runs[0][0]
    print(f"torch {d['threads']} threads; Jittor {jt.__version__}")
    for name, case in todo.items():
        row: dict[str, Any] = {"method": name, "size": case.size}
        row.update({f"{run} s": s for (m, run), s in best.items() if m == name})
        if (name, "torch-cpu") in out:
            row[f"{ref} / torch"] = best[name, ref] / best[name, "torch-cpu"]
        for run in [r for r, _ in runs[1:] if (name, r) in out]:  # the scores against the first's
            a, b = (np.asarray(case.scores(out[name, r]), np.float64) for r in (ref, run))
            row[f"{run} vs {ref} max abs diff"] = diff = float(np.abs(a - b).max())
            row[f"{run} vs {ref} max rel diff"] = diff / float(np.abs(a).max())
            row[f"{run} vs {ref} same top-1 %"] = 100 * float(np.mean(a.argmax(1) == b.argmax(1)))
        if name.startswith("InMaP"):  # on the planted labels: is it doing its job?
            pred = [case.scores(W).argmax(1) for W in (d["T"], out[name, ref])]
            acc = [np.mean(p == d["y_test"]) for p in pred]
            row["top-1 % zero-shot -> InMaP"] = f"{100 * acc[0]:.1f} -> {100 * acc[1]:.1f}"
        rows.append(row)
    return rows


def cmd_selection(args) -> list[dict]:
    from pipeline.scores import Choice
    from pipeline.selection import Search
    from pipeline.settings import Settings
    from tests._planted import board_problem, board_top1, routed_share, validation_data

    settings = Settings.load(args.settings or None, lpp_epochs=args.epochs)
    start = Choice.challenge().pinned(settings)
    rows = []
    for seed in range(args.seed, args.seed + args.boards):
        p = board_problem(
            args.domains, val_per_class=args.val_per_class, n=args.n, share=args.share,
            expert_domain=args.expert_domain, seed=seed, spread=args.spread,
        )  # fmt: skip
        t = time.perf_counter()
        share = routed_share(p, start, settings) if args.val_share is None else args.val_share
        t_share = time.perf_counter() - t
        result = Search(validation_data(p), settings, share, args.n, seed).search()
        t_search = time.perf_counter() - t - t_share
        choice, pred = Choice(**result["choice"]), result["predicted_top1"]
        t = time.perf_counter()
        board = board_top1(p, choice, settings, seed)
        t_board = time.perf_counter() - t
        changed = {k: v for k, v in result["choice"].items() if v != getattr(start, k)}
        rows.append({
            "seed": seed, "unseen share": f"{args.share:.2f}, batches {share:.2f}",
            "chosen (vs the challenge's)": ", ".join(f"{k}={v}" for k, v in changed.items()) or "-",
            "predicted": f"{pred['value']:.3f} [{pred['low']:.3f}, {pred['high']:.3f}]",
            "board": board, "covered": pred["low"] <= board <= pred["high"],
            "board, challenge's": board_top1(p, start, settings, seed) if changed else board,
            "candidates": len(result["candidates"]), "share s": t_share, "search s": t_search,
            "board s": t_board,
        })  # fmt: skip
    return rows


def _measure(fn, jt, warm: bool = True) -> tuple[float, float]:
    """(seconds, extra peak RSS MiB) of one call, after an untimed warm-up call. Jittor's cached
    memory is released first, so the call is charged for what it allocates."""
    if warm:
        fn()
        jt.sync_all(True)
    jt.gc()
    base = B.rss_mb()
    B.reset_peak_rss()
    t = time.perf_counter()
    fn()
    jt.sync_all(True)
    return time.perf_counter() - t, max(0.0, B.rss_mb(peak=True) - base)


def growth_child(args) -> None:
    from models.runtime import device_record, jittor

    jt = jittor()
    from fewshot import inmap as im
    from fewshot.lpp import LPPlusPlus
    from fewshot.transclip import transclip
    from pipeline.cascade import fuse, run_cascade

    n, c = int(args.n), args.child_classes
    lo, hi = 5, 25  # Sinkhorn / proxy steps of the short and the long timed run
    rng = np.random.default_rng(0)
    X, T = planted(rng.integers(0, c, n), c, 0)
    X2, T2 = planted(rng.integers(0, c, n), c, 1)  # the second backbone
    out: dict[str, Any] = {"n": n, "C": c, "device": device_record()["device"]}
    M = X @ T
    Y = im.sinkhorn(M, iters=20)
    s_lo, m1 = _measure(lambda: im.sinkhorn(M, iters=lo), jt)
    s_hi, m2 = _measure(lambda: im.sinkhorn(M, iters=hi), jt, warm=False)
    p_lo, m3 = _measure(lambda: im.vision_proxies(X, T, Y, iters=lo), jt)
    p_hi, m4 = _measure(lambda: im.vision_proxies(X, T, Y, iters=hi), jt, warm=False)
    sinkhorn, proxy = (s_hi - s_lo) / (hi - lo), (p_hi - p_lo) / (hi - lo)
    out["Sinkhorn iteration"], out["proxy step"] = sinkhorn, proxy
    fixed = s_lo - lo * sinkhorn + p_lo - lo * proxy
    out["InMaP official"] = fixed + 20 * sinkhorn + 2000 * proxy
    out["InMaP official MiB"], out["official computed"] = max(m1, m2, m3, m4), True
    if args.full_official:
        out["InMaP official"], out["InMaP official MiB"] = _measure(lambda: im.inmap(X, T), jt)
        out["official computed"] = False

    def measure(name: str, fn) -> None:
        out[name], out[f"{name} MiB"] = _measure(fn, jt)

    measure("InMaP challenge", lambda: im.inmap_challenge(X, T))
    seen = np.arange(c - 29)  # board B: 29 car classes without training images
    probe = LPPlusPlus.from_state_dict({
        "weight": rng.standard_normal((seen.size, D)).astype(np.float32),
        "bias": np.zeros(seen.size, np.float32), "alpha": np.ones(seen.size, np.float32),
        "text": np.ascontiguousarray(T[:, seen]),
    })  # fmt: skip
    measure("LP++ logits", lambda: probe.logits(X))
    s1, s2 = [X @ T, X2 @ T2], [probe.logits(X), probe.logits(X2)]
    expert = seen[-130:]  # board B: 130 dog classes
    expert_scores = rng.standard_normal((n, expert.size)).astype(np.float32)
    measure("routing", lambda: run_cascade(fuse(s1, [0.5, 0.5]), np.arange(seen.size, c),
                                           fuse(s2, [0.6, 0.4]), seen, expert,
                                           lambda rows: expert_scores[rows]))  # fmt: skip
    measure("TransCLIP zero-shot", lambda: transclip(X, T))
    B.report(out)


GROWTH = (  # the columns of growth's rows; seconds, then memory
    "proxy step,Sinkhorn iteration,InMaP official,InMaP challenge,LP++ logits,routing,"
    "TransCLIP zero-shot,InMaP official MiB,InMaP challenge MiB,routing MiB,TransCLIP zero-shot MiB"
).split(",")


def fits(results: list[dict]) -> list[dict]:
    """Least squares on log-log, value = a n^p C^q, and on the values, fixed + k n C (relative
    error). Points under 1 ms or 1 MiB are left out: the allocator serves them from memory the
    process already holds, so they measure nothing."""
    rows = []
    for key in GROWTH:
        pts = [r for r in results if r[key] >= (1.0 if key.endswith("MiB") else 1e-3)]
        if len(pts) < 3:
            continue
        n, c, y = (np.array([r[k] for r in pts], float) for k in ("n", "C", key))
        both = len(set(c)) > 1
        A = np.column_stack([np.ones_like(n), np.log(n)] + [np.log(c)] * both)
        coef, *_ = np.linalg.lstsq(A, np.log(y), rcond=None)
        (t0, k), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(n), n * c]) / y[:, None],
                                      np.ones_like(y), rcond=None)  # fmt: skip
        rows.append({"quantity": key, "a": float(np.exp(coef[0])), "p (n)": float(coef[1]),
                     "q (C)": float(coef[2]) if both else float("nan"), "fixed": float(t0),
                     "k per n C": float(k), "points": len(pts)})  # fmt: skip
    return rows


def cmd_growth(args) -> tuple[list[dict], dict]:
    results = []
    for c in [int(v) for v in args.classes.split(",")]:
        for n in [int(v) for v in args.n.split(",")]:
            cmd = ["bench.fewshot", "growth", "--child-classes", str(c), "--n", str(n)]
            res = B.run_child(cmd + ["--full-official"] * args.full_official)
            results.append(res)
            print(f"n={n} C={c}: official {res['InMaP official']:.2f} s"
                  f"{' (computed)' if res['official computed'] else ''}, challenge "
                  f"{res['InMaP challenge']:.2f} s, load {res['load']}", flush=True)  # fmt: skip
    growth = fits(results)
    print("\nfitted growth: a n^p C^q, and fixed + k n C\n" + B.table(growth))
    rows = [{"n": r["n"], "C": r["C"], **{k: r[k] for k in GROWTH},
             "official computed": r["official computed"], "load": r["load"],
             "GPU peak MiB": r["gpu_peak_mb"]} for r in results]  # fmt: skip
    return rows, {"fits": growth}


def main() -> None:
    ap = B.parser(__doc__)
    ap.add_argument("what", choices=["speed", "growth", "selection"])
    ap.add_argument("--n", help="test images (speed: 4305; growth: comma list, 1000,...,64000)")
    ap.add_argument("--classes", help="classes (speed: 403; growth: comma list, 403,1000)")
    ap.add_argument("--iters", type=int, default=2000, help="speed: InMaP official proxy steps")
    ap.add_argument("--lpp-classes", type=int, default=374, help="speed: seen classes")
    ap.add_argument("--shots", type=int, default=4, help="speed: train (and val) images per class")
    ap.add_argument("--epochs", type=int, default=300, help="speed: LP++ epochs")
    ap.add_argument("--methods", default=METHODS, help="speed: comma list")
    ap.add_argument("--repeats", type=int, default=2, help="speed: the best is reported")
    ap.add_argument("--devices", default="cpu,cuda", help="speed: Jittor devices (if present)")
    ap.add_argument("--skip-torch", action="store_true", help="speed: Jittor only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-official", action="store_true", help="growth: 2000 steps for real")
    ap.add_argument("--domains", default=BOARD_B, help="selection: name:classes,... (last unseen)")
    ap.add_argument("--expert-domain", default="Thu-dog", help="selection: the expert's domain")
    ap.add_argument("--share", type=float, default=0.28, help="selection: unseen test share")
    ap.add_argument("--spread", type=float, default=1.5, help="selection: image scatter")
    ap.add_argument("--val-share", type=float, help="selection: batches' share (default: routed)")
    ap.add_argument("--val-per-class", type=int, default=20, help="selection")
    ap.add_argument("--boards", type=int, default=1, help="selection: seeds from --seed")
    ap.add_argument("--settings", help="selection: a settings YAML file (default: defaults)")
    ap.add_argument("--child-classes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_classes:
        return growth_child(args)
    if args.what == "growth":
        args.n, args.classes = args.n or "1000,4000,16000,64000", args.classes or "403,1000"
        rows, extra = cmd_growth(args)
    else:
        args.n, args.classes = int(args.n or 4305), int(args.classes or 403)
        command = {"speed": cmd_speed, "selection": cmd_selection}
        rows, extra = command[args.what](args), {}
    B.finish(args, rows, jittor=True, **extra)


if __name__ == "__main__":
    main()
