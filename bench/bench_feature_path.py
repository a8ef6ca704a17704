"""Does the encoder wait on image decoding? The feature-extraction path of the pipeline
(``pipeline.features.FeatureCache.get_or_compute`` over ``pipeline.images.iter_view_batches``),
measured piece by piece.

    python bench/bench_feature_path.py decode      # decode + preprocess throughput per worker count
    python bench/bench_feature_path.py gil         # does a Jittor call release the GIL?
    python bench/bench_feature_path.py extract     # real extraction: time blocked on the loader
    python bench/bench_feature_path.py extract --encoder fake-gil:3000 --backend thread,process

``decode``: photo-sized JPEGs (long side 300-640 px, like the challenge's images; ``--large``
adds 2000-3000 px phone photos, with and without draft decoding) through ``load_rgb`` and the
real preprocessing (CLIP 224, ConvNeXt 384), for each worker count, in the loader's thread and
process backends, without any encoder.

``gil``: a thread that wakes up every millisecond, while the main thread runs a Jittor
computation of ~0.5 s. If Jittor released the GIL while it computes, the thread would keep
waking up; the longest gap says how long it was shut out. The loader's worker threads are in
the same position during every encoder call.

``extract``: ``get_or_compute`` on ``--n`` images (fresh cache) with a real encoder (``vit``,
``rn``, ``convnext``: full-size random weights) or a simulated one: ``fake-gil:R`` holds the
GIL for batch/R seconds without using a core (as a GPU encoder running at R images/s does
through Jittor), ``fake-nogil:R`` sleeps that long with the GIL released. Reported: wall time,
time the consumer spent blocked waiting for the next batch, time in the encoder, and the rest
(shard writes, checks). With a GIL-holding encoder the decoding threads stop during every
encoder call; the process backend keeps decoding. Several encoders joined by ``+`` (``vit+rn``,
``fake-gil:400+fake-gil:400``) share one decoding pass through ``get_or_compute_many``, as the
pipeline's two CLIP backbones do; compare with running them one after the other.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def write_images(folder: Path, n: int, long_side: tuple[int, int], seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = C._image_size(rng, long_side)
        p = folder / f"image_{i + 1}.jpg"
        if not p.is_file():
            Image.fromarray(photo(rng, w, h)).save(p, quality=90)
        paths.append(str(p))
    return paths


def photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    return C.photo_like(rng, w, h, rng.uniform(0.2, 0.8, 3))


def preprocessors() -> dict:
    from models.clip.preprocess import Preprocess
    from models.convnext_transforms import EvalTransform

    return {"clip224": Preprocess(224), "convnext384": EvalTransform(384)}


def loader_settings(args):
    """The (backend, workers) pairs to measure, each yielded once the machine is quiet."""
    for backend in args.backend.split(","):
        for w in [int(x) for x in args.workers.split(",")]:
            if backend == "process" and w == 0:
                continue  # 0 workers is inline decoding: measured once, as "thread"
            if args.quiet >= 0:
                C.wait_for_quiet(args.quiet)
            yield backend, w


# ----------------------------------------------------------------------------- decode


def cmd_decode(args) -> list[dict]:
    from pipeline.images import iter_batches

    rows = []
    sets = [("300-640 px", (300, 640), [None])]
    if args.large:
        sets.append(("2000-3000 px", (2000, 3000), [None, 448]))
    with tempfile.TemporaryDirectory() as d:
        for label, long_side, drafts in sets:
            n = args.n if long_side[1] < 1000 else max(16, args.n // 8)
            paths = write_images(Path(d) / label.replace(" ", ""), n, long_side)
            for pname, pre in preprocessors().items():
                for draft in drafts:
                    for backend, w in loader_settings(args):
                        with C.Contention() as cpu:
                            for _rep in range(2):  # warm-up (file cache, pool start), timed
                                t = time.perf_counter()
                                cnt = sum(
                                    len(b.indices)
                                    for b in iter_batches(
                                        paths, pre, 32, w, backend=backend, draft_min_side=draft
                                    )
                                )
                                dt = time.perf_counter() - t
                        assert cnt == n
                        row = {
                            "images": label,
                            "preprocess": pname,
                            "draft": draft or "-",
                            "backend": backend if w else "inline",
                            "workers": w,
                            "img/s": n / dt,
                            "others": cpu.others_cores,
                        }
                        rows.append(row)
                        print(C.format_table([row], list(row)).splitlines()[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- GIL


def cmd_gil(args) -> list[dict]:
    from models.runtime import jittor

    jt = jittor()
    a = jt.array(np.random.default_rng(0).standard_normal((1500, 1500)).astype(np.float32))

    def op(mode: str):
        with jt.no_grad():
            y = a
            for _ in range(args.gil_ops):
                y = (y @ a) * 0.001
            return y.sync() if mode == "sync" else y.numpy()

    op("numpy")
    stamps: list[float] = []
    stop = [False]

    def sleeper() -> None:
        while not stop[0]:
            time.sleep(0.001)
            stamps.append(time.perf_counter())

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    time.sleep(0.2)
    rows = []
    for mode in ("numpy", "sync"):
        t0 = time.perf_counter()
        op(mode)
        t1 = time.perf_counter()
        inside = [s for s in stamps if t0 < s < t1]
        gap = float(np.diff([t0, *inside, t1]).max())
        rows.append(
            {
                "call": f"Var.{mode}()",
                "device": C.device_description(jt),
                "call ms": 1000 * (t1 - t0),
                "wake-ups inside": len(inside),
                "longest gap ms": 1000 * gap,
                "GIL released": "no" if gap > 0.5 * (t1 - t0) else "yes",
            }
        )
        time.sleep(0.2)
    stop[0] = True
    t.join()
    return rows


# ----------------------------------------------------------------------------- extract


def make_encoder(spec: str, weights_dir: str):
    """(encode_fn, preprocess, description) for a real or simulated encoder."""
    if spec.startswith(("fake-gil:", "fake-nogil:")):
        kind, rate = spec.split(":")
        rate = float(rate)
        pre = preprocessors()["clip224"]
        libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, like a Jittor call

        def encode(batch: np.ndarray) -> np.ndarray:
            seconds = len(batch) / rate
            if kind == "fake-gil":
                libc.usleep(ctypes.c_uint(int(seconds * 1e6)))
            else:
                time.sleep(seconds)
            return np.ones((len(batch), 512), np.float32)

        return encode, pre, spec
    weights = C.write_full_size_weights(weights_dir)
    from models.runtime import jittor

    jt = jittor()
    if spec == "convnext":
        from models import convnext_v2 as cx

        model = cx.load(weights["convnext"])
        pre = preprocessors()["convnext384"]

        def encode(batch: np.ndarray) -> np.ndarray:
            with jt.no_grad():
                return model.forward_features(jt.array(batch)).numpy().copy()

        return encode, pre, f"ConvNeXt-V2-base ({C.device_description(jt)})"
    from models import clip

    model, pre = clip.load(weights[spec])

    def encode(batch: np.ndarray) -> np.ndarray:
        with jt.no_grad():
            return model.encode_image(jt.array(batch)).numpy().copy()

    name = {"vit": "ViT-B/32", "rn": "RN101"}[spec]
    return encode, pre, f"{name} ({C.device_description(jt)})"


def extract_once(paths, encoders, pre, batch, workers, backend, prefetch, cache_root) -> dict:
    """One get_or_compute_many on a fresh cache (all ``encoders`` over one decoding pass),
    instrumented."""
    import pipeline.features as features
    from pipeline import images

    sw = C.Stopwatch()

    def timed(encode):
        def timed_encode(x):
            with sw("encode"):
                return encode(x)

        return timed_encode

    def timed_batches(*a, **kw):
        kw.update(backend=backend, prefetch=prefetch)
        it = images.iter_view_batches(*a, **kw)
        while True:
            with sw("blocked on loader"):
                b = next(it, None)
            if b is None:
                return
            yield b

    cache = features.FeatureCache(cache_root)
    original = features.iter_view_batches
    features.iter_view_batches = timed_batches
    try:
        t = time.perf_counter()
        jobs = [
            features.EncoderJob({"backbone": f"bench{i}"}, timed(enc), f"bench{i}")
            for i, enc in enumerate(encoders)
        ]
        cache.get_or_compute_many(jobs, paths, pre, batch, workers, progress=False)
        wall = time.perf_counter() - t
    finally:
        features.iter_view_batches = original
    blocked = sw.totals.get("blocked on loader", 0.0)
    enc = sw.totals.get("encode", 0.0)
    return {
        "wall s": wall,
        "img/s": len(paths) / wall,
        "blocked s": blocked,
        "blocked %": 100 * blocked / wall,
        "encode s": enc,
        "encode %": 100 * enc / wall,
        "other s": wall - blocked - enc,
    }


def cmd_extract(args) -> list[dict]:
    from pipeline.features import describe_preprocess

    rows = []
    with tempfile.TemporaryDirectory() as d:
        paths = write_images(Path(d) / "img", args.n, (300, 640))
        for spec in args.encoder.split(","):
            made = [make_encoder(part, args.weights_dir) for part in spec.split("+")]
            pre, desc = made[0][1], " + ".join(m[2] for m in made)
            if len({describe_preprocess(m[1]) for m in made}) > 1:
                raise SystemExit(f"{spec}: encoders joined by + must share one preprocessing")
            encoders = [m[0] for m in made]
            for encode in encoders:  # compile
                encode(np.zeros((args.batch, 3, pre_size(pre), pre_size(pre)), np.float32))
            for backend, w in loader_settings(args):
                with C.Contention() as cpu:
                    res = extract_once(
                        paths, encoders, pre, args.batch, w, backend, args.prefetch,
                        Path(d) / f"cache-{spec}-{backend}-{w}",
                    )  # fmt: skip
                row = {"encoder": desc, "backend": backend if w else "inline", "workers": w}
                row.update(res)
                row["others"] = cpu.others_cores
                rows.append(row)
                print(C.format_table([row], list(row)).splitlines()[-1], flush=True)
    return rows


def pre_size(pre) -> int:
    return int(getattr(pre, "n_px", getattr(pre, "size", 224)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["decode", "gil", "extract"])
    ap.add_argument("--n", type=int, default=256, help="images")
    ap.add_argument("--workers", default=None, help="comma list (default: 0,1,2 / cores-1)")
    ap.add_argument("--backend", default="thread", help="thread and/or process (comma list)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prefetch", type=int, default=4, help="batches decoded ahead")
    ap.add_argument("--encoder", default="vit", help="vit, rn, convnext, fake-gil:R, fake-nogil:R")
    ap.add_argument("--large", action="store_true", help="decode: also 2000-3000 px photos")
    ap.add_argument("--gil-ops", type=int, default=6, help="gil: matmuls in the Jittor call")
    ap.add_argument("--weights-dir", default="out/bench/weights")
    ap.add_argument("--quiet", type=float, default=0.3, metavar="CORES", help="wait for quiet")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from pipeline.images import default_workers

    if args.workers is None:
        args.workers = ",".join(str(w) for w in sorted({0, 1, 2, default_workers()}))
    rows = {"decode": cmd_decode, "gil": cmd_gil, "extract": cmd_extract}[args.what](args)
    print()
    print(C.format_table(rows, list(rows[0])))
    C.write_json(args.json, {"info": C.run_info(), "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
