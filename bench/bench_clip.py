"""Throughput of the Jittor CLIP vs OpenAI's PyTorch model on this CPU (random weights).

    python bench/bench_clip.py                        # ViT-B/32 and RN101, batch 32
    python bench/bench_clip.py --arch ViT-B/32 --batch 8 --repeats 3

Both run in the same process on the same weights and inputs, one call of each per round
(after one warm-up round, where Jittor compiles its kernels), for ``--repeats`` rounds, so a
machine shared with other work slows both alike. Reported per path: the best and the median
time, and the median over rounds of the torch/Jittor time ratio. Text is timed twice for
Jittor: on the full 77-token context like OpenAI (``trim_context=False``), and with the default
trimming after the last end-of-text token. The prompts are CLIP-style ("a photo of a
{class}.", 7 to 12 tokens).
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


def bench_arch(name: str, batch: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Per path: (best s/batch, median s/batch, median speed-up over torch)."""
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

    groups = {
        "image": {"torch": torch_image, "jittor": jt_image},
        "text": {
            "torch": torch_text,
            "jittor full-77": lambda: jt_text(False),
            "jittor trimmed": lambda: jt_text(True),
        },
    }
    out = {}
    for group, paths in groups.items():
        times: dict[str, list[float]] = {k: [] for k in paths}
        for round_ in range(repeats + 1):
            for k, fn in paths.items():
                t = time.perf_counter()
                fn()
                if round_:  # round 0 warms up (and compiles)
                    times[k].append(time.perf_counter() - t)
        for k, ts in times.items():
            ratios = [a / b for a, b in zip(times["torch"], ts)]
            out[f"{group} {k}"] = (min(ts), float(np.median(ts)), float(np.median(ratios)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", choices=list(ARCHS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds")
    args = ap.parse_args()
    jt = jittor()
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}, jittor {jt.__version__}")
    print(f"batch {args.batch}, {args.repeats} rounds; items/s from the median time")
    for name in args.arch or list(ARCHS):
        print(f"\n{name}")
        for k, (best, med, ratio) in bench_arch(name, args.batch, args.repeats).items():
            print(
                f"  {k:22s} best {best:7.3f} s  median {med:7.3f} s/batch"
                f"  {args.batch / med:7.1f} /s  x{ratio:5.2f} vs torch"
            )


if __name__ == "__main__":
    main()
