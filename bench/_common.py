"""Shared plumbing of the benchmarks: machine load, memory, device, tables, JSON, and the
full-size random-weight checkpoints and synthetic photo datasets the pipeline benchmarks need.

Nothing here is imported by the pipeline. Memory figures are Linux-specific: the resident set
(``VmRSS``) and its high-water mark (``VmHWM``) from ``/proc/self/status``; the mark is reset by
writing 5 to ``/proc/self/clear_refs`` (Linux >= 4.0), so a peak can be taken over one phase of
a process. GPU memory is sampled with ``nvidia-smi`` (what the driver reserved for the process,
which is what decides whether a job fits a card), or read from Jittor's allocator where that is
all there is.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Full-size OpenAI CLIP configurations (what OpenAI's build_model infers from the released files).
CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B/32": dict(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    ),
    "RN101": dict(
        embed_dim=512,
        image_resolution=224,
        vision_layers=(3, 4, 23, 3),
        vision_width=64,
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    ),
}


# ----------------------------------------------------------------------------- machine state


def load_average() -> float:
    """One-minute load average (how many runnable threads compete for the cores)."""
    return float(os.getloadavg()[0])


def cpu_description() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def gpu_names() -> list[str]:
    """Names of the GPUs nvidia-smi reports (empty without a driver)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def device_description(jt=None) -> str:
    """What a Jittor run uses: "cuda: <GPU>" or "cpu: <model>, N cores"."""
    if jt is not None and bool(jt.flags.use_cuda):
        names = gpu_names()
        return "cuda: " + (names[0] if names else "unknown GPU")
    return "cpu: " + cpu_description()


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (user+nice+system+irq+softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    steal = int(fields[7]) if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Contention:
    """How many cores *other* processes kept busy while the context was open (this process and
    its waited-for children excluded): ``others_cores``. The one-minute load average lags and
    counts our own threads; this does neither. Use it around ``subprocess.run``."""

    def __enter__(self) -> Contention:
        import resource

        self._t = time.perf_counter()
        self._busy = _busy_seconds()
        self._kids = _children_seconds()
        r = resource.getrusage(resource.RUSAGE_SELF)
        self._self = r.ru_utime + r.ru_stime
        self.load_before = load_average()
        return self

    def __exit__(self, *exc) -> None:
        import resource

        wall = time.perf_counter() - self._t
        r = resource.getrusage(resource.RUSAGE_SELF)
        ours = (_children_seconds() - self._kids) + (r.ru_utime + r.ru_stime - self._self)
        self.wall_s = wall
        self.ours_cores = ours / wall if wall > 0 else float("nan")
        self.others_cores = max(0.0, (_busy_seconds() - self._busy - ours) / wall) if wall else 0.0
        self.load_after = load_average()


def wait_for_quiet(
    max_cores: float = 0.3, window_s: float = 3.0, timeout_s: float = 900.0
) -> float:
    """Wait (up to ``timeout_s``) until other processes use less than ``max_cores`` over a
    ``window_s`` window; returns the last measured use. Benchmarks on a shared machine call it
    before each measurement so that a test suite started by someone else does not land in it."""
    t0 = time.perf_counter()
    while True:
        b0 = _busy_seconds()
        time.sleep(window_s)
        used = (_busy_seconds() - b0) / window_s
        if used < max_cores or time.perf_counter() - t0 > timeout_s:
            return used


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def rss_mb() -> float:
    """Current resident set of this process, MiB."""
    return _status_kb("VmRSS") / 1024.0


def peak_rss_mb() -> float:
    """High-water mark of the resident set since start or the last :func:`reset_peak_rss`, MiB."""
    return _status_kb("VmHWM") / 1024.0


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (False where the kernel does not allow it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class GpuMemoryMonitor:
    """Peak GPU memory in use (MiB, all processes on GPU 0) while the context is open, sampled by
    ``nvidia-smi -lms``. ``peak_mb`` is NaN without nvidia-smi."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.peak_mb = float("nan")
        self.baseline_mb = float("nan")
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> GpuMemoryMonitor:
        if not shutil.which("nvidia-smi"):
            return self
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        query += ["-i", "0"]
        try:
            self.baseline_mb = float(subprocess.run(query, capture_output=True, text=True).stdout)
        except (ValueError, OSError):
            pass
        self._proc = subprocess.Popen(
            [*query, f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, text=True
        )

        def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                try:
                    v = float(line.strip())
                except ValueError:
                    continue
                if not v <= self.peak_mb:  # NaN-safe max
                    self.peak_mb = v

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            time.sleep(self.interval_ms / 1000.0 * 2)
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- timing


class Stopwatch:
    """Accumulates wall time per named phase: ``with sw("encode"): ...``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, name: str):
        sw = self

        class _Phase:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                sw.totals[name] = sw.totals.get(name, 0.0) + time.perf_counter() - self.t
                sw.counts[name] = sw.counts.get(name, 0) + 1

        return _Phase()


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least squares on log-log: y ~ a * x^b; returns (a, b)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    b, log_a = np.polyfit(lx, ly, 1)
    return float(np.exp(log_a)), float(b)


def fit_loglinear(features: np.ndarray, y: Sequence[float]) -> np.ndarray:
    """Least squares of log y on [1, log x_1, log x_2, ...]: returns [log a, b_1, b_2, ...]."""
    A = np.column_stack([np.ones(len(y)), np.log(np.asarray(features, float))])
    coef, *_ = np.linalg.lstsq(A, np.log(np.asarray(y, float)), rcond=None)
    return coef


# ----------------------------------------------------------------------------- output


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``; floats with 3 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            if abs(v) >= 100:
                return f"{v:.0f}"
            return f"{v:.3g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


def write_json(path: Optional[str | os.PathLike], obj: Any) -> None:
    """Write ``obj`` as indented JSON when a path is given (parents created)."""
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def run_info(jt=None) -> dict[str, Any]:
    """Versions and machine, for the JSON records."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": cpu_description(),
        "gpus": gpu_names(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if jt is not None:
        info["jittor"] = jt.__version__
        info["device"] = device_description(jt)
    return info


# ----------------------------------------------------------------------------- checkpoints


def write_full_size_weights(folder: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Random-weight ViT-B/32, RN101 and ConvNeXt-V2-base in the upstream formats (OpenAI
    TorchScript archives, the official ``{'model': sd}`` file), converted with models.convert
    exactly as users convert the released files. Existing converted files are reused.

    Needs torch (imported here before Jittor). Returns {"vit", "rn", "convnext"} -> safetensors.
    """
    folder = Path(folder)
    targets = {
        "vit": folder / "ViT-B-32.safetensors",
        "rn": folder / "RN101.safetensors",
        "convnext": folder / "convnextv2_base.safetensors",
    }
    if all(p.is_file() for p in targets.values()):
        return targets
    import torch  # noqa: F401  (before Jittor)

    from models import convnext_v2
    from models.convert import convert, write_openai_archive, write_torch_checkpoint
    from pipeline.demo import clip_state

    upstream = folder / "upstream"
    for i, (name, arch) in enumerate((("vit", "ViT-B/32"), ("rn", "RN101"))):
        if targets[name].is_file():
            continue
        cfg = CLIP_CONFIGS[arch]
        src = upstream / f"{arch.replace('/', '-')}.pt"
        write_openai_archive(
            clip_state(cfg, seed + i),
            src,
            input_resolution=cfg["image_resolution"],
            context_length=cfg["context_length"],
            vocab_size=cfg["vocab_size"],
        )
        convert(src, targets[name])
    if not targets["convnext"].is_file():
        src = upstream / "convnextv2_base_1k_224_ema.pt"
        write_torch_checkpoint(convnext_v2.random_state_dict("base", seed=seed), src, wrap="model")
        convert(src, targets["convnext"])
    shutil.rmtree(upstream, ignore_errors=True)
    return targets


# ----------------------------------------------------------------------------- datasets


def photo_like(rng: np.random.Generator, w: int, h: int, tint: np.ndarray) -> np.ndarray:
    """A uint8 [h, w, 3] image that compresses like a photo: smooth waves, a tint and noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.004, 0.04, 3).astype(np.float32)
    ph = rng.uniform(0, 6.3, 3).astype(np.float32)
    img = np.stack([np.sin(f[c] * (xx + (c + 1) * yy) + ph[c]) for c in range(3)], -1)
    img = img * 70 + 255 * tint.astype(np.float32)
    img += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def _image_size(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = int(long * rng.uniform(0.6, 1.0))
    return (long, short) if rng.random() < 0.7 else (short, long)


def _write_photo(task: tuple[str, tuple[int, int], list[float], list[int]]) -> None:
    """Worker: one photo-like JPEG, its size and pixels drawn from its own seed."""
    from PIL import Image

    path, long_side, tint, seed = task
    rng = np.random.default_rng(seed)
    w, h = _image_size(rng, long_side)
    Image.fromarray(photo_like(rng, w, h, np.asarray(tint))).save(path, quality=90)


def make_dataset(
    folder: str | os.PathLike,
    classes_file: str | os.PathLike,
    *,
    train_per_class: int,
    test_images: int,
    unseen_domains: Sequence[str] = ("Stanford-Cars",),
    long_side: tuple[int, int] = (300, 640),
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """A dataset in the challenge layout over a real class list: ``classes_b.txt``,
    ``train.txt`` + ``TrainSet/`` (``train_per_class`` JPEGs per class outside
    ``unseen_domains``) and ``TestSet/image_<n>.jpg`` (``test_images`` JPEGs, labels drawn
    uniformly over all classes, answers in ``test_labels.txt``). Images are photo-sized JPEGs
    (long side drawn from ``long_side``), each class with its own tint: what matters here is
    decoding and encoding cost, not accuracy. Every image has its own seed, so the files are
    the same whatever the number of processes writing them. A complete folder (``BENCH.json``
    matching the parameters) is reused.
    """
    import concurrent.futures as cf

    from tqdm.auto import tqdm

    from pipeline.lists import read_class_list

    folder = Path(folder)
    params = {
        "classes": str(Path(classes_file).resolve()),
        "train_per_class": train_per_class,
        "test_images": test_images,
        "unseen_domains": list(unseen_domains),
        "long_side": list(long_side),
        "seed": seed,
        "version": 2,
    }
    marker = folder / "BENCH.json"
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    classes = read_class_list(classes_file)
    shutil.copyfile(classes_file, folder / "classes_b.txt")
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0.2, 0.8, (classes.num_classes, 3)).tolist()
    tasks, train_lines = [], []
    for c, dom in enumerate(classes.domains):
        if dom in unseen_domains:
            continue
        sub = folder / "TrainSet" / (dom or "misc") / f"c{c:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            tasks.append((str(sub / f"{k}.jpg"), long_side, tints[c], [seed, 1, c, k]))
            train_lines.append(f"{sub.relative_to(folder).as_posix()}/{k}.jpg {c}")
    test_dir = folder / "TestSet"
    test_dir.mkdir()
    labels = rng.integers(0, classes.num_classes, test_images).tolist()
    lines = []
    for i, c in enumerate(labels):
        tasks.append((str(test_dir / f"image_{i + 1}.jpg"), long_side, tints[c], [seed, 2, i]))
        lines.append(f"image_{i + 1}.jpg {c}")
    with cf.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        done = pool.map(_write_photo, tasks, chunksize=32)
        for _ in tqdm(done, total=len(tasks), desc="bench dataset", disable=not progress):
            pass
    (folder / "train.txt").write_text("".join(x + "\n" for x in train_lines))
    (folder / "test_labels.txt").write_text("".join(x + "\n" for x in lines))
    summary = {"params": params, "train_images": len(train_lines), "test_images": test_images}
    marker.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def official_to_hf(sd: dict[str, np.ndarray]) -> dict[str, Any]:
    """ConvNeXt-V2 official key names -> transformers' ConvNextV2ForImageClassification names
    (torch tensors): the stem is embeddings.patch_embeddings + embeddings.layernorm, the
    downsampling layers and blocks live under encoder.stages, the final norm is layernorm, the
    head is classifier; GRN gamma/beta are weight/bias."""
    import torch

    out = {}
    for key, value in sd.items():
        part = key.split(".")
        if key.startswith("downsample_layers.0."):
            name = "convnextv2.embeddings."
            name += ("patch_embeddings", "layernorm")[int(part[2])] + "." + part[3]
        elif key.startswith("downsample_layers."):
            name = f"convnextv2.encoder.stages.{part[1]}.downsampling_layer.{part[2]}.{part[3]}"
        elif key.startswith("stages."):
            module = "layernorm" if part[3] == "norm" else part[3]
            leaf = {"gamma": "weight", "beta": "bias"}.get(part[4], part[4])
            name = f"convnextv2.encoder.stages.{part[1]}.layers.{part[2]}.{module}.{leaf}"
        elif key.startswith("norm."):
            name = "convnextv2.layernorm." + part[1]
        else:
            name = "classifier." + part[1]
        out[name] = torch.from_numpy(np.array(value, copy=True))
    return out
