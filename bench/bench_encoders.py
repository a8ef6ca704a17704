"""The three encoders of the cascade, Jittor against the PyTorch reference implementations, on the
same random full-size weights: images/s, texts/s and peak memory, side by side.

    python bench/bench_encoders.py                          # all, batch 32 (ConvNeXt: 8)
    python bench/bench_encoders.py --models vit,rn --repeats 5 --json out/bench/encoders.json
    python bench/bench_encoders.py --models convnext --convnext-batch 32

Encoders: CLIP ViT-B/32 and RN101 (image and text towers; Jittor's ``models.clip`` against
OpenAI's ``clip/model.py`` from the clip-anytorch wheel, loaded by file path) and ConvNeXt-V2-base
pooled features at 384 px (``models.convnext_v2`` against transformers' ``ConvNextV2``). The
weights are drawn once, written in the upstream formats and converted by ``models.convert`` (as
real downloads are); the Jittor side loads the converted file, the PyTorch side the same tensors.

Every (encoder, library) pair runs in its own subprocess, so each library has the whole machine
and its own memory: the table reports the resident set after loading the model and its peak
during the timed calls (the high-water mark is reset after the warm-up call, which in Jittor also
compiles the kernels). The subprocesses alternate (Jittor, PyTorch, PyTorch, Jittor, ...) over
``--rounds`` so a change of machine load hits both; the one-minute load average is recorded
before and after each. ``ratio`` is Jittor throughput / PyTorch throughput (> 1: Jittor faster),
from the best over rounds of each run's median time (other work on a shared machine only ever
slows a run down; a run during which other processes kept more than ``--max-others`` cores busy
is measured again). Both outputs are compared (max |difference| / max |reference|) to show
the two computed the same thing. On a CUDA machine Jittor runs on the GPU (``models.runtime``)
and the peak GPU memory of each subprocess is sampled with nvidia-smi; PyTorch uses CUDA when
its build has it (``--torch-device``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODELS = {"vit": "ViT-B/32", "rn": "RN101", "convnext": "ConvNeXt-V2-base"}


# ----------------------------------------------------------------------------- subprocess side


def _timed_calls(fn, repeats: int, sync) -> dict:
    """Warm-up call (compiles), reset the RSS mark, ``repeats`` timed calls."""
    t = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t
    rss_loaded = C.rss_mb()
    C.reset_peak_rss()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return {
        "first_s": first,
        "times_s": times,
        "median_s": float(np.median(times)),
        "rss_after_warmup_mb": rss_loaded,
        "peak_rss_mb": C.peak_rss_mb(),
        "output": out,
    }


def worker_jittor(args) -> dict:
    from models.runtime import jittor

    jt = jittor()
    rss0 = C.rss_mb()
    x = np.load(args.input)
    if args.model == "convnext":
        from models import convnext_v2 as cx

        model = cx.load(args.weights)

        def fn():
            with jt.no_grad():
                return model.forward_features(jt.array(x)).numpy().copy()

    else:
        from models import clip

        model, _ = clip.load(args.weights)
        model.trim_context = args.task != "text-full"

        def fn():
            with jt.no_grad():
                if args.task == "image":
                    return model.encode_image(x).numpy().copy()
                return model.encode_text(x).numpy().copy()

    rss_model = C.rss_mb()
    res = _timed_calls(fn, args.repeats, lambda: jt.sync_all(True))
    res.update(
        library="jittor",
        version=jt.__version__,
        device=C.device_description(jt),
        threads=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())),
        rss_start_mb=rss0,
        rss_model_mb=rss_model,
    )
    return res


def worker_torch(args) -> dict:
    import torch
    from safetensors.numpy import load_file

    dev = torch.device(args.torch_device)
    rss0 = C.rss_mb()
    tensors = load_file(args.weights)
    x = torch.from_numpy(np.load(args.input)).to(dev)
    if args.model == "convnext":
        from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

        from models.weights import read_info  # models.convnext_v2 would import Jittor

        cfg = read_info(args.weights)["config"]
        hc = ConvNextV2Config(
            depths=cfg["depths"],
            hidden_sizes=cfg["dims"],
            num_labels=cfg["num_classes"],
            layer_norm_eps=1e-6,
            hidden_act="gelu",
        )
        model = ConvNextV2ForImageClassification(hc).eval()
        model.load_state_dict(C.official_to_hf(tensors), strict=True)
        model.to(dev)

        def fn():
            with torch.no_grad():
                return model.convnextv2(x).pooler_output.cpu().numpy()

    else:
        sys.path.insert(0, str(C.ROOT / "tests"))
        import _reference as R

        model = R.openai_model().CLIP(**C.CLIP_CONFIGS[MODELS[args.model]]).float().eval()
        state = {k: torch.from_numpy(v) for k, v in tensors.items()}
        state["logit_scale"] = state["logit_scale"].reshape(())
        model.load_state_dict(state, strict=True)
        model.to(dev)
        del state  # the model holds its own copy

        def fn():
            with torch.no_grad():
                if args.task == "image":
                    return model.encode_image(x).cpu().numpy()
                return model.encode_text(x).cpu().numpy()

    del tensors
    rss_model = C.rss_mb()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    res = _timed_calls(fn, args.repeats, sync)
    res.update(
        library="torch",
        version=torch.__version__,
        device=f"{dev.type}",
        threads=str(torch.get_num_threads()),
        rss_start_mb=rss0,
        rss_model_mb=rss_model,
    )
    return res


def worker_main(args) -> None:
    res = worker_jittor(args) if args.worker == "jittor" else worker_torch(args)
    np.save(args.output, res.pop("output"))
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------- parent side


def _inputs(tmp: Path, model: str, task: str, batch: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    path = tmp / f"{model}-{task}-{batch}-{size}.npy"
    if task == "image":
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    else:
        # Real prompts of the challenge's class list, as the text classifiers build them.
        from models.clip.tokenizer import tokenize
        from pipeline.lists import read_class_list

        classes = read_class_list(C.ROOT / "data" / "classes_b.txt")
        prompts = [f"a photo of a {n}." for n in classes.clean_names[:batch]]
        x = tokenize(prompts)
    np.save(path, x)
    return path


def run_worker(
    library: str, model: str, task: str, weights: Path, inp: Path, tmp: Path, args
) -> dict:
    out = tmp / f"out-{library}-{model}-{task}.npy"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        library,
        "--model",
        model,
        "--task",
        task,
        "--weights",
        str(weights),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--repeats",
        str(args.repeats),
        "--torch-device",
        args.torch_device,
    ]
    attempts = 0
    while True:
        attempts += 1
        if args.quiet >= 0:
            C.wait_for_quiet(args.quiet)
        with C.Contention() as cpu, C.GpuMemoryMonitor() as gpu:
            r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if r.returncode != 0 or cpu.others_cores <= args.max_others or attempts > args.retries:
            break
        print(
            f"  ({library} {model} {task}: other processes used {cpu.others_cores:.2f} cores; "
            f"measuring again)",
            flush=True,
        )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(
            f"{library} {model} {task} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        )
    res = json.loads(lines[-1][len("RESULT ") :])
    res.update(
        load_before=cpu.load_before,
        load_after=cpu.load_after,
        others_cores=cpu.others_cores,
        attempts=attempts,
        gpu_peak_mb=gpu.peak_mb - gpu.baseline_mb,
    )
    res["out_path"] = str(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="vit,rn,convnext", help="comma list of vit, rn, convnext")
    ap.add_argument("--tasks", default="image,text", help="image and/or text (CLIP only)")
    ap.add_argument("--batch", type=int, default=32, help="CLIP images / texts per call")
    ap.add_argument("--convnext-batch", type=int, default=8, help="ConvNeXt images per call")
    ap.add_argument("--convnext-size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per subprocess")
    ap.add_argument("--rounds", type=int, default=1, help="subprocess pairs per encoder")
    ap.add_argument("--weights-dir", default="out/bench/weights")
    ap.add_argument("--torch-device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--quiet",
        type=float,
        default=0.3,
        metavar="CORES",
        help="before each run, wait until other processes use fewer cores than this "
        "(default 0.3; pass -1 to skip waiting)",
    )
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        metavar="CORES",
        help="measure a run again when other processes used more cores than this during it",
    )
    ap.add_argument("--retries", type=int, default=2, help="repeat measurements at most so often")
    ap.add_argument("--json", help="also write the results here")
    # subprocess mode (internal)
    ap.add_argument("--worker", choices=["jittor", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return

    weights = C.write_full_size_weights(args.weights_dir)
    models = [m for m in args.models.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    rows, records = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for model in models:
            jobs = []
            if model == "convnext":
                jobs.append(("image", "image", args.convnext_batch, args.convnext_size))
            else:
                if "image" in tasks:
                    jobs.append(("image", "image", args.batch, 224))
                if "text" in tasks:
                    jobs.append(("text", "text", args.batch, 0))
                    jobs.append(("text-full", "text", args.batch, 0))
            torch_text = None
            for task, kind, batch, size in jobs:
                inp = _inputs(tmp, model, kind, batch, size)
                # OpenAI's text tower always runs the full 77-token context: one PyTorch run
                # serves as the reference of both Jittor text paths.
                libs = ["jittor"] if task == "text-full" else ["jittor", "torch"]
                results: dict[str, list[dict]] = {lib: [] for lib in libs}
                for r in range(args.rounds):
                    order = libs if r % 2 == 0 else libs[::-1]
                    for lib in order:
                        res = run_worker(lib, model, task, weights[model], inp, tmp, args)
                        results[lib].append(res)
                        print(
                            f"  {MODELS[model]:16s} {task:9s} {lib:6s} median "
                            f"{res['median_s']:.3f} s/call, load {res['load_before']:.2f}->"
                            f"{res['load_after']:.2f}, other processes "
                            f"{res['others_cores']:.2f} cores",
                            flush=True,
                        )
                if task == "text":
                    torch_text = results["torch"]
                elif task == "text-full" and torch_text is not None:
                    results["torch"] = torch_text
                ref = results.get("torch")
                diff = float("nan")
                if ref is not None:
                    a = np.load(results["jittor"][-1]["out_path"])
                    b = np.load(ref[-1]["out_path"])
                    diff = float(np.abs(a - b).max() / np.abs(b).max())
                # Best over rounds of each run's median: other work only ever slows a run down.
                med = {k: float(np.min([x["median_s"] for x in v])) for k, v in results.items()}
                shown = ["jittor"] if task == "text-full" else libs
                for lib in shown:
                    v = results[lib]
                    name = {"text": "text (jittor trims)", "text-full": "text, full 77"}
                    row = {
                        "encoder": MODELS[model],
                        "input": f"{name.get(task, task)} x{batch}" + (f" @{size}" if size else ""),
                        "library": lib,
                        "items/s": batch / med[lib],
                        "ratio": med["torch"] / med[lib] if "torch" in med else float("nan"),
                        "RSS model MiB": float(np.median([x["rss_model_mb"] for x in v])),
                        "peak RSS MiB": float(np.max([x["peak_rss_mb"] for x in v])),
                        "GPU peak MiB": float(np.max([x["gpu_peak_mb"] for x in v])),
                        "load": f"{min(x['load_before'] for x in v):.1f}-"
                        f"{max(x['load_after'] for x in v):.1f}",
                        "others": float(np.max([x["others_cores"] for x in v])),
                        "max rel diff": diff if lib == "jittor" else float("nan"),
                        "threads": v[0]["threads"],
                    }
                    rows.append(row)
                    records.append({**row, "runs": v})
    cols = [
        "encoder", "input", "library", "items/s", "ratio", "RSS model MiB", "peak RSS MiB",
        "GPU peak MiB", "load", "others", "max rel diff", "threads",
    ]  # fmt: skip
    from models.runtime import jittor

    jt = jittor()
    print(f"\ndevice (Jittor): {C.device_description(jt)}")
    print("ratio = Jittor items/s / PyTorch items/s (> 1: Jittor faster); others = cores kept")
    print("busy by other processes during the runs (max over runs)")
    print(C.format_table(rows, cols))
    C.write_json(args.json, {"info": C.run_info(jt), "args": vars(args), "results": records})


if __name__ == "__main__":
    main()
