"""Run a pipeline script with timers wrapped around the functions that matter, for
bench/bench_pipeline.py:

    python bench/_instrument.py RECORD.json test.py [args...]

The script runs unchanged (``runpy``, as ``__main__``); the wrappers only accumulate wall time and
call counts per function (per backbone where the function belongs to one). At exit RECORD.json
receives those totals, the time the feature cache spent blocked waiting for decoded batches, the
process's peak resident memory (VmHWM) and its CPU time. Functions returning a lazy Jittor Var
are not wrapped; the wrapped ones all end in ``.numpy()`` or a sync, so their time is compute.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import resource
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOTALS: dict[str, dict] = {}
_ACTIVE: list[str] = []  # keys of the wrapped calls in progress, outermost first

# (module, attribute path, key): key may use {name} (the backbone's name) or {arg0}.
TARGETS = [
    ("pipeline.backbones", "ClipBackbone._load", "load CLIP {name}"),
    ("pipeline.backbones", "backbone_features", "features {arg0}"),
    ("pipeline.backbones", "ClipBackbone._encode", "encode {name}"),
    ("pipeline.backbones", "ClipBackbone.text_classifier", "text classifier {name}"),
    ("fewshot.zeroshot", "text_classifier_from_prompts", "text encoder"),
    ("fewshot.lpp", "LPPlusPlus.fit", "LP++ fit"),
    ("fewshot.inmap", "run_inmap", "InMaP"),
    ("pipeline.stages", "stage1_scores", "stage 1 scores"),
    ("pipeline.stages", "stage2_scores", "stage 2 scores"),
    ("pipeline.stages", "select_stage1", "stage-1 selection"),
    ("pipeline.expert", "train_expert", "expert: train_expert"),
    ("pipeline.expert", "_decode_train", "expert: decode + resize train"),
    ("pipeline.expert", "_view_features", "expert: view features"),
    ("pipeline.expert", "_eval_outputs", "expert: val features"),
    ("pipeline.expert", "_run_epochs", "expert: epochs"),
    ("pipeline.expert", "DogExpert.load", "expert: load"),
    ("pipeline.expert", "DogExpert.encode", "expert: encode"),
    ("pipeline.expert", "_to_numpy", "expert: device compute (_to_numpy)"),
    ("models.clip", "load", "clip.load"),
    ("models.convnext_v2", "load", "convnext_v2.load"),
]


def _add(key: str, seconds: float, items: int = 0) -> None:
    rec = TOTALS.setdefault(key, {"seconds": 0.0, "calls": 0, "items": 0, "nested": {}})
    rec["seconds"] += seconds
    rec["calls"] += 1
    rec["items"] += items
    # Charge this call to every enclosing wrapped call too (e.g. a model load that happens
    # inside the first feature extraction), so callers can subtract it.
    for outer in _ACTIVE:
        if outer != key:
            nested = TOTALS.setdefault(
                outer, {"seconds": 0.0, "calls": 0, "items": 0, "nested": {}}
            )["nested"]
            nested[key] = nested.get(key, 0.0) + seconds


def _items(args) -> int:
    """Batch size of an encoder call / length of an image list, where recognisable."""
    for a in args:
        shape = getattr(a, "shape", None)
        if shape is not None and len(shape) == 4:
            return int(shape[0])
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], (str, os.PathLike, tuple)):
            return len(a)
    return 0


def _wrap(fn, key: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        name = getattr(args[0], "name", "") if args else ""
        rest = args[1:] if name else args
        arg1 = next((a for a in args[1:] if isinstance(a, str)), "")
        k = key.format(name=name, arg0=arg1).strip()
        t = time.perf_counter()
        _ACTIVE.append(k)
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTIVE.pop()
            _add(k, time.perf_counter() - t, _items(rest))

    return wrapper


def _install() -> None:
    for module, attr, key in TARGETS:
        mod = importlib.import_module(module)
        owner = mod
        *parents, leaf = attr.split(".")
        for p in parents:
            owner = getattr(owner, p)
        original = owner.__dict__[leaf] if isinstance(owner, type) else getattr(owner, leaf)
        if isinstance(original, classmethod):
            wrapped = classmethod(_wrap(original.__func__, key))
        else:
            wrapped = _wrap(original, key)
        setattr(owner, leaf, wrapped)
    _install_loader_timer()


def _install_loader_timer() -> None:
    """Time the feature cache's waits for the next decoded batch."""
    import pipeline.features as features

    original = features.iter_view_batches

    def timed(*args, **kwargs):
        it = original(*args, **kwargs)
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            _add("blocked on loader (feature cache)", time.perf_counter() - t)
            if batch is None:
                return
            yield batch

    features.iter_view_batches = timed


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    record, script, *rest = sys.argv[1:]
    start = time.perf_counter()

    def dump() -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        Path(record).write_text(
            json.dumps(
                {
                    "wall_s": time.perf_counter() - start,
                    "cpu_s": r.ru_utime + r.ru_stime,
                    "peak_rss_mb": _peak_rss_mb(),
                    "functions": TOTALS,
                },
                indent=1,
            )
        )

    atexit.register(dump)
    os.chdir(ROOT)
    _install()
    sys.argv = [script, *rest]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main()
