"""Jittor start-up for every entry point: the device, quiet logs, what was loaded (docs/GPU.md).

Import :func:`jittor` from here, not ``import jittor`` at module top: modules stay cheap where
Jittor is never used, and the device is chosen once, before any model is built (``nn.Conv2d``
picks a CUDA-only depthwise kernel at construction).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")

_jt = None
_requested: str | None = None  # what was asked for: "auto", "cuda" or "cpu"
_device: str | None = None  # what runs: "cuda" or "cpu"
_jittor_messages: list[str] = []  # first lines of Jittor's warnings and errors at import


class DeviceError(ValueError):
    """The device asked for is not valid or not available; the message is one line."""


def requested_device(device: str | None = None) -> str:
    """``device`` or ``$FEWSHOT_DEVICE`` (default ``auto``), validated without importing Jittor."""
    source = "device" if device is not None else "FEWSHOT_DEVICE"
    value = device if device is not None else (os.environ.get("FEWSHOT_DEVICE") or "auto")
    if value not in DEVICES:
        raise DeviceError(f"{source}={value!r} is not a device: use one of {', '.join(DEVICES)}")
    return value


def _jittor_log(level: str, verbose: int, *msg: Any) -> None:
    """Replacement for jittor_utils.LOG._log: info dropped, warnings and errors logged."""
    if level == "i":
        return
    text = "".join(str(m() if callable(m) else m) for m in msg).strip()
    first = text.splitlines()[0] if text else "(empty message)"
    _jittor_messages.append(first)
    log.warning("Jittor: %s", first)
    if text != first:
        log.debug("Jittor (full message): %s", text)


def _import_jittor(cpu_only: bool):
    if cpu_only:  # else Jittor looks for nvcc, asks nvidia-smi and may download CUDA
        os.environ["nvcc_path"] = ""
    # Jittor imports torch when installed (against their MKL clash): seconds and memory that
    # train/test never need; code that needs both imports torch first.
    os.environ.setdefault("FIX_TORCH_ERROR", "0")
    # A user's own log_silent or log_v is left alone; ours is marked (children inherit it), so
    # every process replaces Jittor's Python-side logger.
    ours = os.environ.get("FEWSHOT_QUIET_JITTOR") == "1"
    if ("log_silent" not in os.environ or ours) and "log_v" not in os.environ:
        # The C++ side's info and warnings and the progress bars off; its errors still show.
        os.environ["log_silent"] = "1"
        os.environ["FEWSHOT_QUIET_JITTOR"] = "1"
        import jittor_utils

        jittor_utils.LOG._log = _jittor_log
    # On the CPU, compile kernels in the calling thread: runs died in Jittor's parallel op
    # compiler on a truncated kernel, and it saves little (docs/RELIABILITY.md). nvcc is slow,
    # so CUDA builds keep it.
    if not os.environ.get("nvcc_path"):
        os.environ.setdefault("use_parallel_op_compiler", "0")
    import jittor
    from jittor_utils.lock import lock_path

    # Under the record lock Jittor's compiles hold, so no kernel being written is taken for one.
    with open(lock_path, "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        dropped = drop_truncated_kernels(os.path.join(jittor.flags.cache_path, "jit"))
    if dropped:
        log.warning("dropped %d truncated Jittor kernels (recompiled on use)", len(dropped))
    return jittor


def drop_truncated_kernels(jit_dir: str) -> list[str]:
    """Remove (and return) compiled kernels whose ELF file ends before its section table, with
    their ``.key``, which Jittor would trust in every later run (docs/RELIABILITY.md)."""
    dropped = []
    try:
        entries = [e for e in os.scandir(jit_dir) if e.name.endswith(".so")]
    except OSError:
        return dropped
    for e in entries:
        try:
            with open(e.path, "rb") as f:
                head = f.read(64)
            size = e.stat().st_size
        except OSError:
            continue
        if len(head) == 64 and head[:4] == b"\x7fELF":
            shoff = int.from_bytes(head[0x28:0x30], "little")
            entsize = int.from_bytes(head[0x3A:0x3C], "little")
            count = int.from_bytes(head[0x3C:0x3E], "little")
            if shoff + entsize * count <= size:
                continue
        for path in (e.path, e.path + ".key"):
            Path(path).unlink(missing_ok=True)
        dropped.append(e.path)
    return dropped


def jittor(device: str | None = None):
    """Import Jittor once and select the device ("cuda", "cpu", "auto": CUDA when Jittor has
    it; None: ``$FEWSHOT_DEVICE`` on the first call, then the device chosen). Returns the module;
    DeviceError for an unknown device or "cuda" without a usable CUDA."""
    global _jt, _requested, _device
    if device is None and _device is not None:
        return _jt
    want = requested_device(device)
    if _jt is None:
        _jt = _import_jittor(cpu_only=want == "cpu")
    has_cuda = bool(_jt.has_cuda)
    if want == "cuda" and not has_cuda:
        why = os.environ.get("FEWSHOT_CUDA_PROBLEM") or (
            "Jittor was imported for the CPU only" if _device == "cpu" else "see scripts/setup.sh"
        )
        raise DeviceError(f"device 'cuda' was requested but Jittor has no CUDA: {why}")
    use_cuda = want == "cuda" or (want == "auto" and has_cuda)
    _jt.flags.use_cuda = int(use_cuda)
    previous, _requested, _device = _device, want, ("cuda" if use_cuda else "cpu")
    if previous is None:
        log.info("%s", describe())
    elif previous != _device:
        log.info("switched from %s to %s (build models after this)", previous, _device)
    return _jt


def _gpu_name() -> str:
    """The current CUDA device's name, read through the CUDA runtime that Jittor loaded."""
    try:
        lib = ctypes.CDLL(os.path.join(_jt.compiler.cuda_lib, "libcudart.so"))
        dev = ctypes.c_int(0)
        lib.cudaGetDevice(ctypes.byref(dev))
        prop = ctypes.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256]
        for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            fn = getattr(lib, symbol, None)
            if fn is not None and fn(prop, dev) == 0:
                return prop.raw[:256].split(b"\0")[0].decode(errors="replace")
    except (OSError, AttributeError):
        pass
    return "unknown GPU"


def _cuda_facts() -> dict[str, Any] | None:
    """Toolkit and libraries of a CUDA-enabled Jittor, None when Jittor has no CUDA."""
    if not _jt.has_cuda:
        return None
    ext = _jt.compile_extern
    nvcc_version = getattr(_jt.compiler, "nvcc_version", None) or []
    return {
        "gpu": _gpu_name(),
        "nvcc": ".".join(str(v) for v in nvcc_version[:2]),
        "nvcc_path": _jt.compiler.nvcc_path,
        "archs": [int(a) for a in _jt.flags.cuda_archs],
        "cublas": ext.cublas is not None,
        "cudnn": ext.cudnn is not None,
        "cub": getattr(ext, "cub", None) is not None,
        "cutt": getattr(ext, "cutt_ops", None) is not None,
    }


def device_record() -> dict[str, Any]:
    """What this process computes on, JSON-ready (train.json, test.json, the report): ``device``
    "cpu" or "cuda:<GPU name>", ``cuda`` the toolkit and libraries (None without CUDA),
    ``problems`` Jittor's import warnings and the set-up's reason for not using a GPU."""
    jt = jittor()
    cuda = _cuda_facts()
    device = f"cuda:{cuda['gpu']}" if _device == "cuda" and cuda else "cpu"
    problems = list(_jittor_messages)
    if os.environ.get("FEWSHOT_CUDA_PROBLEM"):
        problems.append(os.environ["FEWSHOT_CUDA_PROBLEM"])
    return {
        "device": device,
        "requested": _requested,
        "jittor": jt.__version__,
        "cuda": cuda,
        "problems": problems,
    }


def describe() -> str:
    """One line: the device and, on CUDA, the libraries Jittor loaded."""
    rec = _cuda_facts()
    version = _jt.__version__
    if _device == "cuda" and rec:
        names = ("cuBLAS", "cuDNN", "cub")
        libs = ", ".join(f"{name} {'yes' if rec[name.lower()] else 'NO'}" for name in names)
        archs = "/".join(f"sm_{a}" for a in rec["archs"]) or "arch unknown"
        return f"Jittor {version} on cuda:{rec['gpu']} (nvcc {rec['nvcc']}, {archs}; {libs})"
    why = f"asked for {_requested}"
    if _requested == "auto":
        why += "; no CUDA: " + (os.environ.get("FEWSHOT_CUDA_PROBLEM") or "no usable GPU")
    return f"Jittor {version} on the CPU ({why})"
