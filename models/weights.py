"""Converted weights: float32 safetensors with the architecture in the ``fewshot.*`` header
metadata (docs/CONVERSION.md "What the output holds"), read without torch or pickle."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.fileio import write_atomic

FORMAT_VERSION = "1"

# What users download, per family; quoted by the missing-file error.
DOWNLOADS = {
    "clip": (
        "OpenAI CLIP: ViT-B-32.pt https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt , "
        "RN101.pt https://openaipublic.azureedge.net/clip/models/"
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt"
    ),
    "convnextv2": (
        "ConvNeXt-V2: convnextv2_base_1k_224_ema.pt "
        "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt"
    ),
}


class WeightsError(RuntimeError):
    """A weight file is missing, unreadable, or not what the caller expects."""


def save(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    *,
    family: str,
    config: dict[str, Any],
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` as float32 safetensors (integer arrays keep their dtype), atomically."""
    from safetensors.numpy import save as serialise

    arrays = {}
    for name, value in tensors.items():
        a = np.asarray(value)
        arrays[name] = np.ascontiguousarray(a.astype(np.float32) if a.dtype.kind == "f" else a)
    metadata = {
        "fewshot.family": family,
        "fewshot.config": json.dumps(config, sort_keys=True),
        "fewshot.source": json.dumps(source or {}, sort_keys=True),
        "fewshot.version": FORMAT_VERSION,
    }
    data = serialise(arrays, metadata=metadata)
    write_atomic(path, lambda f: f.write(data))
    return Path(path)


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """Family, config, source and version of a converted file, without reading the tensors."""
    from safetensors import safe_open

    path = _check_exists(path, None)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
    if "fewshot.family" not in meta:
        raise WeightsError(
            f"{path}: safetensors file without this project's metadata; "
            "convert the original checkpoint with `python convert.py SRC DST.safetensors`"
        )
    return {
        "family": meta["fewshot.family"],
        "config": json.loads(meta.get("fewshot.config", "{}")),
        "source": json.loads(meta.get("fewshot.source", "{}")),
        "version": meta.get("fewshot.version", "?"),
    }


def load(
    path: str | os.PathLike, expect_family: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a converted file: (name -> array, info). Checks the family when one is expected."""
    from safetensors.numpy import load_file

    path = _check_exists(path, expect_family)
    info = read_info(path)
    if expect_family is not None and info["family"] != expect_family:
        raise WeightsError(
            f"{path}: holds {info['family']!r} weights, but a {expect_family!r} model was expected"
        )
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise WeightsError(f"{path}: truncated or corrupt safetensors file ({e})") from e
    return tensors, info


def _check_exists(path: str | os.PathLike, family: str | None) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    hint = DOWNLOADS.get(family or "", " ; ".join(DOWNLOADS.values()))
    raise WeightsError(
        f"weight file not found: {path}\n"
        f"  download: {hint}\n"
        f"  then convert: python convert.py DOWNLOADED_FILE {path}"
    )


def fingerprint(path: str | os.PathLike, full: bool = False) -> str:
    """sha256 of a file's size and first and last MiB (enough for converted files: their header
    records the upstream file's sha256), or with ``full`` of the whole file (a download's)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    h = hashlib.sha256()
    block = 1 << 20
    with open(path, "rb") as f:
        if full:
            while chunk := f.read(block):
                h.update(chunk)
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(f.read(block))
        if size > block:
            f.seek(max(block, size - block))
            h.update(f.read(block))
    return h.hexdigest()


def load_state(model: Any, tensors: Mapping[str, Any], source: str = "state dict") -> None:
    """Copy ``tensors`` into a Jittor ``model``'s state, strictly (a WeightsError lists every
    missing or unexpected key and wrong shape); 0-d fits Jittor's [1] (CLIP's ``logit_scale``)."""
    from models.runtime import jittor

    jt = jittor()
    own = model.state_dict()

    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [
        f"{k}: file {tuple(np.shape(tensors[k]))} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(tensors))
        if (np.shape(tensors[k]) or (1,)) != tuple(own[k].shape)  # Jittor has no 0-d arrays
    ]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                more = f", ... ({len(items)} in all)" if len(items) > 20 else ""
                parts.append(f"{title}: {', '.join(items[:20])}{more}")
        name = type(model).__name__
        raise WeightsError(f"{source}: weights do not fit the {name} model; " + "; ".join(parts))
    for name, var in own.items():
        a = np.ascontiguousarray(tensors[name], dtype=np.float32).reshape(var.shape)
        var.update(jt.array(a))
