"""bench/gpu_check.sh --dry-run: every section of the GPU check runs on the CPU at tiny sizes and
lands in summary.json, so the script cannot rot before a GPU machine runs it (docs/GPU.md).

The dry run compares the CPU with itself where the GPU run compares it with CUDA: those numbers
must be exact. What needs a GPU (Jittor's CUDA build, float16, GPU memory) must say it was not
measured, and the targets must be there with their limits, undecided where nothing was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["setup", "cuda setup", "first import", "warm import", "facts", "weights", "agree",
            "encoders", "pipeline"]  # fmt: skip
METHODS = ["InMaP official", "InMaP challenge", "LP++", "TransCLIP zero-shot", "TransCLIP few-shot"]
ENCODERS = ["small ViT", "small ModifiedResNet", "ConvNeXt-V2-atto"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, OUT=str(base / "out"), GPU_CHECK_WORK=str(base / "work"))
    env.pop("GPU_CHECK_BUDGET", None)
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert r.returncode == 0, f"dry run failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    return base / "out", json.loads((base / "out" / "summary.json").read_text())


def test_every_section_ran_and_is_logged(dry_run):
    out, s = dry_run
    assert (s["mode"], s["complete"]) == ("dry", True)
    assert list(s["sections"]) == SECTIONS
    for name, sec in s["sections"].items():
        want = "skipped: no GPU (dry run)" if name == "cuda setup" else "ok"
        assert sec["status"] == want, (name, sec)
    assert s["not measured"] == ["cuda setup", "float16", "GPU memory"]
    assert 0 < s["wall_s"] < s["budget_s"]
    # what the device tool brings back: at most 8 files, the log holding every section
    files = sorted(p.name for p in out.iterdir())
    assert files == ["encoders.json", "facts.json", "fewshot.json", "gpu_check.log",
                     "pipeline.json", "summary.json"]  # fmt: skip
    log = (out / "gpu_check.log").read_text()
    for name in SECTIONS[1:]:
        assert f"=== {name}:" in log, name


def test_machine_facts_and_import_times(dry_run):
    _, s = dry_run
    facts = s["machine"]
    assert facts["runtime"]["device"] == "cpu" and facts["runtime"]["cuda"] is None
    assert facts["machine"]["numpy"].startswith("1.")  # numpy 2 gives wrong values with Jittor
    assert facts["numpy_file"].endswith("numpy/__init__.py")
    assert set(facts) >= {"nvidia-smi", "nvcc --version"}
    imports = s["jittor_import_s"]
    assert imports["cuda setup (Jittor's CUDA build)"] is None
    assert imports["first import"] > 0 and imports["warm import"] > 0


def test_cpu_agrees_with_itself_exactly(dry_run):
    _, s = dry_run
    rows = s["agreement"]["few-shot methods"]
    assert [r["method"] for r in rows] == METHODS
    for r in rows:  # the second CPU run against the first
        got = [r[f"jittor-cpu 2 vs jittor-cpu {x}"] for x in ("max abs diff", "max rel diff")]
        assert got + [r["jittor-cpu 2 vs jittor-cpu same top-1 %"]] == [0, 0, 100], r
    enc = s["agreement"]["encoders"]
    assert [r["encoder"] for r in enc] == ENCODERS
    for r in enc:
        key = "float32 vs cpu float32"
        assert (r[f"{key} max abs diff"], r[f"{key} same top-1 %"]) == (0, 100), r


def test_throughput_and_pipeline_stages(dry_run):
    _, s = dry_run
    for r in s["throughput"]:
        assert r["images"] == 4 and r["float32 img/s"] > 0 and r["float16 img/s"] is None
    p = s["pipeline"]
    assert p["sizes"]["test"] == 20 and p["process_s"] > 0
    assert list(p["scripts"]) == ["train", "test"]
    for rec in p["scripts"].values():
        assert rec["wall_s"] > 0 and rec["device"] == "cpu" and rec["gpu_peak_mib"] is None
    assert {"features train", "features val", "expert"} <= set(p["scripts"]["train"]["steps_s"])
    assert {"stage 1 (InMaP)", "stage 3 (expert)"} <= set(p["scripts"]["test"]["steps_s"])


def test_targets_recorded(dry_run):
    _, s = dry_run
    t = {x["target"]: x for x in s["targets"]}
    test, train = t["test.sh: test.py on the test images"], t["train.sh: process.py + train.py"]
    assert (test["limit"], train["limit"]) == (60, 120)
    assert test["measured"] == s["pipeline"]["scripts"]["test"]["wall_s"]
    assert train["measured"] > s["pipeline"]["scripts"]["train"]["wall_s"]
    assert test["pass"] == (test["measured"] <= 60)
    for name in ("GPU memory of train.py", "GPU memory of test.py"):
        assert (t[name]["limit"], t[name]["measured"], t[name]["pass"]) == (8192, None, None)
    for e in ENCODERS:  # float16 is not run on the CPU
        assert t[f"fp16 top-1 agreement, {e}"]["pass"] is None
