"""Upstream checkpoints -> float32 safetensors (models/weights.py), and the ``write_*`` writers of
the upstream formats: docs/CONVERSION.md. The only module that reads torch formats or pickles;
torch is imported inside the functions, before any family module (which may import Jittor).
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

FAMILIES = {"clip": "models.clip.config", "convnextv2": "models.convnext.config"}

JITTOR_PICKLE_MAGIC = b"HCAJSLHD"  # the last 8 bytes of a jt.save file
# First bytes of torch's legacy (non-zip) format: a pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_PREFIX = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# What OpenAI's convert_weights casts to fp16 (with visual.proj and text_projection).
_FP16_SUFFIXES = (
    "conv1.weight", "conv2.weight", "conv3.weight", "downsample.0.weight",
    "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias",
    "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
    "c_proj.weight", "c_proj.bias", "c_fc.weight", "c_fc.bias",
)  # fmt: skip

_UNSAFE_ADVICE = "convert only files downloaded from the official URLs (see README.md)"


class ConversionError(WeightsError):
    """The source file is missing, unreadable, unsafe, or not a supported checkpoint."""


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
    if head[:1] == b"\x80":  # a bare pickle without jt.save's checksum: read the same way
        return "jittor-pickle"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "safetensors"
    raise ConversionError(
        f"{path}: unknown format (not a TorchScript archive, torch checkpoint or Jittor pickle; "
        "truncated or corrupt?)"
    )


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A torch tensor (fp16/bf16 included) or array as an owned array; floats become float32."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return np.array(t.numpy(), copy=True)
    a = np.array(t, copy=True)
    return a.astype(np.float32) if a.dtype.kind == "f" else a


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (torch's span several), at most 300 characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _read_torch(path: Path, fmt: str) -> Any:
    import torch

    try:
        if fmt == "torchscript":
            log.warning(
                "%s is a TorchScript archive: torch.jit.load compiles and loads the program "
                "inside it. Convert only files from a trusted source (OpenAI's official "
                "downloads).",
                path,
            )
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, which would run whatever the pickle asks
        # for: pass on only the global it names.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"asks for {found.group(1)}" if found else "holds objects other than tensors"
        raise ConversionError(
            f"{path}: refused: the checkpoint {what}, which a file of weights never needs; "
            f"{_UNSAFE_ADVICE}"
        ) from e
    except Exception as e:  # torch raises RuntimeError and friends for damaged files
        detail = _one_line(e)
        if "weights_only" in detail:  # never pass on advice to load unsafely
            detail = type(e).__name__
        raise ConversionError(
            f"{path}: cannot read the torch checkpoint ({detail}); truncated or corrupt? "
            "download it again"
        ) from e


def _read_jittor_pickle(path: Path) -> Any:
    """A jt.save file or bare pickle, through an unpickler that resolves only the globals a
    pickled dict of tensors/arrays needs."""
    import torch
    import torch._utils

    data = path.read_bytes()
    if data.endswith(JITTOR_PICKLE_MAGIC):  # pickle, its SHA-1 (20 bytes), the magic
        body, checksum = data[:-28], data[-28:-8]
        if hashlib.sha1(body).digest() != checksum:
            raise ConversionError(f"{path}: checksum mismatch: truncated or corrupt Jittor pickle")
        data = body

    def load_storage(b: bytes):
        # torch.storage._load_from_bytes would call torch.load(weights_only=False); the bytes
        # hold only a storage, which the safe loader reads.
        return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)

    def jittor_var(array, *args):  # jittor.Var pickles as jittor_core.Var(<numpy array>, ...)
        return np.asarray(array)

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): load_storage,
        ("torch", "Size"): torch.Size,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("jittor", "jittor_core.Var"): jittor_var,
    }
    for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and 2 names
        allowed[numpy_core, "_reconstruct"] = np.core.multiarray._reconstruct
        allowed[numpy_core, "scalar"] = np.core.multiarray.scalar

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

    try:
        return Restricted(io.BytesIO(data)).load()
    except ConversionError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, ...: a damaged stream
        raise ConversionError(f"{path}: truncated or corrupt pickle ({_one_line(e)})") from e


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, Mapping)


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """The state dict in a checkpoint, unwrapped as docs/CONVERSION.md says."""
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
    obj = _read_jittor_pickle(path) if fmt == "jittor-pickle" else _read_torch(path, fmt)
    return _unwrap(obj, path), fmt


def family_module(family: str):
    """The module of a family (``matches``, ``prepare_state_dict``, ``infer_config``)."""
    if family not in FAMILIES:
        raise ConversionError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family])


def convert(
    src: Union[str, os.PathLike], dst: Union[str, os.PathLike], family: str = "auto"
) -> dict[str, Any]:
    """Convert ``src`` to float32 safetensors at ``dst``; returns (and logs) what was found."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and os.path.samefile(src, dst):  # through any link
        raise ConversionError(
            f"{dst}: is the source file itself ({src}); converting would overwrite the "
            f"download: give another destination, e.g. out/weights/{src.stem}.safetensors"
        )
    raw, fmt = read_state_dict(src)
    dtypes = collections.Counter(str(v.dtype).replace("torch.", "") for v in raw.values())
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
    dtype_list = ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items()))
    log.info(
        f"{src.name}: {fmt}, family {family}, architecture {arch}, {n_params:,} parameters in "
        f"{len(sd)} tensors, source dtypes {dtype_list} -> {dst}"
    )
    return {
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


def save_converted(
    sd: dict[str, np.ndarray], dst: Union[str, os.PathLike], source: dict[str, Any],
    family: str = "auto", name: str = "state dict",
) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """:func:`convert` once the tensors are read (also ``pipeline.synthetic`` without torch):
    (family, config, prepared sd)."""
    if family == "auto":  # the first family whose matches() accepts the keys
        family = next((f for f in FAMILIES if family_module(f).matches(sd)), None)
        if family is None:
            keys = sorted(sd)
            raise ConversionError(
                f"{name}: not a CLIP or ConvNeXt-V2 checkpoint ({len(keys)} tensors, e.g. "
                f"{', '.join(keys[:5])})"
            )
    module = family_module(family)
    if not module.matches(sd):
        raise ConversionError(f"{name}: does not look like a {family} checkpoint")
    try:
        sd = module.prepare_state_dict(sd)
        config = module.infer_config(sd)
    except (ValueError, KeyError, WeightsError) as e:
        raise ConversionError(f"{name}: {family} checkpoint not understood: {e}") from e
    weights.save(dst, sd, family=family, config=config, source=source)
    return family, config, sd


def _to_torch(state: Mapping[str, Any]) -> dict[str, Any]:
    """numpy -> torch; CLIP's ``logit_scale`` back to 0-d (Jittor, without 0-d, hands it as [1])."""
    import torch

    out = {}
    for k, v in state.items():
        a = np.array(v, copy=True)
        if k == "logit_scale" and a.shape == (1,):
            a = a.reshape(())
        out[k] = torch.from_numpy(a)
    return out


def _parent(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_openai_archive(
    state: Mapping[str, np.ndarray],
    path: Union[str, os.PathLike],
    input_resolution: int,
    context_length: int,
    vocab_size: int,
    half: bool = True,
) -> Path:
    """A TorchScript archive in OpenAI's CLIP layout (fp16 where OpenAI's are, when ``half``; the
    three int64 buffers): a scripted container without forward, read like OpenAI's traced ones."""
    import torch

    from models.clip.config import ARCHIVE_BUFFERS

    root = torch.nn.Module()
    values = (input_resolution, context_length, vocab_size)
    buffers = {k: torch.tensor(int(v)) for k, v in zip(ARCHIVE_BUFFERS, values)}
    for name, t in {**_to_torch(state), **buffers}.items():
        *parents, leaf = name.split(".")
        module = root
        for p in parents:
            if not hasattr(module, p):
                module.add_module(p, torch.nn.Module())
            module = getattr(module, p)
        if name in buffers or "running_" in leaf or leaf == "num_batches_tracked":
            module.register_buffer(leaf, t)
            continue
        fp16 = name.endswith(_FP16_SUFFIXES) or name in ("text_projection", "visual.proj")
        if half and t.is_floating_point() and fp16:
            t = t.half()
        module.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
    path = _parent(path)
    torch.jit.script(root).save(str(path))
    return path


def write_torch_checkpoint(
    state: Mapping[str, np.ndarray], path: Union[str, os.PathLike], wrap: Optional[str] = "model"
) -> Path:
    """``torch.save`` of ``{wrap: sd}`` (as ConvNeXt-V2's official files), or of sd when None."""
    import torch

    sd = collections.OrderedDict(_to_torch(state))
    path = _parent(path)
    torch.save({wrap: sd} if wrap else sd, str(path))
    return path


def write_jclip_pkl(state: Mapping[str, np.ndarray], path: Union[str, os.PathLike]) -> Path:
    """JCLIP's ``ViT-B-32.pkl``, byte for byte: ``jt.save`` of an OrderedDict of float32 torch
    tensors (JCLIP calls ``.float()`` on every entry, integer buffers included)."""
    sd = collections.OrderedDict((k, v.float()) for k, v in _to_torch(state).items())
    data = pickle.dumps(sd, 4)
    path = _parent(path)
    path.write_bytes(data + hashlib.sha1(data).digest() + JITTOR_PICKLE_MAGIC)
    return path
