"""Upstream checkpoints -> the project's float32 safetensors (see models/weights.py).

The only module of the project that reads torch formats or pickles. torch is imported inside the
functions (never at import time), and before any family module, which may import Jittor.

Source formats, told apart by their bytes (:func:`detect_format`):

- ``torchscript``: OpenAI's released CLIP files (``ViT-B-32.pt``, ``RN101.pt``): a zip with
  ``code/`` and ``constants.pkl``; fp16 weights plus the buffers ``input_resolution``,
  ``context_length`` and ``vocab_size``, which become config. Read with ``torch.jit.load``,
  which compiles the archive's TorchScript: trusted files only (a warning is logged).
- ``torch-zip`` / ``torch-legacy``: ``torch.save`` files (e.g. ConvNeXt-V2's
  ``convnextv2_base_1k_224_ema.pt`` = ``{'model': state_dict}``), read with
  ``torch.load(weights_only=True)``; ``{'model': sd}`` / ``{'state_dict': sd}`` are unwrapped and a
  DDP ``module.`` prefix stripped.
- ``jittor-pickle``: JCLIP's ``ViT-B-32.pkl``, written by ``jt.save`` (a protocol-4 pickle of a
  dict of torch tensors, then its SHA-1 and the 8 bytes ``HCAJSLHD``). Read with a restricted
  unpickler that resolves only the globals such a file needs and refuses any other.

Families are found through :data:`FAMILIES`: each module has ``matches(sd)``, ``infer_config(sd)``
and optionally ``prepare_state_dict(sd)``.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import io
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from models import weights
from models.weights import WeightsError

log = logging.getLogger(__name__)

# family -> module with matches / infer_config / prepare_state_dict (imported lazily).
FAMILIES = {
    "clip": "models.clip.config",
    "convnextv2": "models.convnext.config",
}

JITTOR_PICKLE_MAGIC = b"HCAJSLHD"
# First bytes of torch's legacy (non-zip) format: a pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_PREFIX = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# OpenAI's convert_weights casts these to fp16: conv/linear weights and biases, attention
# projections, and the two projection matrices. LayerNorm, BatchNorm, embeddings stay fp32.
_FP16_SUFFIXES = (
    "conv1.weight", "conv2.weight", "conv3.weight", "downsample.0.weight",
    "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias",
    "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
    "c_proj.weight", "c_proj.bias", "c_fc.weight", "c_fc.bias",
)  # fmt: skip


# What a refused (possibly malicious) pickle's message tells the user to do.
_UNSAFE_ADVICE = "convert only files downloaded from the official URLs (see README.md)"


class ConversionError(WeightsError):
    """The source file is missing, unreadable, unsafe, or not a supported checkpoint."""


# --------------------------------------------------------------------------------------------
# Reading


def detect_format(path: Union[str, os.PathLike]) -> str:
    """ "torchscript", "torch-zip", "torch-legacy", "jittor-pickle" or "safetensors" (or raise)."""
    path = Path(path)
    if not path.is_file():
        hints = "\n  ".join(weights.DOWNLOADS.values())
        raise ConversionError(f"{path}: no such file; the upstream files are:\n  {hints}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - len(JITTOR_PICKLE_MAGIC)))
        tail = f.read()
    if size == 0:
        raise ConversionError(f"{path}: empty file")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ConversionError(
                f"{path}: truncated or corrupt zip archive ({_one_line(e)})"
            ) from e
        parts = {n.split("/", 2)[1] for n in names if n.count("/") >= 1}
        if "code" in parts or any(n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") for n in names):
            return "torch-zip"
        raise ConversionError(f"{path}: a zip archive, but not a torch checkpoint (no data.pkl)")
    if tail == JITTOR_PICKLE_MAGIC:
        return "jittor-pickle"
    if head.startswith(_TORCH_LEGACY_PREFIX):
        return "torch-legacy"
    if head[:1] == b"\x80":
        # A bare pickle (protocol 2+) without jt.save's checksum: read the same restricted way.
        return "jittor-pickle"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "safetensors"
    raise ConversionError(
        f"{path}: unknown format (not a TorchScript archive, torch checkpoint or Jittor pickle; "
        "truncated or corrupt?)"
    )


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A torch tensor (any dtype, incl. fp16/bf16) or array as an owned numpy array; floats in
    float32, integers unchanged."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return np.array(t.numpy(), copy=True)
    a = np.array(t, copy=True)
    return a.astype(np.float32) if a.dtype.kind == "f" else a


def _dtype_name(t: Any) -> str:
    d = getattr(t, "dtype", None)
    return str(d).replace("torch.", "") if d is not None else type(t).__name__


def _read_torchscript(path: Path) -> dict[str, Any]:
    import torch

    log.warning(
        "%s is a TorchScript archive: torch.jit.load compiles and loads the program inside it. "
        "Convert only files from a trusted source (OpenAI's official downloads).",
        path,
    )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError and friends for damaged archives
        raise ConversionError(
            f"{path}: cannot load the TorchScript archive ({_one_line(e)})"
        ) from e
    return dict(module.state_dict())


def _read_torch(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message spans lines and advises retrying with weights_only=False, which
        # would run whatever the pickle asks for: only the global it names is passed on.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"asks for {found.group(1)}" if found else "holds objects other than tensors"
        raise ConversionError(
            f"{path}: refused: the checkpoint {what}, which a file of weights never needs; "
            f"{_UNSAFE_ADVICE}"
        ) from e
    except Exception as e:
        detail = _one_line(e)
        if "weights_only" in detail:  # never pass on advice to load unsafely
            detail = type(e).__name__
        raise ConversionError(
            f"{path}: cannot read the torch checkpoint ({detail}); truncated or corrupt? "
            "download it again"
        ) from e


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (torch's span several), at most 300 characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _restricted_unpickler(path: Path, data: bytes) -> pickle.Unpickler:
    """An unpickler that resolves only the globals a pickled dict of tensors/arrays needs."""
    import torch
    import torch._utils

    def load_storage(b: bytes):
        # torch pickles a storage as torch.storage._load_from_bytes(<torch.save bytes>), which
        # would call torch.load(weights_only=False); the bytes hold only a storage, so the safe
        # loader reads them.
        return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)

    def jittor_var(array, *args):
        # jittor.Var pickles as jittor_core.Var(<numpy array>, ...): keep the array.
        return np.asarray(array)

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): load_storage,
        ("torch", "Size"): torch.Size,
        ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): np.core.multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("jittor", "jittor_core.Var"): jittor_var,
    }

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            obj = allowed.get((module, name))
            if obj is None:
                raise ConversionError(
                    f"{path}: refused: the pickle asks for {module}.{name}, which a file of "
                    f"weights never needs (only tensors, arrays and dicts are read); "
                    f"{_UNSAFE_ADVICE}"
                )
            return obj

    return Restricted(io.BytesIO(data))


def _read_jittor_pickle(path: Path) -> Any:
    data = path.read_bytes()
    if data.endswith(JITTOR_PICKLE_MAGIC):
        body, checksum = data[:-28], data[-28:-8]
        if hashlib.sha1(body).digest() != checksum:
            raise ConversionError(f"{path}: checksum mismatch: truncated or corrupt Jittor pickle")
        data = body
    try:
        return _restricted_unpickler(path, data).load()
    except ConversionError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, ...: a damaged stream
        raise ConversionError(f"{path}: truncated or corrupt pickle ({_one_line(e)})") from e


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """The state dict inside a checkpoint object: {'model'|'state_dict': sd} unwrapped, a
    ``module.`` prefix stripped, non-tensor entries dropped (with a warning)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    for key in ("state_dict", "model", "model_ema"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            log.info("%s: using the state dict under %r", path.name, key)
            obj = inner
            break
    sd = {str(k): v for k, v in obj.items() if _is_tensor(v)}
    dropped = sorted(str(k) for k, v in obj.items() if not _is_tensor(v))
    if dropped:
        log.warning("%s: ignoring %d non-tensor entries: %s", path.name, len(dropped), dropped[:10])
    if not sd:
        raise ConversionError(f"{path}: no tensors found")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, Mapping)


def read_state_dict(path: Union[str, os.PathLike]) -> tuple[dict[str, Any], str]:
    """(state dict of torch tensors / arrays, source format) of an upstream checkpoint."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        try:
            info = weights.read_info(path)
        except WeightsError:
            info = None
        what = f"an already converted {info['family']} file" if info else "a safetensors file"
        raise ConversionError(f"{path}: {what}; convert the original checkpoint instead")
    if fmt == "torchscript":
        import torch  # noqa: F401  (torch before any Jittor import)

        return _read_torchscript(path), fmt
    if fmt in ("torch-zip", "torch-legacy"):
        return _unwrap(_read_torch(path), path), fmt
    return _unwrap(_read_jittor_pickle(path), path), fmt


# --------------------------------------------------------------------------------------------
# Families and conversion


def family_module(family: str):
    """The module of a family in :data:`FAMILIES` (imported on first use)."""
    if family not in FAMILIES:
        raise ConversionError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family])


def detect_family(state_dict: Mapping[str, Any], path: Union[str, os.PathLike] = "") -> str:
    """The first family of :data:`FAMILIES` whose ``matches`` accepts the state dict."""
    for family in FAMILIES:
        try:
            module = family_module(family)
        except ImportError as e:
            log.debug("family %s unavailable: %s", family, e)
            continue
        if module.matches(state_dict):
            return family
    keys = sorted(state_dict)
    raise ConversionError(
        f"{path}: not a CLIP or ConvNeXt-V2 checkpoint ({len(keys)} tensors, e.g. "
        f"{', '.join(keys[:5])})"
    )


def convert(
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    family: str = "auto",
) -> dict[str, Any]:
    """Convert ``src`` to float32 safetensors at ``dst``; returns what was found and written.

    The result (also logged): source format, family, architecture, config, parameter count,
    source dtypes.
    """
    src, dst = Path(src), Path(dst)
    _check_not_same_file(src, dst)
    raw, fmt = read_state_dict(src)
    dtypes = collections.Counter(_dtype_name(v) for v in raw.values())
    sd = {k: _tensor_to_numpy(v) for k, v in raw.items()}
    del raw
    source = {
        "file": src.name,
        "format": fmt,
        "dtypes": dict(sorted(dtypes.items())),
        "sha256": weights.fingerprint(src, full=True),
    }
    family, config, sd = save_converted(sd, dst, source, family, str(src))
    n_params = int(sum(np.asarray(v).size for v in sd.values()))
    arch = config.get("architecture") or config.get("variant") or "custom"
    summary = {
        "src": str(src),
        "dst": str(dst),
        "format": fmt,
        "family": family,
        "architecture": arch,
        "config": config,
        "parameters": n_params,
        "tensors": len(sd),
        "source_dtypes": dict(dtypes),
    }
    log.info(
        "%s: %s, family %s, architecture %s, %s parameters in %d tensors, source dtypes %s -> %s",
        src.name,
        fmt,
        family,
        arch,
        f"{n_params:,}",
        len(sd),
        ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items())),
        dst,
    )
    return summary


def save_converted(
    sd: dict[str, np.ndarray], dst: Union[str, os.PathLike], source: dict[str, Any],
    family: str = "auto", name: str = "state dict",
) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """What :func:`convert` does once the tensors are read: the family (detected unless given),
    its preparation and inferred config, the converted file at ``dst``; also how random weights
    are saved without torch (``pipeline.synthetic``). Returns (family, config, prepared sd)."""
    if family == "auto":
        family = detect_family(sd, name)
    module = family_module(family)
    if not module.matches(sd):
        raise ConversionError(f"{name}: does not look like a {family} checkpoint")
    try:
        if hasattr(module, "prepare_state_dict"):
            sd = module.prepare_state_dict(sd)
        config = module.infer_config(sd)
    except (ValueError, KeyError, WeightsError) as e:
        raise ConversionError(f"{name}: {family} checkpoint not understood: {e}") from e
    weights.save(dst, sd, family=family, config=config, source=source)
    return family, config, sd


def _check_not_same_file(src: Path, dst: Path) -> None:
    """Refuse a destination that is the source file (same spelling or not, through a symbolic
    or hard link): writing it would replace the download with its conversion."""
    try:
        same = os.path.samefile(src, dst)
    except OSError:  # either one does not exist (yet): not the same file
        same = False
    if same:
        raise ConversionError(
            f"{dst}: is the source file itself ({src}); converting would overwrite the "
            f"download: give another destination, e.g. out/weights/{src.stem}.safetensors"
        )


# --------------------------------------------------------------------------------------------
# Writers of the upstream formats (demo checkpoints and tests)


def _to_torch(state: Mapping[str, Any]) -> dict[str, Any]:
    """numpy -> torch, in the upstream shapes: CLIP's ``logit_scale`` is 0-d in OpenAI's files,
    while Jittor (no 0-d arrays) hands it over as [1]."""
    import torch

    out = {}
    for k, v in state.items():
        a = np.array(v, copy=True)
        if k == "logit_scale" and a.shape == (1,):
            a = a.reshape(())
        out[k] = torch.from_numpy(a)
    return out


def write_openai_archive(
    state: Mapping[str, np.ndarray],
    path: Union[str, os.PathLike],
    input_resolution: int,
    context_length: int,
    vocab_size: int,
    half: bool = True,
) -> Path:
    """A TorchScript archive with OpenAI's CLIP key layout: the weights (fp16 where OpenAI's
    convert_weights makes them fp16, when ``half``) and the three int64 buffers.

    The archive holds a scripted container module (no forward): enough for :func:`convert`,
    which only reads the state dict, as it does of OpenAI's traced models.
    """
    import torch

    root = torch.nn.Module()
    tensors = _to_torch(state)
    buffers = {
        "input_resolution": torch.tensor(int(input_resolution)),
        "context_length": torch.tensor(int(context_length)),
        "vocab_size": torch.tensor(int(vocab_size)),
    }
    for name, t in {**tensors, **buffers}.items():
        *parents, leaf = name.split(".")
        module = root
        for p in parents:
            if not hasattr(module, p):
                module.add_module(p, torch.nn.Module())
            module = getattr(module, p)
        if name in buffers or "running_" in leaf or leaf == "num_batches_tracked":
            module.register_buffer(leaf, t)
        else:
            if (
                half
                and t.is_floating_point()
                and (name.endswith(_FP16_SUFFIXES) or name in ("text_projection", "visual.proj"))
            ):
                t = t.half()
            module.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(root).save(str(path))
    return path


def write_torch_checkpoint(
    state: Mapping[str, np.ndarray], path: Union[str, os.PathLike], wrap: Optional[str] = "model"
) -> Path:
    """``torch.save`` of the state dict, wrapped as ``{wrap: sd}`` (as ConvNeXt-V2's official
    files) or bare when ``wrap`` is None."""
    import torch

    sd = collections.OrderedDict(_to_torch(state))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrap: sd} if wrap else sd, str(path))
    return path


def write_jclip_pkl(state: Mapping[str, np.ndarray], path: Union[str, os.PathLike]) -> Path:
    """JCLIP's ``ViT-B-32.pkl`` layout: ``jt.save`` of an OrderedDict of float32 torch tensors
    (JCLIP calls ``.float()`` on every entry, integer buffers included), byte for byte."""
    sd = collections.OrderedDict((k, v.float()) for k, v in _to_torch(state).items())
    data = pickle.dumps(sd, 4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + hashlib.sha1(data).digest() + JITTOR_PICKLE_MAGIC)
    return path
