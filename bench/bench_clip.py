"""Throughput of the Jittor CLIP vs OpenAI's PyTorch model on this CPU (random weights).

    python bench/bench_clip.py                        # ViT-B/32 and RN101, batch 32
    python bench/bench_clip.py --arch ViT-B/32 --batch 8 --repeats 3

Both run in the same process on the same weights and inputs, alternately (so a busy machine
slows both alike); the best of ``--repeats`` timed runs is reported after one warm-up (Jittor
compiles its kernels there). Text is timed twice for Jittor: on the full 77-token context like
OpenAI (``trim_context=False``), and with the default trimming after the last end-of-text
token. The prompts are CLIP-style ("a photo of a {class}.", 7 to 12 tokens).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _reference as R  # noqa: E402  (torch before Jittor)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.runtime import jittor  # noqa: E402

ARCHS = {"ViT-B/32": R.VIT_B_32, "RN101": R.RN101}
CLASSES = ["dog", "golden retriever", "tabby cat", "sports car", "pizza", "a red double-decker bus"]


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (Jittor compiles here)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_arch(name: str, batch: int, repeats: int) -> dict[str, float]:
    """Best seconds per batch of each measured path for one architecture."""
    jt = jittor()
    from models.clip import tokenize
    from models.clip.model import build_model

    arch = ARCHS[name]
    ref = R.random_openai_clip(arch, seed=0)
    model = build_model({k: v.numpy() for k, v in ref.state_dict().items()})
    r = arch["image_resolution"]
    images = np.random.default_rng(0).standard_normal((batch, 3, r, r)).astype(np.float32)
    tokens = tokenize([f"a photo of a {CLASSES[i % len(CLASSES)]}." for i in range(batch)])
    ti, tt = torch.from_numpy(images), torch.from_numpy(tokens)

    def jt_image():
        with jt.no_grad():
            model.encode_image(images).sync()

    def jt_text(trim: bool):
        model.trim_context = trim
        with jt.no_grad():
            model.encode_text(tokens).sync()

    def torch_image():
        with torch.no_grad():
            ref.encode_image(ti)

    def torch_text():
        with torch.no_grad():
            ref.encode_text(tt)

    paths = {
        "image torch": torch_image,
        "image jittor": jt_image,
        "text torch": torch_text,
        "text jittor full-77": lambda: jt_text(False),
        "text jittor trimmed": lambda: jt_text(True),
    }
    rows: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(2):  # alternate the libraries, twice
        for k, fn in paths.items():
            rows[k].append(_best(fn, repeats))
    return {k: min(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", choices=list(ARCHS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    jt = jittor()
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}, jittor {jt.__version__}")
    print(f"batch {args.batch}, best of {args.repeats}; images/s and texts/s (higher is better)")
    for name in args.arch or list(ARCHS):
        best = bench_arch(name, args.batch, args.repeats)
        print(f"\n{name}")
        for k, t in best.items():
            base = best["image torch" if k.startswith("image") else "text torch"]
            print(
                f"  {k:22s} {t:7.3f} s/batch  {args.batch / t:8.1f} /s  x{base / t:5.2f} vs torch"
            )


if __name__ == "__main__":
    main()
