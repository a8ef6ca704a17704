"""Half precision: do the encoders give the same answers in float16? Top-1 agreement with
float32 on real-size inputs, and the speed and memory of both.

    python bench/bench_fp16.py                     # on a GPU: full-size models, 500 images
    python bench/bench_fp16.py --arch small --n 64  # on a CPU: small models (the path works)
    python bench/bench_fp16.py --images out/bench/pipeline/data-.../TestSet --n 4305

Per encoder (CLIP ViT-B/32, RN101, ConvNeXt-V2-base at 384 px; random weights converted from
upstream-format files, bench/_common.py) the images go through the pipeline's loader and
preprocessing once; the model encodes them in float32, then again after ``model.float16()``
(weights in float16; LayerNorm, GRN and BatchNorm statistics computed in float32, as OpenAI's
fp16 CLIP and torch autocast do). Compared: cosine similarity of the two feature sets, and the
top-1 (and top-5 overlap) of the classifier the pipeline puts on top: for CLIP the zero-shot
text classifier over board B's 403 classes (domain prompts, built in float32), for ConvNeXt its
1000-class head applied in float32. Target: top-1 agreement >= 99.5%.

Jittor runs float16 on the CPU with generic kernels (about 100x slower than its float32 matmul,
measured: 256x512x512 in 0.84 s against 8 ms), so on a CPU the full-size check would take hours:
``--arch small`` (the test suite's small architectures, 32-64 px) shows the path works there;
the agreement that counts is the full-size one, on a GPU. Random weights give flatter logits
than trained ones (smaller top-1 margins), so they are a harder case for agreement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SMALL_CLIP = {
    "vit": dict(C.CLIP_CONFIGS["ViT-B/32"], image_resolution=64, vision_layers=2,
                vision_width=128, transformer_width=128, transformer_heads=2,
                transformer_layers=2, embed_dim=64, vision_patch_size=16),
    "rn": dict(C.CLIP_CONFIGS["RN101"], image_resolution=64, vision_layers=(1, 2, 1, 1),
               vision_width=64, transformer_width=64, transformer_heads=1,
               transformer_layers=1, embed_dim=64),
}  # fmt: skip
NAMES = {"vit": "ViT-B/32", "rn": "RN101", "convnext": "ConvNeXt-V2-base"}


def load_model(name: str, arch: str, weights_dir: str):
    """(model, preprocess, encode(model, x) -> jt.Var, classifier(features) -> logits)."""
    from models.runtime import jittor

    jt = jittor()
    if name == "convnext":
        from models import convnext_v2 as cx

        if arch == "full":
            model = cx.load(C.write_full_size_weights(weights_dir)["convnext"])
            size = 384
        else:
            model = cx.from_state_dict(cx.random_state_dict("atto", seed=0))
            size = 64
        head_w = model.head.weight.numpy().copy()
        head_b = model.head.bias.numpy().copy()
        return (
            model,
            cx.EvalTransform(size),
            lambda m, x: m.forward_features(jt.array(x)),
            lambda f: f @ head_w.T + head_b,
        )
    from fewshot.zeroshot import build_text_classifier
    from models import clip
    from models.clip.model import CLIP
    from pipeline.lists import read_class_list

    if arch == "full":
        model, pre = clip.load(C.write_full_size_weights(weights_dir)[name])
    else:
        model = CLIP(**SMALL_CLIP[name], seed=0)
        model.eval()
        pre = clip.Preprocess(SMALL_CLIP[name]["image_resolution"])
    classes = read_class_list(C.ROOT / "data" / "classes_b.txt")
    with jt.no_grad():
        T = np.asarray(build_text_classifier(model, list(classes.names), templates="domain"))

    def classify(f: np.ndarray) -> np.ndarray:
        return (f / np.linalg.norm(f, axis=1, keepdims=True)) @ T

    return model, pre, lambda m, x: m.encode_image(x), classify


def encode_all(model, encode, paths, pre, batch: int) -> tuple[np.ndarray, float]:
    from models.runtime import jittor
    from pipeline.images import iter_batches

    jt = jittor()
    out, seconds = [], 0.0
    for b in iter_batches(paths, pre, batch):
        t = time.perf_counter()
        with jt.no_grad():
            f = encode(model, b.images).float32().numpy().copy()
        seconds += time.perf_counter() - t
        out.append(f)
    return np.concatenate(out), seconds


def compare(name: str, arch: str, paths: list[str], args) -> dict:
    from models.runtime import jittor

    jt = jittor()
    model, pre, encode, classify = load_model(name, arch, args.weights_dir)
    res: dict = {"encoder": NAMES[name] + ("" if arch == "full" else " (small)"), "n": len(paths)}
    feats = {}
    for dtype in ("float32", "float16"):
        if dtype == "float16":
            model.float16()
        encode(model, np.zeros((args.batch, 3, pre_size(pre), pre_size(pre)), np.float32)).sync()
        jt.sync_all(True)
        with C.GpuMemoryMonitor() as gpu:
            feats[dtype], seconds = encode_all(model, encode, paths, pre, args.batch)
        res[f"{dtype} img/s"] = len(paths) / seconds
        res[f"{dtype} GPU MiB"] = gpu.peak_mb
    a, b = feats["float32"], feats["float16"]
    res["finite"] = bool(np.isfinite(b).all())
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    res["cos min"] = float(cos.min())
    res["cos mean"] = float(cos.mean())
    la, lb = classify(a), classify(b)
    res["top-1 agree %"] = 100 * float((la.argmax(1) == lb.argmax(1)).mean())
    t5a, t5b = np.argsort(-la, 1)[:, :5], np.argsort(-lb, 1)[:, :5]
    res["top-5 overlap %"] = 100 * float(
        np.mean([len(set(x) & set(y)) / 5 for x, y in zip(t5a, t5b)])
    )
    top2 = np.sort(la, 1)[:, -2:]
    res["median top-1 margin"] = float(np.median(top2[:, 1] - top2[:, 0]))
    return res


def pre_size(pre) -> int:
    return int(getattr(pre, "n_px", getattr(pre, "size", 224)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="vit,rn,convnext")
    ap.add_argument("--arch", choices=["auto", "full", "small"], default="auto",
                    help="auto: full on a GPU, small on a CPU")  # fmt: skip
    ap.add_argument("--n", type=int, default=500, help="images")
    ap.add_argument("--images", help="folder of image_<n>.jpg (default: generated photos)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--weights-dir", default="out/bench/weights")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from models.runtime import jittor

    jt = jittor()
    arch = args.arch if args.arch != "auto" else ("full" if jt.flags.use_cuda else "small")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        if args.images:
            from pipeline.lists import list_test_images

            names = list_test_images(args.images)[: args.n]
            paths = [str(Path(args.images) / n) for n in names]
        else:
            from bench_feature_path import write_images

            paths = write_images(Path(d), args.n, (300, 640))
        for name in args.models.split(","):
            rows.append(compare(name, arch, paths, args))
            print(C.format_table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    print(f"\ndevice: {C.device_description(jt)}; architectures: {arch}")
    print(C.format_table(rows, list(rows[0])))
    C.write_json(args.json, {"info": C.run_info(jt), "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
