"""ConvNeXt-V2 forward speed in Jittor (and transformers on the same weights), plus the layout
measurements behind the block formulation in models/convnext_v2.py.

    python bench/bench_convnext.py                       # base, 384 px, batch 8, vs transformers
    python bench/bench_convnext.py --variant atto --size 224 --no-torch
    python bench/bench_convnext.py --layouts             # depthwise-conv / block micro-benchmarks

Random official-init weights (numbers do not depend on the values). The first Jittor call
compiles its kernels and is reported separately.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

log = logging.getLogger("bench_convnext")


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``repeats`` calls)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def bench_model(variant: str, size: int, batch: int, repeats: int, with_torch: bool) -> None:
    if with_torch:
        import torch  # before Jittor

    from models import convnext_v2 as cx

    jt = cx.jt
    config = cx.variant_config(variant)
    sd = cx.random_state_dict(config, seed=0)
    model = cx.from_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    out = {}

    def run_jittor():
        with jt.no_grad():
            out["jt"] = model(jt.array(x)).numpy()

    first, med = _timed(run_jittor, repeats)
    log.info(
        "Jittor  %s %dpx batch %d: %.2f s/forward (%.1f img/s); first call %.1f s (compile)",
        variant, size, batch, med, batch / med, first,
    )  # fmt: skip
    if with_torch:
        import torch
        from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

        from tests.test_convnext import official_to_hf

        hc = ConvNextV2Config(
            depths=config["depths"], hidden_sizes=config["dims"], num_labels=1000,
            layer_norm_eps=1e-6,
        )  # fmt: skip
        ref = ConvNextV2ForImageClassification(hc).eval()
        ref.load_state_dict(official_to_hf(sd))
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.no_grad():
                out["torch"] = ref(xt).logits.numpy()

        first, med_t = _timed(run_torch, repeats)
        rel = np.abs(out["jt"] - out["torch"]).max() / np.abs(out["torch"]).max()
        log.info(
            "torch   %s %dpx batch %d: %.2f s/forward (%.1f img/s), %d threads; "
            "max rel. logit difference %.1e",
            variant, size, batch, med_t, batch / med_t, torch.get_num_threads(), rel,
        )  # fmt: skip


def bench_layouts(repeats: int) -> None:
    """Depthwise 7x7 conv formulations and one block's share of matmul time (base stage 3)."""
    from models import convnext_v2 as cx

    jt, nn = cx.jt, cx.nn
    n, c, h, w = 8, 512, 24, 24  # ConvNeXt-V2-base stage 3 at 384 px, batch 8
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((n, c, h, w)).astype(np.float32))
    x_last = jt.array(rng.standard_normal((n, h, w, c)).astype(np.float32))
    k = jt.array(rng.standard_normal((c, 1, 7, 7)).astype(np.float32))
    k_last = jt.array(rng.standard_normal((7, 7, c)).astype(np.float32))

    def grouped_nchw():
        nn.conv2d(x, k, None, 1, 3, 1, c).sync()

    def reindex_nhwc():
        xx = x_last.reindex([n, h, w, 7, 7, c], ["i0", "i1+i3-3", "i2+i4-3", "i5"])
        (xx * k_last.broadcast([n, h, w, 7, 7, c], [0, 1, 2])).sum([3, 4]).sync()

    block = cx.Block(c)
    rows = jt.array(rng.standard_normal((n * h * w, c)).astype(np.float32))

    def run_block():
        with jt.no_grad():
            block(x).sync()

    def matmuls_only():
        with jt.no_grad():
            block.pwconv2(block.pwconv1(rows)).sync()

    for name, fn in [
        ("depthwise 7x7, NCHW grouped conv (used)", grouped_nchw),
        ("depthwise 7x7, NHWC reindex", reindex_nhwc),
        ("whole block", run_block),
        ("the block's two Linear layers alone", matmuls_only),
    ]:
        _, med = _timed(fn, repeats)
        log.info("%-42s [%d,%d,%d,%d]: %7.1f ms", name, n, c, h, w, med * 1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="base")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-torch", action="store_true", help="skip the transformers comparison")
    p.add_argument("--layouts", action="store_true", help="run the layout micro-benchmarks")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.layouts:
        bench_layouts(args.repeats)
    else:
        bench_model(args.variant, args.size, args.batch, args.repeats, not args.no_torch)


if __name__ == "__main__":
    main()
