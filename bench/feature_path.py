"""Does the encoder wait on image decoding? The feature path (``FeatureCache.get`` over
``pipeline.images.iter_batches``), piece by piece (docs/PERFORMANCE.md, section 2).

    python -m bench.feature_path decode --n 300 --workers 0,1,2 --jittor-dataset
    python -m bench.feature_path gil
    python -m bench.feature_path extract --encoder vit,rn,vit+rn --workers 2 --n 256

``decode``: photo-like JPEGs decoded and preprocessed, no encoder, per number of decoding threads
(0: inline), and with ``--jittor-dataset`` by Jittor's own loader. ``gil``: the longest gap of a
thread that wakes every millisecond while a Jittor call runs. ``extract``: ``FeatureCache.get``
on a fresh cache with real or simulated encoders (``fake-gil:R`` holds the GIL for batch/R s, as
a GPU encoder at R images/s does through Jittor; ``fake-nogil:R`` sleeps as long without it);
encoders joined by ``+`` share one decoding pass. Waiting: from a batch's last encoder call to
the next batch's first (decoding, and the cache's writes).
"""

from __future__ import annotations

import ctypes
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import bench as B


def _preprocessings() -> dict:
    from models.clip.preprocess import Preprocess
    from models.convnext import preprocess

    return {"CLIP 224": Preprocess(224), "ConvNeXt 384": preprocess(384)}


def _jittor_dataset(paths, pre, batch: int, workers: int):
    """Jittor's own loader over ``paths``, yielding preprocessed images."""
    from models.runtime import jittor
    from pipeline.images import load_rgb

    jt = jittor()

    class Photos(jt.dataset.Dataset):
        def __getitem__(self, i):
            return pre(load_rgb(paths[i]))

    attrs = dict(batch_size=batch, shuffle=False, num_workers=workers, total_len=len(paths))
    return Photos().set_attrs(**attrs)


def cmd_decode(args) -> list[dict]:
    from pipeline.images import iter_batches

    paths = B.photos(args.n)
    rows = []
    loaders = [("threads", w) for w in args.workers]
    loaders += [("jittor.dataset", w) for w in args.workers if args.jittor_dataset]
    for pname, pre in _preprocessings().items():
        for kind, w in loaders:
            for _ in range(2):  # warm-up (file cache, worker start-up), then timed
                before, t = B.load_average(), time.perf_counter()
                if kind == "threads":
                    count = sum(len(b.indices) for b in iter_batches(paths, pre, args.batch, w))
                else:
                    count = sum(len(x) for x in _jittor_dataset(paths, pre, args.batch, w))
                dt = time.perf_counter() - t
            assert count == len(paths), (count, len(paths))
            rows.append({"preprocessing": pname, "loader": kind if w else f"{kind}, inline",
                         "workers": w, "img/s": len(paths) / dt,
                         "load": f"{before:.1f}-{B.load_average():.1f}"})  # fmt: skip
            print(B.table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def cmd_gil(args) -> list[dict]:
    from models.runtime import device_record, jittor

    jt = jittor()
    a = jt.array(np.random.default_rng(0).standard_normal((1500, 1500)).astype(np.float32))

    def op(mode: str):
        with jt.no_grad():
            y = a
            for _ in range(args.gil_ops):
                y = (y @ a) * 0.001
            return y.sync() if mode == "sync" else y.numpy()

    op("numpy")  # compile
    stamps: list[float] = []
    stop = threading.Event()

    def sleeper() -> None:
        while not stop.is_set():
            time.sleep(0.001)
            stamps.append(time.perf_counter())

    threading.Thread(target=sleeper, daemon=True).start()
    time.sleep(0.2)
    rows = []
    for mode in ("numpy", "sync"):
        t0 = time.perf_counter()
        op(mode)
        t1 = time.perf_counter()
        inside = [s for s in stamps if t0 < s < t1]
        gap = float(np.diff([t0, *inside, t1]).max())
        rows.append({"call": f"Var.{mode}()", "device": device_record()["device"],
                     "call ms": 1000 * (t1 - t0), "wake-ups inside": len(inside),
                     "longest gap ms": 1000 * gap,
                     "GIL released": "no" if gap > 0.5 * (t1 - t0) else "yes"})  # fmt: skip
        time.sleep(0.2)
    stop.set()
    return rows


def make_encoder(spec: str, weights_dir: str):
    """(encode(batch) -> features, preprocessing, description) of a real or simulated encoder."""
    if spec.startswith("fake-"):
        kind, rate = spec.split(":")
        libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, as a Jittor call does

        def encode(batch: np.ndarray) -> np.ndarray:
            seconds = len(batch) / float(rate)
            if kind == "fake-gil":
                libc.usleep(ctypes.c_uint(int(seconds * 1e6)))
            else:
                time.sleep(seconds)
            return np.ones((len(batch), 512), np.float32)

        return encode, _preprocessings()["CLIP 224"], spec
    files = B.weights(weights_dir)
    from models.runtime import device_record
    from pipeline.backbones import ClipBackbone, ConvNeXtBackbone

    name = f"{B.NAMES['full'][spec]} ({device_record()['device']})"  # imports Jittor (after torch)
    if spec == "convnext":
        bb = ConvNeXtBackbone(files["convnext"])
        return bb.features, _preprocessings()["ConvNeXt 384"], name
    bb = ClipBackbone(spec, files[spec])
    return bb.encoder("bench").encode, bb.preprocess, name


def extract_once(paths, encoders, pre, batch: int, workers: int, root: Path) -> dict:
    """One ``FeatureCache.get`` of every encoder on a fresh cache, with one decoding pass."""
    from pipeline.features import Encoder, FeatureCache

    calls: list[list[tuple[float, float]]] = [[] for _ in encoders]

    def timed(i: int, encode):  # records when each call starts and ends
        def call(batch: np.ndarray):
            t = time.perf_counter()
            out = encode(batch)
            out = out.numpy() if hasattr(out, "numpy") else out
            calls[i].append((t, time.perf_counter()))
            return out

        return Encoder({"bench": i}, call, f"bench{i}")

    t0 = time.perf_counter()
    FeatureCache(root).get([timed(i, e) for i, e in enumerate(encoders)], paths, pre,
                           batch_size=batch, workers=workers, progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    starts, ends = [c[0] for c in calls[0]], [c[1] for c in calls[-1]]
    waiting = starts[0] - t0 + sum(s - e for s, e in zip(starts[1:], ends[:-1]))
    encode = sum(e - s for c in calls for s, e in c)
    return {"wall s": wall, "img/s": len(paths) / wall, "waiting s": waiting,
            "waiting %": 100 * waiting / wall, "encode s": encode,
            "other s": wall - waiting - encode}  # fmt: skip


def cmd_extract(args) -> list[dict]:
    from pipeline.features import describe_preprocess

    paths = B.photos(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.encoder.split(","):
            made = [make_encoder(part, args.weights_dir) for part in spec.split("+")]
            pre = made[0][1]
            if len({describe_preprocess(m[1]) for m in made}) > 1:
                raise SystemExit(f"{spec}: encoders joined by + must share one preprocessing")
            size = int(getattr(pre, "n_px", getattr(pre, "size", 224)))
            for encode, _, _ in made:  # Jittor compiles outside the timings
                encode(np.zeros((args.batch, 3, size, size), np.float32))
            for w in args.workers:
                before = B.load_average()
                res = extract_once(paths, [m[0] for m in made], pre, args.batch, w,
                                   Path(tmp) / f"{spec}-{w}")  # fmt: skip
                row = {"encoders": " + ".join(m[2] for m in made), "threads": w or "inline"}
                rows.append({**row, **res, "load": f"{before:.1f}-{B.load_average():.1f}"})
                print(B.table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    ap = B.parser(__doc__)
    ap.add_argument("what", choices=["decode", "gil", "extract"])
    ap.add_argument("--n", type=int, default=256, help="images")
    ap.add_argument("--workers", default="0,1,2", help="decoding threads (comma list; 0: inline)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--jittor-dataset", action="store_true", help="decode: also jittor.dataset")
    ap.add_argument("--encoder", default="vit", help="vit, rn, convnext, fake-gil:R, fake-nogil:R")
    ap.add_argument("--gil-ops", type=int, default=6, help="gil: matmuls in the Jittor call")
    ap.add_argument("--weights-dir", default=B.WEIGHTS_DIR)
    args = ap.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    rows = {"decode": cmd_decode, "gil": cmd_gil, "extract": cmd_extract}[args.what](args)
    B.finish(args, rows, jittor=True)


if __name__ == "__main__":
    main()
