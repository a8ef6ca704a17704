"""Benchmarks (not tests), run from the repository root as ``python -m bench.NAME --help``:
encoders, feature_path, fewshot, fp16, pipeline (docs/PERFORMANCE.md: what each measures, its
figures). Every script takes ``--json PATH`` and writes ``{"info": machine and device, "args":
..., "results": [rows]}`` there (bench/gpu_check.sh reads them). Here: what they share. Weights
are random (``pipeline.synthetic.write_weights``): speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = "out/bench/weights"
NAMES = {  # the encoders of weights(size=...)
    "full": {"vit": "ViT-B/32", "rn": "RN101", "convnext": "ConvNeXt-V2-base"},
    "demo": {"vit": "small ViT", "rn": "small ModifiedResNet", "convnext": "ConvNeXt-V2-atto"},
}


def rss_mb(peak: bool = False) -> float:
    """Resident set of this process, or its high-water mark since :func:`reset_peak_rss`, MiB."""
    field = "VmHWM:" if peak else "VmRSS:"
    lines = Path("/proc/self/status").read_text().splitlines()
    return next((float(ln.split()[1]) / 1024 for ln in lines if ln.startswith(field)), math.nan)


def reset_peak_rss() -> None:
    """Reset the high-water mark to the current RSS (Linux >= 4.0; ignored elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def load_average() -> float:
    """One-minute load average: on a shared machine, whether others were busy too."""
    return round(os.getloadavg()[0], 2)


def gpu_names() -> list[str]:
    cmd = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):  # no nvidia-smi, or it hangs
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine() -> dict[str, Any]:
    """Versions and machine for the JSON records."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": f"{cpu or platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "gpus": gpu_names(),
        "load_average": load_average(),
    }


def _floats(text: str) -> list[float]:
    """The numbers among nvidia-smi's lines ("[N/A]" and a cut last line left out)."""
    return [float(x) for x in text.split() if x.replace(".", "", 1).isdigit()]


class GpuMemory:
    """``used_mb``: the peak GPU memory in use on GPU 0 while the context was open (every process:
    what decides whether a job fits the card) above its level at the start, sampled every 100 ms
    by ``nvidia-smi -lms`` into a file; NaN without nvidia-smi."""

    QUERY = ["nvidia-smi", "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]

    def __enter__(self) -> GpuMemory:
        self.used_mb, self._proc = math.nan, None
        if shutil.which("nvidia-smi"):
            start = subprocess.run(self.QUERY, capture_output=True, text=True).stdout
            self._baseline = (_floats(start) or [math.nan])[0]
            self._log = tempfile.TemporaryFile("w+")
            self._proc = subprocess.Popen([*self.QUERY, "-lms=100"], stdout=self._log, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            time.sleep(0.2)
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._log.seek(0)
            self.used_mb = max(_floats(self._log.read()), default=math.nan) - self._baseline
            self._log.close()


def report(result: dict) -> None:
    """A child process's answer to :func:`run_child`."""
    print("RESULT " + json.dumps(result, default=float), flush=True)


def run_child(args: Sequence[str]) -> dict:
    """``python -m <args>`` in a fresh process (its own memory, the whole machine); returns the
    dict of its RESULT line, with the load average before and after and its peak GPU memory."""
    before = load_average()
    with GpuMemory() as gpu:
        r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    res = json.loads(lines[-1][len("RESULT ") :])
    res.update(load=f"{before:.1f}-{load_average():.1f}", gpu_peak_mb=gpu.used_mb)
    return res


def table(rows: Sequence[dict]) -> str:
    """A Markdown table; floats with 3 significant digits (integers from 100 on), NaN as "-"."""
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if v != v else f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return "" if v is None else str(v)

    lines = [columns, ["---"] * len(columns)] + [[fmt(r.get(c)) for c in columns] for r in rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def parser(doc: str) -> argparse.ArgumentParser:
    """The scripts' argument parser (pipeline.cli), with ``--json``."""
    from pipeline.cli import parser as script_parser

    ap = script_parser(doc, common=False)
    ap.add_argument("--json", metavar="PATH", help="also write the results here (JSON)")
    return ap


def finish(args: argparse.Namespace, rows: list[dict], jittor=False, **extra: Any) -> None:
    """Print the table and the device (with ``jittor``: the one models.runtime chose, Jittor
    imported if it is not yet); write ``--json`` when given."""
    info = machine()
    where = f"GPUs: {info['gpus'] or 'none'}"
    if jittor:
        from models.runtime import describe, device_record

        info.update(device_record())
        where = describe()
    print(f"\n{info['cpu']}; {where}; load average now {info['load_average']}")
    print(table(rows))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"info": info, "args": vars(args), "results": rows, **extra}
        path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def weights(folder: str = WEIGHTS_DIR, size: str = "full") -> dict[str, Path]:
    """Random encoders (``NAMES[size]``: full-size, or the demo's small members), written in the
    upstream formats and converted as downloads are; kept for later runs.
    Call before importing Jittor (it imports torch, which must come first)."""
    from pipeline.env import WEIGHT_FILES

    files = {k: Path(folder) / size / w.default for k, w in WEIGHT_FILES.items()}
    if all(p.is_file() for p in files.values()):
        return files  # without importing torch: Jittor may be loaded already
    from pipeline.synthetic import write_weights

    return write_weights(Path(folder) / size, size)


def photos(n: int, folder: str = "out/bench/photos") -> list[str]:
    """``n`` photo-like JPEGs (long side 300-640 px, like the challenge's), kept for later runs."""
    from pipeline.synthetic import photo_dataset

    root = Path(folder) / f"n{n}"
    photo_dataset(root, train_per_class=0, test_images=n)
    return [str(root / "TestSet" / f"image_{i + 1}.jpg") for i in range(n)]
