"""Half precision: do the encoders give the same answers in float16? Top-1 agreement with
float32, speed and memory of both (docs/PERFORMANCE.md, section 6).

    python -m bench.fp16 --models vit,convnext --n 32 --batch 16 --convnext-size 64   # CPU
    python -m bench.fp16 --devices cpu,cuda --ref-n 8     # GPU: also against the CPU's float32

Compared: the features' cosine and the top-1 (top-5) of the pipeline's classifier on top. Jittor's
CPU float16 is 100-1000x slower than float32, hence ``--size auto``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import bench as B


def load(name: str, path: Path, convnext_size: int):
    """(model, preprocess, encode(model, batch) -> Var, classify(float32 features) -> logits)."""
    from models.runtime import jittor

    jt = jittor()
    if name == "convnext":
        from models import convnext

        model = convnext.load(path)
        w, b = model.head.weight.numpy().copy(), model.head.bias.numpy().copy()
        encode = lambda m, x: m.forward_features(jt.array(x))  # noqa: E731
        return model, convnext.preprocess(convnext_size), encode, lambda f: f @ w.T + b
    from fewshot.zeroshot import build_text_classifier
    from models import clip
    from pipeline.lists import read_class_list

    model, pre = clip.load(path)
    classes = read_class_list(B.ROOT / "data" / "classes_b.txt")
    T = np.asarray(build_text_classifier(model, list(classes.names), templates="domain"))
    classify = lambda f: (f / np.linalg.norm(f, axis=1, keepdims=True)) @ T  # noqa: E731
    return model, pre, lambda m, x: m.encode_image(x), classify


def encode_all(model, encode, paths, pre, batch: int) -> tuple[np.ndarray, float]:
    """Features of every image (float32 numpy) and the seconds spent in the encoder."""
    from pipeline.images import iter_batches

    out, seconds = [], 0.0
    for b in iter_batches(paths, pre, batch):
        t = time.perf_counter()
        out.append(encode(model, b.images["orig"]).float32().numpy().copy())
        seconds += time.perf_counter() - t
    return np.concatenate(out), seconds


def compare(name: str, path: Path, paths: list[str], args) -> dict:
    from models.runtime import jittor

    ref_dev, dev = args.devices.split(",") if args.devices else (None, None)
    if ref_dev:  # float32 features of the first --ref-n images on the reference device
        jittor(ref_dev)
        model, pre, encode, _ = load(name, path, args.convnext_size)
        ref = encode_all(model, encode, paths[: args.ref_n], pre, args.batch)[0]
    jt = jittor(dev)
    model, pre, encode, classify = load(name, path, args.convnext_size)
    size = int(getattr(pre, "n_px", getattr(pre, "size", 224)))
    res: dict = {"encoder": B.NAMES[args.size][name], "px": size, "images": len(paths)}
    feats = {}
    for dtype in args.dtypes.split(","):
        if dtype == "float16":
            model.float16()
        encode(model, np.zeros((args.batch, 3, size, size), np.float32)).sync()  # compile
        jt.sync_all(True)
        jt.gc()
        B.reset_peak_rss()
        with B.GpuMemory() as gpu:
            feats[dtype], seconds = encode_all(model, encode, paths, pre, args.batch)
        res[f"{dtype} img/s"] = len(paths) / seconds
        res[f"{dtype} peak RSS MiB"] = B.rss_mb(peak=True)
        res[f"{dtype} GPU peak MiB"] = gpu.used_mb
        if ref_dev:  # same images, same classifier: does the device change the answers?
            f, key = feats[dtype][: len(ref)], f"{dtype} vs {ref_dev} float32"
            res[f"{key} max abs diff"] = diff = float(np.abs(f - ref).max())
            res[f"{key} max rel diff"] = diff / float(np.abs(ref).max())
            same = classify(f).argmax(1) == classify(ref).argmax(1)
            res[f"{key} same top-1 %"] = 100 * float(same.mean())
    if not {"float32", "float16"} <= feats.keys():
        return res
    a, b = feats["float32"], feats["float16"]
    res["finite"] = bool(np.isfinite(b).all())
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    res["1 - cos, max"], res["1 - cos, mean"] = float(1 - cos.min()), float(1 - cos.mean())
    la, lb = classify(a), classify(b)
    res["top-1 agree %"] = 100 * float((la.argmax(1) == lb.argmax(1)).mean())
    t5a, t5b = np.argsort(-la, 1)[:, :5], np.argsort(-lb, 1)[:, :5]
    overlap = [len(set(x) & set(y)) / 5 for x, y in zip(t5a, t5b)]
    res["top-5 overlap %"] = 100 * float(np.mean(overlap))
    top2 = np.sort(la, 1)[:, -2:]
    res["median top-1 margin"] = float(np.median(top2[:, 1] - top2[:, 0]))
    return res


def main() -> None:
    ap = B.parser(__doc__)
    ap.add_argument("--models", default="vit,rn,convnext")
    ap.add_argument("--size", choices=["auto", "full", "demo"], default="auto",
                    help="weights: auto = full on a GPU, demo on a CPU")  # fmt: skip
    ap.add_argument("--n", type=int, default=500, help="images")
    ap.add_argument("--images", help="folder of image_<n>.jpg (default: generated photos)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--convnext-size", type=int, default=384)
    ap.add_argument("--dtypes", default="float32,float16", help="float32 and/or float16")
    ap.add_argument("--devices", help="REF,DEV: float32 on REF (--ref-n images) against DEV")
    ap.add_argument("--ref-n", type=int, default=8, help="images encoded on REF")
    ap.add_argument("--photos-dir", default="out/bench/photos", help="generated photos")
    ap.add_argument("--weights-dir", default=B.WEIGHTS_DIR)
    args = ap.parse_args()
    if args.size == "auto":  # as scripts/env.sh decides whether Jittor may look for CUDA
        args.size = "full" if B.gpu_names() else "demo"
    files = B.weights(args.weights_dir, args.size)  # before Jittor: may need torch
    from models.runtime import jittor

    jt = jittor()
    jt.flags.no_grad = 1  # what jt.no_grad() sets: inference only
    if args.images:
        from pipeline.lists import list_test_images

        paths = [str(Path(args.images) / n) for n in list_test_images(args.images)[: args.n]]
    else:
        paths = B.photos(args.n, args.photos_dir)
    rows = []
    for name in args.models.split(","):
        rows.append(compare(name, files[name], paths, args))
        print(B.table(rows[-1:]).splitlines()[-1], flush=True)
    B.finish(args, rows, jittor=True)


if __name__ == "__main__":
    main()
