#!/usr/bin/env bash
# The GPU check of issue 15: one run on a GPU machine that reaches no package registry, within
# 5 minutes on one H200, and a dry run of the same sections on the CPU with tiny sizes.
#
#   bash bench/gpu_check.sh            GPU machine: full-size models, Python packages from .whl/
#   bash bench/gpu_check.sh --dry-run  here, on the CPU: demo-size weights, a handful of images
#   bash bench/gpu_check.sh --wheels   here (registries reachable): fill .whl/ for the GPU machine
#
# Sections, each under a time budget (GPU_CHECK_BUDGET, default 300 s, for the whole run; each
# section also has its own), each a `python3 -m ...` that writes JSON:
#   setup        Jittor and the pins from .whl/ into $GPU_CHECK_SITE (/tmp/site) when Python has
#                no Jittor, ahead of the system's numpy 2 on PYTHONPATH; Debian's oneDNN from
#                .whl/deb/ for Jittor's CPU convolutions; scripts/jittor_concurrent.py
#   cuda setup   scripts/cuda_setup.py, as scripts/setup.sh runs it: the CUDA 13 patch and Jittor's
#                CUDA build (minutes, the first time)
#   first import, warm import   `from models.runtime import jittor; jittor()`, twice
#   facts        nvidia-smi, nvcc --version, models.runtime.device_record()  -> facts.json
#   weights      random converted weights, no torch (pipeline.synthetic weights --direct)
#   agree        bench.fewshot speed: InMaP, LP++, TransCLIP on the CPU and on CUDA -> fewshot.json
#   encoders     bench.fp16 --devices cpu,cuda: CLIP ViT and ModifiedResNet, ConvNeXt-V2, CPU float32
#                against CUDA float32 and float16, images/s, GPU memory      -> encoders.json
#   pipeline     bench.pipeline: process.py, train.py, test.py on 4305 images, stage by stage
#                (train.sh and test.sh run these after scripts/setup.sh)     -> pipeline.json
# then summary.json: all of it, the targets (test <= 60 s, train <= 2 min, GPU memory < 8 GiB,
# fp16 top-1 agreement >= 99.5%) passed or not, and each section's status. Everything printed goes
# to gpu_check.log too. Files land in $OUT (default out/gpu_check; at most 8 files, as the device
# tool returns); weights, images and Jittor's kernels in $GPU_CHECK_WORK (out/gpu_check_work) and
# $JITTOR_HOME. Exit status 1 when a section failed, timed out or did not fit the budget.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mode=gpu
case "${1:-}" in
    "") ;;
    --dry-run) mode=dry ;;
    --wheels) mode=wheels ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run | --wheels]" >&2 && exit 2 ;;
esac

# ---------------------------------------------------------------------------- --wheels (here)
if [ "$mode" = wheels ]; then
    # shellcheck source=scripts/env.sh
    source scripts/env.sh
    rm -rf .whl && mkdir -p .whl/deb
    # pyproject.toml's runtime pins for the GPU machine's Python 3.12, less matplotlib (only the
    # report needs it), plus ftfy's wcwidth at the venv's version; Jittor is a source package.
    pins=$(python -c 'import tomllib, importlib.metadata as m
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(*[d for d in deps if not d.startswith(("jittor", "matplotlib"))], "wcwidth==" + m.version("wcwidth"))')
    # shellcheck disable=SC2086
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pins
    python -m pip wheel -q --no-deps -w .whl jittor==1.3.11.0
    (cd .whl/deb && apt-get download libdnnl2 libdnnl-dev ocl-icd-libopencl1)
    ls -l .whl .whl/deb
    whl=$(du -cb .whl | tail -1 | cut -f1)
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    echo ".whl: $((whl >> 20)) MiB; with the tracked files $(((whl + tree) >> 20)) MiB (the device tool carries 64 MiB)"
    [ $((whl + tree)) -lt $((60 << 20)) ] || { echo "too big for the device tool" >&2 && exit 1; }
    exit 0
fi

OUT="${OUT:-$ROOT/out/gpu_check}"
WORK="${GPU_CHECK_WORK:-$ROOT/out/gpu_check_work}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)" WORK="$(cd "$WORK" && pwd)"
if [ "$mode" = dry ]; then
    BUDGET="${GPU_CHECK_BUDGET:-900}" size=demo
    export FEWSHOT_DEVICE=cpu
else
    BUDGET="${GPU_CHECK_BUDGET:-300}" size=full
    command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: no GPU here (--dry-run?)" >&2 && exit 2; }
fi
START=$EPOCHREALTIME
RESERVE=10 # seconds kept for the summary

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$WORK/sections.tsv"; }

# section NAME BUDGET COMMAND...: run it under min(BUDGET, what is left) and record how it went.
section() {
    local name=$1 own=$2 rc=0 t
    shift 2
    local left=$((BUDGET - RESERVE - EPOCHSECONDS + ${START%.*}))
    local budget=$((own < left ? own : left))
    echo "=== $name: $(date +%T), budget ${budget} s: $*"
    if [ "$budget" -lt 5 ]; then
        record "$name" "skipped: out of time" 0 "$budget"
        return 0
    fi
    t=$EPOCHREALTIME
    timeout -k 10 "$budget" "$@" || rc=$?
    case $rc in
        0) record "$name" ok "$(since "$t")" "$budget" ;;
        124 | 137) record "$name" "timed out after $budget s" "$(since "$t")" "$budget" ;;
        *) record "$name" "failed (exit $rc)" "$(since "$t")" "$budget" ;;
    esac
    echo "=== $name: $(tail -1 "$WORK/sections.tsv" | cut -f2) in $(since "$t") s"
}

skip() { # skip NAME REASON
    echo "=== $1: skipped, $2"
    record "$1" "skipped: $2" 0 0
}

# Jittor and the pins: the current Python's (the venv of scripts/setup.sh), else the wheels of
# .whl/ into $SITE, first on PYTHONPATH so that their numpy 1.26 wins over the system's numpy 2.
setup() {
    # shellcheck source=scripts/env.sh
    source scripts/env.sh
    local have='import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in "jittor ftfy regex safetensors yaml tqdm PIL".split()))'
    if ! python3 -c "$have"; then # installed once only: a new copy of Jittor's sources rebuilds it
        export PYTHONPATH="$SITE:$PYTHONPATH"
        if ! python3 -c "$have"; then
            compgen -G ".whl/*.whl" >/dev/null ||
                { echo "no Jittor and no .whl/: run bash bench/gpu_check.sh --wheels where pip works" && return 1; }
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$SITE" .whl/*.whl || return 1
        fi
    fi
    python3 -c 'import numpy, sys; print("numpy", numpy.__version__, "from", numpy.__file__)
sys.exit(int(numpy.__version__.split(".")[0]) >= 2)' ||
        { echo "numpy 2 would give wrong values with Jittor 1.3.11" && return 1; }
    # Jittor's CPU convolutions: Debian's oneDNN, linked as scripts/setup.sh links it; without it
    # Jittor would download its own build (no network there): use_mkl=0, slow convolutions.
    local mkl="$JITTOR_HOME/.cache/jittor/mkl" deb
    if [ ! -e "$mkl/dnnl_lnx_2.2.0_cpu_gomp/lib/libmkldnn.so" ] && compgen -G ".whl/deb/*.deb" >/dev/null; then
        mkdir -p "$mkl/debian"
        for deb in .whl/deb/*.deb; do dpkg-deb -x "$deb" "$mkl/debian" || return 1; done
        mkdir -p "$mkl/dnnl_lnx_2.2.0_cpu_gomp/lib"
        ln -sfn "$mkl/debian/usr/include" "$mkl/dnnl_lnx_2.2.0_cpu_gomp/include"
        ln -sfn "$mkl/debian/usr/lib/x86_64-linux-gnu/libdnnl.so" "$mkl/dnnl_lnx_2.2.0_cpu_gomp/lib/libmkldnn.so"
    fi
    if [ -d "$mkl/debian" ]; then
        export LD_LIBRARY_PATH="$mkl/debian/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    elif [ ! -e "$mkl/dnnl_lnx_2.2.0_cpu_gomp/lib/libmkldnn.so" ]; then
        export use_mkl=0
    fi
    # Jittor builds against Python's headers, found through python3.X-config, which a venv's bin/
    # lacks (the GPU machine's python3 is a venv's): its base's, else a stand-in from sysconfig.
    local cfg base inc ext
    cfg=$(python3 -c 'import os, sys, sysconfig
v, exe, base = f"python3.{sys.version_info.minor}-config", sys.executable, sys.base_prefix
jittor_looks = [f"{os.path.dirname(exe)}/{v}", exe + "-config", f"/usr/bin/{v}", f"/usr/local/bin/{v}",
                f"{os.path.dirname(exe)}/python3-config"]
if not any(map(os.path.isfile, jittor_looks)):
    inc = sysconfig.get_paths()["include"]
    print(f"{base}/bin/{v}" if os.path.isfile(f"{base}/bin/{v}") else "",
          inc if os.path.isfile(f"{inc}/Python.h") else "", sysconfig.get_config_var("EXT_SUFFIX"), sep="|")')
    if [ -z "${python_config_path:-}" ] && [ -n "$cfg" ]; then
        IFS='|' read -r base inc ext <<<"$cfg"
        [ -n "$inc" ] || { echo "no Python.h for $(python3 --version): Jittor cannot build" && return 1; }
        if [ -z "$base" ]; then
            base="$WORK/python3-config"
            # shellcheck disable=SC2016
            printf '#!/bin/sh\ncase "$1" in --includes) echo "-I%s" ;; --extension-suffix) echo "%s" ;; esac\n' \
                "$inc" "$ext" >"$base" && chmod +x "$base"
        fi
        export python_config_path="$base"
        echo "python_config_path=$base"
    fi
    python3 scripts/jittor_concurrent.py >/dev/null || return 1
}

FACTS='import json, os, shutil, subprocess, sys
import numpy
import bench
from models.runtime import device_record
def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() if shutil.which(cmd[0]) else None
query = "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm"
facts = {"machine": bench.machine(), "numpy_file": numpy.__file__, "runtime": device_record(),
         "nvidia-smi": run("nvidia-smi", query, "--format=csv"),
         "nvcc --version": run(os.environ.get("nvcc_path") or "nvcc", "--version")}
json.dump(facts, open(sys.argv[1], "w"), indent=1)
print(json.dumps(facts["runtime"]))'

main() {
    echo "bench/gpu_check.sh ($mode): $(date -Is), budget $BUDGET s, $(uname -srm), $(nproc) cores"
    : >"$WORK/sections.tsv"
    local t=$EPOCHREALTIME rc=0 problem=""
    echo "=== setup"
    setup || rc=$?
    record setup "$([ $rc = 0 ] && echo ok || echo "failed (exit $rc)")" "$(since "$t")" 0
    [ $rc = 0 ] || problem="the set-up failed"
    echo "python3: $(command -v python3), $(python3 --version); PYTHONPATH=$PYTHONPATH"
    if [ -n "$problem" ]; then
        skip "cuda setup" "$problem"
    elif [ "$mode" = dry ]; then
        skip "cuda setup" "no GPU (dry run)"
    else
        section "cuda setup" 240 python3 scripts/cuda_setup.py "$FEWSHOT_CUDA_ENV"
        # shellcheck source=scripts/env.sh
        source scripts/env.sh
        if [ -z "${nvcc_path:-}" ]; then
            problem="CUDA not usable: ${FEWSHOT_CUDA_PROBLEM:-see scripts/cuda_setup.py above}"
            tail -n 30 "${FEWSHOT_CUDA_ENV%.env}.log" 2>/dev/null || true
        fi
    fi
    local imp='from models.runtime import jittor; jittor()'
    run_or_skip() { if [ -n "$problem" ]; then skip "$1" "$problem"; else section "$@"; fi; }
    run_or_skip "first import" 600 python3 -c "$imp"
    run_or_skip "warm import" 60 python3 -c "$imp"
    run_or_skip facts 60 python3 -c "$FACTS" "$OUT/facts.json"
    [ "$mode" = dry ] || nvidia-smi || true
    run_or_skip weights 120 python3 -m pipeline.synthetic weights "$WORK/weights/$size" --size "$size" --direct
    local common=(--weights-dir "$WORK/weights")
    local agree=(--skip-torch --repeats 1 --methods "$METHODS" --json "$OUT/fewshot.json")
    if [ "$mode" = dry ]; then
        run_or_skip agree 300 python3 -m bench.fewshot speed --devices cpu,cpu --n 200 --classes 20 \
            --lpp-classes 15 --shots 2 --iters 10 --epochs 5 "${agree[@]}"
        run_or_skip encoders 300 python3 -m bench.fp16 --size demo --n 4 --batch 2 --convnext-size 64 \
            --devices cpu,cpu --ref-n 4 --dtypes float32 --photos-dir "$WORK/photos" "${common[@]}" \
            --json "$OUT/encoders.json"
        # every choice pinned (train.py's search is the end-to-end tests' business), small expert
        local pin=()
        for x in 'transclip: "off"' "flip_tta: false" "inmap_prompts: bare" "lpp_views: orig" \
            "seen_head: lpp" "expert_integration: switch" "expert_epochs: 2" \
            "expert_eval_size: 128" "expert_train_resize: 112" "expert_train_crop: 96"; do
            pin+=(--set "$x")
        done
        run_or_skip pipeline 600 python3 -m bench.pipeline --size demo --class-step 40 --test-images 20 \
            --val-per-class 2 --lpp-epochs 10 "${pin[@]}" --out "$WORK/pipeline" "${common[@]}" \
            --json "$OUT/pipeline.json"
    else
        run_or_skip agree 60 python3 -m bench.fewshot speed --devices cpu,cuda --iters 200 "${agree[@]}"
        run_or_skip encoders 90 python3 -m bench.fp16 --size full --n 512 --batch 64 \
            --devices cpu,cuda --ref-n 8 --photos-dir "$WORK/photos" "${common[@]}" \
            --json "$OUT/encoders.json"
        run_or_skip pipeline 600 python3 -m bench.pipeline --full --out "$WORK/pipeline" \
            "${common[@]}" --json "$OUT/pipeline.json"
    fi
    for f in "$WORK"/pipeline/*/log-*.txt; do # the scripts' own logs, for a failure's cause
        [ -f "$f" ] || continue
        echo "--- last lines of $f" && tail -n 15 "$f"
    done
    echo "=== summary"
    python3 - "$OUT" "$WORK" "$mode" "$BUDGET" "$(since "$START")" <<'PY'
"""Merge the sections' JSON files into summary.json, with the targets of issue 15."""
import json, math, sys
from pathlib import Path

out, work, mode, budget, wall = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]


def read(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {}


def clean(x):  # NaN (no nvidia-smi) as null: valid JSON
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


sections = {}
for line in (work / "sections.tsv").read_text().splitlines():
    name, status, secs, b = line.split("\t")
    sections[name] = {"status": status, "seconds": float(secs), "budget_s": int(b)}
facts, fewshot, enc, pipe = (read(f"{n}.json") for n in ("facts", "fewshot", "encoders", "pipeline"))


def secs(name):
    return sections[name]["seconds"] if sections.get(name, {}).get("status") == "ok" else None


vs = [k for r in enc.get("results", []) for k in r if " vs " in k]
agreement = {
    "few-shot methods": [{k: v for k, v in r.items() if k in ("method", "size") or " vs " in k}
                         for r in fewshot.get("results", [])],
    "encoders": [{"encoder": r["encoder"], **{k: r[k] for k in vs if k in r}}
                 for r in enc.get("results", [])],
}
throughput = [{k: r.get(k) for k in ("encoder", "px", "images", "float32 img/s", "float16 img/s",
                                     "float32 GPU peak MiB", "float16 GPU peak MiB",
                                     "top-1 agree %")} for r in enc.get("results", [])]
recs = pipe.get("records", {})
scripts = {name: {"wall_s": r["wall_s"], "gpu_peak_mib": r["gpu_mb"], "peak_rss_mib":
                  r.get("peak_rss_mb"), "device": r.get("device", {}).get("device"),
                  "steps_s": r.get("timings", {})} for name, r in recs.items()}
process_s = pipe.get("process", {}).get("wall_s")
train_s = recs["train"]["wall_s"] + process_s if "train" in recs and process_s else None


def target(name, value, limit, unit, below=True):
    value = clean(value)
    ok = None if value is None else (value <= limit if below else value >= limit)
    return {"target": name, "measured": value, "limit": limit, "unit": unit, "pass": ok}


targets = [
    target("test.sh: test.py on the test images", recs.get("test", {}).get("wall_s"), 60, "s"),
    target("train.sh: process.py + train.py", train_s, 120, "s"),
    *[target(f"GPU memory of {n}.py", scripts.get(n, {}).get("gpu_peak_mib"), 8192, "MiB")
      for n in ("train", "test")],
    *[target(f"fp16 top-1 agreement, {r['encoder']}", r.get("top-1 agree %"), 99.5, "%", False)
      for r in enc.get("results", [])],
]
incomplete = [n for n, s in sections.items()
              if s["status"] != "ok" and s["status"] != "skipped: no GPU (dry run)"]
not_measured = [n for n, s in sections.items() if s["status"].startswith("skipped")]
not_measured += ["float16"] * all(r.get("float16 img/s") is None for r in throughput)
not_measured += ["GPU memory"] * all(clean(s["gpu_peak_mib"]) is None for s in scripts.values())
summary = {
    "mode": mode, "wall_s": float(wall), "budget_s": int(budget), "complete": not incomplete,
    "note": "dry run: tiny sizes on the CPU, the targets do not apply" if mode == "dry" else "",
    "sections": sections, "not measured": not_measured,
    "machine": facts,
    "jittor_import_s": {"cuda setup (Jittor's CUDA build)": secs("cuda setup"),
                        "first import": secs("first import"), "warm import": secs("warm import")},
    "agreement": agreement, "throughput": throughput,
    "pipeline": {"sizes": pipe.get("sizes"), "process_s": process_s, "scripts": scripts},
    "targets": targets,
}
(out / "summary.json").write_text(json.dumps(clean(summary), indent=1) + "\n")
print(json.dumps({"complete": not incomplete, "incomplete": incomplete, "targets": clean(targets)},
                 indent=1))
sys.exit(1 if incomplete else 0)
PY
}

METHODS="InMaP official,InMaP challenge,LP++,TransCLIP zero-shot,TransCLIP few-shot"
main 2>&1 | tee "$OUT/gpu_check.log"; exit  # (one line: an edit while it runs cannot add commands)
