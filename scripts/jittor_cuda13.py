"""CUDA 13 compatibility patch for Jittor 1.3.11's sources (idempotent, version-guarded).

    python scripts/jittor_cuda13.py [JITTOR_PACKAGE_DIR]   # default: the installed jittor
    python scripts/jittor_cuda13.py --check [DIR]          # exit 1 when the patch is missing

What CUDA 13 breaks in Jittor 1.3.11 and what each edit does: docs/GPU.md. Each edit replaces
an exact text of Jittor 1.3.11 and each file ends with a marker comment, so a second run changes
nothing and sources that differ are refused (exit 2) before any file is written (atomically).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

MARK = "fewshot-cuda13"

_HELPER_MACROS = f"""#ifdef __CUDA_RUNTIME_H__
// {MARK}: CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate.
#if CUDART_VERSION >= 13000
inline int jt_fewshot_attr(cudaDeviceAttr attr, int dev) {{
  int value = 0;
  cudaDeviceGetAttribute(&value, attr, dev);
  return value;
}}
#define JT_COMPUTE_MODE(prop, dev) jt_fewshot_attr(cudaDevAttrComputeMode, dev)
#define JT_CLOCK_RATE(prop, dev) jt_fewshot_attr(cudaDevAttrClockRate, dev)
#else
#define JT_COMPUTE_MODE(prop, dev) (prop).computeMode
#define JT_CLOCK_RATE(prop, dev) (prop).clockRate
#endif
"""

# Where compiler.py finishes the nvcc flags, so JIT kernels and the core's .cu files get C++17.
_STD_OLD = """        nvcc_flags += " -w "\n"""
_STD_NEW = f"""        nvcc_flags += " -w "
        # {MARK}: CUDA 13's CUB/Thrust (CCCL 3) need C++17; host files keep C++14.
        if nvcc_version >= [13]:
            nvcc_flags = nvcc_flags.replace("-std=c++14", "-std=c++17")
"""

# CUB names CCCL 3 removed, spelled for old and new CUB; included right after cub.cuh.
_COMPAT_HEADER = f"""// {MARK}: CUB names that CUDA 13 (CCCL 3) removed, for old and new CUB alike.
#pragma once
#if CUB_VERSION >= 300000
#include <cuda/functional>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
__device__ __forceinline__ unsigned int jt_fewshot_lane_id() {{
  unsigned int lane;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
  return lane;
}}
#define JT_CUB_MAX() (::cuda::maximum<>{{}})
#define JT_LANE_ID() (jt_fewshot_lane_id())
#define JT_COUNTING_ITERATOR(T) thrust::counting_iterator<T>
#define JT_TRANSFORM_ITERATOR(V, Op, It) thrust::transform_iterator<Op, It, V>
#else
#define JT_CUB_MAX() (cub::Max())
#define JT_LANE_ID() (cub::LaneId())
#define JT_COUNTING_ITERATOR(T) cub::CountingInputIterator<T>
#define JT_TRANSFORM_ITERATOR(V, Op, It) cub::TransformInputIterator<V, Op, It>
#endif
"""
_COMPAT_INCLUDE = "#include <jt_cuda13_compat.h>\n"
_CUB_PY = "#include <{jt.compile_extern.cub_home}cub/cub.cuh>\n"

# (relative path, [(old, new, expected count)]); each patched file ends with a marker line.
EDITS: list[tuple[str, list[tuple[str, str, int]]]] = [
    (
        "extern/cuda/inc/helper_cuda.h",
        [
            ("#ifdef __CUDA_RUNTIME_H__\n", _HELPER_MACROS, 1),
            ("deviceProp.computeMode ==", "JT_COMPUTE_MODE(deviceProp, devID) ==", 1),
            ("deviceProp.computeMode !=", "JT_COMPUTE_MODE(deviceProp, current_device) !=", 2),
            ("deviceProp.clockRate;", "JT_CLOCK_RATE(deviceProp, current_device);", 1),
        ],
    ),
    ("compiler.py", [(_STD_OLD, _STD_NEW, 1)]),
    (
        "other/code_softmax.py",
        [
            (_CUB_PY, _CUB_PY + _COMPAT_INCLUDE, 2),
            ("cub::Max()", "JT_CUB_MAX()", 1),
        ],
    ),
    (
        "depthwise_conv.py",
        [
            ('cub/cub.cuh>"+"""', 'cub/cub.cuh>\\n#include <jt_cuda13_compat.h>"+"""', 1),
            ("cub::LaneId()", "JT_LANE_ID()", 1),
        ],
    ),
    (
        "extern/cuda/cub/ops/cub_where_op.cc",
        [
            ("#include <cub/cub.cuh>\n", "#include <cub/cub.cuh>\n" + _COMPAT_INCLUDE, 1),
            ("cub::CountingInputIterator<To>", "JT_COUNTING_ITERATOR(To)", 1),
            (
                "cub::TransformInputIterator<bool, NonZeroOp<Ti>, Ti*> itr(",
                "JT_TRANSFORM_ITERATOR(bool, NonZeroOp<Ti>, Ti*) itr(",
                1,
            ),
        ],
    ),
]

# New files (relative path, text); each carries the marker.
CREATES: list[tuple[str, str]] = [("extern/cuda/inc/jt_cuda13_compat.h", _COMPAT_HEADER)]


def jittor_dir() -> Path:
    """The installed jittor package's folder, found without importing (and compiling) it."""
    spec = importlib.util.find_spec("jittor")
    if spec is None or not spec.origin:
        raise SystemExit("jittor_cuda13: jittor is not installed in this Python")
    return Path(spec.origin).parent


def is_patched(root: Path, edits=EDITS, creates=CREATES, mark: str = MARK) -> bool:
    paths = [root / rel for rel, _ in edits + creates]
    return all(p.is_file() and mark in p.read_text() for p in paths)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a renamed temporary; the file keeps its mode (new: 0644)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def apply(
    root: Path, edits=EDITS, creates=CREATES, mark: str = MARK, script: str = "jittor_cuda13.py"
) -> list[str]:
    """Patch the package at ``root``; returns the files changed (none when already done). Every
    file is checked before any is written, so a foreign version is left untouched."""
    todo = []
    for rel, file_edits in edits:
        path = root / rel
        text = path.read_text()
        if mark in text:
            continue
        for old, new, count in file_edits:
            found = text.count(old)
            if found != count:
                raise ValueError(
                    f"{path}: expected {count} occurrence(s) of {old.strip()[:60]!r}, found "
                    f"{found} (not Jittor 1.3.11's sources?)"
                )
            text = text.replace(old, new)
        comment = "#" if path.suffix == ".py" else "//"
        text += f"{comment} {mark}: patched by jittor-fewshot's scripts/{script}\n"
        todo.append((path, text))
    for rel, text in creates:
        path = root / rel
        if not (path.is_file() and mark in path.read_text()):
            todo.append((path, text))
    for path, text in todo:
        write_atomic(path, text)
    return [str(p.relative_to(root)) for p, _ in todo]


def main(argv=None, default_root=jittor_dir, patch=apply, check=is_patched, what="CUDA 13") -> int:
    """The command line of this patch and of scripts/jittor_concurrent.py."""
    ap = argparse.ArgumentParser(description=f"Patch Jittor 1.3.11 for {what}.")
    ap.add_argument("root", nargs="?", type=Path, help="folder to patch (default: the installed)")
    ap.add_argument("--check", action="store_true", help="only report whether it is patched")
    args = ap.parse_args(argv)
    root = args.root or default_root()
    if args.check:
        done = check(root)
        print(f"{root}: {'patched' if done else 'not patched'} for {what}")
        return 0 if done else 1
    try:
        changed = patch(root)
    except ValueError as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 2
    print(f"{root}: " + (f"patched {', '.join(changed)}" if changed else "already patched"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
