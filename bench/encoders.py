"""The cascade's encoders, Jittor against the PyTorch references on the same random full-size
weights: items/s, resident memory, GPU memory peak, agreement (docs/PERFORMANCE.md, section 1).

    python -m bench.encoders                                      # all: 15 min on 2 cores
    python -m bench.encoders --models vit --repeats 1 --batch 2   # a quick look
    python -m bench.encoders --layouts     # ConvNeXt-V2 block: layout micro-benchmark (Jittor)

Each (encoder, library) runs in its own process, in alternating order over ``--rounds``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import bench as B


def _jittor(args):
    """(call, sync, version, device) of the Jittor encoder."""
    from models.runtime import device_record, jittor

    jt = jittor()
    jt.flags.no_grad = 1  # what jt.no_grad() sets; this process only measures
    x = np.load(args.input)
    if args.model == "convnext":
        from models import convnext

        model = convnext.load(args.weights)
        call = lambda: model.forward_features(jt.array(x)).numpy().copy()  # noqa: E731
    else:
        from models import clip

        model, _ = clip.load(args.weights)
        model.trim_context = args.task != "text-full"
        enc = model.encode_image if args.task == "image" else model.encode_text
        call = lambda: enc(x).numpy().copy()  # noqa: E731
    return call, lambda: jt.sync_all(True), jt.__version__, device_record()["device"]


def _torch(args):
    """(call, sync, version, device) of the PyTorch reference."""
    import torch
    from safetensors.numpy import load_file

    from models.clip.config import FULL_SIZE_CLIP
    from models.weights import read_info
    from tests import _reference as R

    dev = torch.device(args.torch_device)
    torch.set_grad_enabled(False)  # this process only measures
    tensors, cfg = load_file(args.weights), read_info(args.weights)["config"]
    x = torch.from_numpy(np.load(args.input)).to(dev)
    if args.model == "convnext":
        model = R.hf_convnextv2(cfg, tensors).to(dev)
        call = lambda: model.convnextv2(x).pooler_output.float().cpu().numpy()  # noqa: E731
    else:
        model = R.openai_model().CLIP(**{k: cfg[k] for k in FULL_SIZE_CLIP["RN101"]}).float()
        state = {k: torch.from_numpy(v) for k, v in tensors.items()}
        state["logit_scale"] = state["logit_scale"].reshape(())
        model.load_state_dict(state, strict=True)
        model = model.eval().to(dev)
        enc = model.encode_image if args.task == "image" else model.encode_text
        call = lambda: enc(x).float().cpu().numpy()  # noqa: E731
    del tensors
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    threads = f"{torch.get_num_threads()} threads"
    return call, sync, torch.__version__, f"{dev.type} ({threads})"


def timed_calls(fn, repeats: int, sync=lambda: None):
    """One untimed call (Jittor compiles its kernels), then ``repeats`` timed calls with the
    peak RSS reset in between. Returns (first call s, [timed s], peak RSS MiB, last output)."""
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            B.reset_peak_rss()
    return times[0], times[1:], B.rss_mb(peak=True), out


def child(args) -> None:
    rss0 = B.rss_mb()
    call, sync, version, dev = (_jittor if args.child == "jittor" else _torch)(args)
    rss_model = B.rss_mb()
    first, times, peak, out = timed_calls(call, args.repeats, sync)
    np.save(args.output, out)
    B.report(
        dict(first_s=first, times_s=times, median_s=float(np.median(times)), rss_start_mb=rss0,
             rss_model_mb=rss_model, peak_rss_mb=peak, version=version, device=dev)
    )  # fmt: skip


def _input(tmp: Path, task: str, batch: int, size: int) -> Path:
    path = tmp / f"{task}-{batch}-{size}.npy"
    if task == "image":
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    else:
        from models.clip.tokenizer import tokenize
        from pipeline.lists import read_class_list

        names = read_class_list(B.ROOT / "data" / "classes_b.txt").clean_names
        x = tokenize([f"a photo of a {names[i % len(names)]}." for i in range(batch)])
    np.save(path, x)
    return path


def compare(model: str, weights: Path, args, tmp: Path) -> list[dict]:
    """Rows for one encoder: per task, Jittor and PyTorch side by side."""
    name = B.NAMES["full"][model]
    if model == "convnext":
        jobs = [("image", args.convnext_batch, args.convnext_size)]
    else:
        tasks = args.tasks.split(",")
        jobs = [("image", args.batch, 224)] * ("image" in tasks)
        jobs += [("text", args.batch, 0), ("text-full", args.batch, 0)] * ("text" in tasks)
    rows, runs = [], {}
    for task, batch, size in jobs:
        inp = _input(tmp, task.split("-")[0], batch, size)
        # OpenAI's text tower always runs the full context: the "text" runs serve "text-full" too.
        libs = ["jittor"] if task == "text-full" else ["jittor", "torch"]
        runs = {"jittor": [], "torch": runs["torch"] if task == "text-full" else []}
        for r in range(args.rounds):
            for lib in libs if r % 2 == 0 else libs[::-1]:
                out = tmp / f"{model}-{task}-{lib}.npy"
                cmd = ["bench.encoders", "--child", lib, "--model", model, "--task", task]
                cmd += ["--weights", str(weights), "--input", str(inp), "--output", str(out)]
                cmd += ["--repeats", str(args.repeats), "--torch-device", args.torch_device]
                res = B.run_child(cmd)
                res["out"] = str(out)
                runs[lib].append(res)
                print(f"  {name} {task} {lib}: median {res['median_s']:.3f} s/call, "
                      f"load {res['load']}", flush=True)  # fmt: skip
        best = {lib: min(x["median_s"] for x in v) for lib, v in runs.items()}
        a, b = np.load(runs["jittor"][-1]["out"]), np.load(runs["torch"][-1]["out"])
        what = {"text": "text (Jittor trims)", "text-full": "text, full 77"}.get(task, task)
        what += f" x{batch}" + (f" @{size}" if size else "")
        for lib in libs:
            v = runs[lib]
            rows.append({
                "encoder": name, "input": what,
                "library": lib, "device": v[0]["device"], "items/s": batch / best[lib],
                "ratio": best["torch"] / best[lib] if lib == "jittor" else float("nan"),
                "RSS model MiB": float(np.median([x["rss_model_mb"] for x in v])),
                "peak RSS MiB": max(x["peak_rss_mb"] for x in v),
                "GPU peak MiB": max(x["gpu_peak_mb"] for x in v),
                "max rel diff": float(np.abs(a - b).max() / np.abs(b).max()),
                "load": ", ".join(x["load"] for x in v), "runs": v,
            })  # fmt: skip
    return rows


def layouts(repeats: int) -> list[dict]:
    """Depthwise 7x7 formulations and one block's share of matmul time, ConvNeXt-V2-base stage 3
    at 384 px, batch 8 (the measurements behind the block layout of models/convnext/model.py)."""
    from models.convnext.model import Block, jt, nn

    n, c, h, w = 8, 512, 24, 24
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((n, c, h, w)).astype(np.float32))
    x_last = jt.array(rng.standard_normal((n, h, w, c)).astype(np.float32))
    k = jt.array(rng.standard_normal((c, 1, 7, 7)).astype(np.float32))
    k_last = jt.array(rng.standard_normal((7, 7, c)).astype(np.float32))
    rows_in = jt.array(rng.standard_normal((n * h * w, c)).astype(np.float32))
    block = Block(c)

    def reindex_nhwc():
        xx = x_last.reindex([n, h, w, 7, 7, c], ["i0", "i1+i3-3", "i2+i4-3", "i5"])
        return (xx * k_last.broadcast([n, h, w, 7, 7, c], [0, 1, 2])).sum([3, 4])

    cases = {
        "depthwise 7x7, NCHW grouped conv (used)": lambda: nn.conv2d(x, k, None, 1, 3, 1, c),
        "depthwise 7x7, NHWC reindex": reindex_nhwc,
        "whole block": lambda: block(x),
        "the block's two Linear layers alone": lambda: block.pwconv2(block.pwconv1(rows_in)),
    }
    rows = []
    for name, fn in cases.items():
        with jt.no_grad():
            _, times, _, _ = timed_calls(lambda fn=fn: fn().sync(), repeats)
        rows.append({"operation": name, "shape": f"[{n},{c},{h},{w}]",
                     "ms": 1000 * float(np.median(times))})  # fmt: skip
    return rows


def main() -> None:
    ap = B.parser(__doc__)
    ap.add_argument("--models", default="vit,rn,convnext", help="comma list of vit, rn, convnext")
    ap.add_argument("--tasks", default="image,text", help="CLIP: image and/or text")
    ap.add_argument("--batch", type=int, default=32, help="CLIP images / texts per call")
    ap.add_argument("--convnext-batch", type=int, default=8, help="ConvNeXt images per call")
    ap.add_argument("--convnext-size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    ap.add_argument("--rounds", type=int, default=1, help="processes per (encoder, library)")
    ap.add_argument("--weights-dir", default=B.WEIGHTS_DIR)
    ap.add_argument("--torch-device", default="cpu", help="cpu or cuda (if torch's build has it)")
    ap.add_argument("--layouts", action="store_true", help="the ConvNeXt layout micro-benchmark")
    for name in ("child", "model", "task", "weights", "input", "output"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.layouts:
        return B.finish(args, layouts(args.repeats), jittor=True)
    files = B.weights(args.weights_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            rows += compare(model, files[model], args, Path(tmp))
    print("\nratio = Jittor items/s / PyTorch items/s (> 1: Jittor faster)")
    B.finish(args, [{k: v for k, v in r.items() if k != "runs"} for r in rows], runs=rows)


if __name__ == "__main__":
    main()
