"""Jittor start-up shared by every entry point: device choice and quiet logs.

Import :func:`jittor` from here instead of ``import jittor`` at module top, so that modules stay
importable (and cheap) for code paths that never touch Jittor, and the device is chosen once.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_jt = None


def jittor(device: str | None = None):
    """Import Jittor once and select the device.

    device: "cuda", "cpu" or None/"auto" (CUDA when Jittor has it). The environment variable
    ``FEWSHOT_DEVICE`` overrides "auto". Returns the ``jittor`` module.
    """
    global _jt
    if _jt is None:
        # Jittor logs every compile at info level; keep warnings and errors only unless asked.
        os.environ.setdefault("log_silent", "1")
        # Jittor imports torch at start-up when it is installed (a workaround for their MKL
        # clash); train/test never need torch, and importing it costs seconds and memory.
        # Code that needs both imports torch first, which avoids the clash anyway.
        os.environ.setdefault("FIX_TORCH_ERROR", "0")
        import jittor as jt

        _jt = jt
    device = device or os.environ.get("FEWSHOT_DEVICE", "auto")
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', not {device!r}")
    want_cuda = device == "cuda" or (device == "auto" and bool(_jt.has_cuda))
    if want_cuda and not _jt.has_cuda:
        raise RuntimeError("device 'cuda' was requested but Jittor found no CUDA GPU")
    _jt.flags.use_cuda = 1 if want_cuda else 0
    return _jt


def on_gpu() -> bool:
    """True when Jittor runs on CUDA."""
    return _jt is not None and bool(_jt.flags.use_cuda)
