"""ConvNeXt-V2 (Woo et al., CVPR 2023) in Jittor, shaped like facebookresearch/ConvNeXt-V2.

Parameter names are the keys of the official checkpoints (``downsample_layers.0.0.weight``,
``stages.2.5.grn.gamma``, ``norm.weight``, ``head.weight``, ...), so a converted file loads without
any renaming. The architecture is read back from the weights (:func:`infer_config`).

Layout of the computation: the residual stream is NCHW because Jittor's CPU depthwise convolution
is fast only in that layout (the grouped-conv pattern is handed to oneDNN; an NHWC formulation
with ``reindex`` measured 15-20x slower). Inside a block the activations are permuted once to
channels-last rows ``[N*H*W, C]`` so that LayerNorm, the two pointwise Linear layers and GRN run
as plain 2-D matmuls and row reductions, then permuted back before the residual add. The two
matmuls take most of a block's time (60-80% measured, see bench/bench_convnext.py --layouts);
the permutes cost under 10%.

Converted-file hooks used by models/convert.py: :func:`matches`, :func:`infer_config`,
:func:`prepare_state_dict`.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from models import weights
from models.convnext_transforms import (  # noqa: F401 - part of this module's API
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    preprocess,
    train_transform,
)
from models.runtime import jittor

jt = jittor()
nn = jt.nn

FAMILY = "convnextv2"

# (depths, dims) of the official model functions (models/convnextv2.py upstream).
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

# Every LayerNorm of the official model uses eps 1e-6; GRN adds 1e-6 to the channel mean.
LN_EPS = 1e-6
GRN_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Layers


def _layer_norm(x, weight, bias, axis: int):
    """LayerNorm over ``axis`` with the centred (two-pass) variance, like torch.

    Jittor's nn.LayerNorm computes E[x^2] - E[x]^2, which loses digits when the mean is large
    against the spread; the stem output of real checkpoints is such a case.
    """
    dtype = x.dtype
    if dtype != "float32":  # half precision: normalise in float32, as torch autocast does
        x = x.float32()
    mean = x.mean(axis, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis, keepdims=True)
    out = centred / jt.sqrt(var + LN_EPS) * weight + bias
    return out if dtype == "float32" else out.cast(dtype)


class LayerNorm(nn.Module):
    """LayerNorm over channels: axis 1 of NCHW if ``channels_first``, else the last axis."""

    def __init__(self, dim: int, channels_first: bool = False):
        self.channels_first = channels_first
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)

    def execute(self, x):
        if self.channels_first:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            return _layer_norm(x, self.weight.reshape(shape), self.bias.reshape(shape), 1)
        return _layer_norm(x, self.weight, self.bias, -1)


class GRN(nn.Module):
    """Global Response Normalization on channels-last input ``[N, *spatial, C]``.

    Gx = L2 norm of each channel over all spatial positions, Nx = Gx / (mean_c Gx + 1e-6),
    out = gamma * (x * Nx) + beta + x. gamma/beta are stored as [1, 1, 1, C] like upstream.
    """

    def __init__(self, dim: int):
        self.gamma = jt.zeros((1, 1, 1, dim))
        self.beta = jt.zeros((1, 1, 1, dim))

    def execute(self, x):
        dtype = x.dtype
        if dtype != "float32":  # half precision: a sum of squares over H*W overflows float16
            x = x.float32()
        spatial = list(range(1, x.ndim - 1))
        gx = jt.sqrt((x * x).sum(spatial, keepdims=True))
        nx = gx / (gx.mean(-1, keepdims=True) + GRN_EPS)
        dim = x.shape[-1]
        out = self.gamma.reshape(dim) * (x * nx) + self.beta.reshape(dim) + x
        return out if dtype == "float32" else out.cast(dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        self.p = float(p)

    def execute(self, x):
        if self.p <= 0.0 or not self.is_training():
            return x
        keep = 1.0 - self.p
        mask = jt.floor(jt.rand((x.shape[0],) + (1,) * (x.ndim - 1)) + keep)
        return x / keep * mask


class Block(nn.Module):
    """ConvNeXt-V2 block: dwconv 7x7 -> LN -> Linear 4x -> GELU -> GRN -> Linear -> residual."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def execute(self, x):
        n, c, h, w = x.shape
        y = self.dwconv(x)
        # Channels-last rows: LN and the Linear layers become 2-D matmuls (fastest in Jittor).
        y = y.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = nn.gelu(self.pwconv1(self.norm(y)))  # nn.gelu is the exact erf form, as nn.GELU()
        y = self.grn(y.reshape(n, h * w, 4 * c)).reshape(n * h * w, 4 * c)
        y = self.pwconv2(y).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return x + self.drop_path(y)


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 classifier. Input: ``[N, 3, H, W]`` normalised images (see :func:`preprocess`).

    depths/dims: blocks and channels per stage (see VARIANTS); num_classes 0 builds no head.
    seed: official random initialisation (trunc-normal std .02 weights, zero biases, unit LN,
    zero GRN) drawn from numpy with this seed; None leaves the tensors for the caller to load.
    """

    def __init__(
        self,
        depths: Sequence[int] = VARIANTS["tiny"][0],
        dims: Sequence[int] = VARIANTS["tiny"][1],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        seed: int | None = 0,
    ):
        if len(depths) != len(dims) or not depths:
            raise ValueError(
                f"depths {depths} and dims {dims} must be non-empty and of equal length"
            )
        self.depths = tuple(int(d) for d in depths)
        self.dims = tuple(int(d) for d in dims)
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm(dims[0], True))
        )
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], True), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)
                )
            )
        rates = np.linspace(0.0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            start = sum(self.depths[:i])
            self.stages.append(
                nn.Sequential(*[Block(dims[i], rates[start + j]) for j in range(depth)])
            )
        self.norm = LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else None
        if seed is not None:
            self.load_numpy(random_state_dict(self.config(), seed))

    def config(self) -> dict[str, Any]:
        """The architecture as stored in converted files (see :func:`infer_config`)."""
        return _config(self.depths, self.dims, self.num_classes, self.in_chans)

    @property
    def num_features(self) -> int:
        return self.dims[-1]

    def forward_features(self, x):
        """Pooled features after the final LayerNorm: ``[N, dims[-1]]``."""
        return self.forward_last_stage(self.forward_trunk(x))

    def forward_trunk(self, x):
        """Everything before the last stage's blocks (its downsampling layer included).

        Split out so that fine-tuning only the last stage can run (or cache) this part
        without gradients.
        """
        stem = self.downsample_layers[0][0].weight
        if x.dtype != stem.dtype:  # e.g. float32 images into a model.float16() copy
            x = x.cast(stem.dtype)
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = down(x)
            if i < len(self.stages) - 1:
                x = stage(x)
        return x

    def forward_last_stage(self, x):
        """Last stage's blocks, global average pooling and the final LayerNorm."""
        return self.norm(self.stages[-1](x).mean([2, 3]))

    def forward_head(self, features):
        """Logits from pooled features."""
        if self.head is None:
            raise ValueError("this ConvNeXt-V2 has no classification head (num_classes=0)")
        return self.head(features)

    def execute(self, x):
        return self.forward_head(self.forward_features(x))

    forward = execute

    def state_numpy(self) -> dict[str, np.ndarray]:
        """Parameters as numpy copies under the official names."""
        return {k: np.array(v.numpy(), copy=True) for k, v in self.state_dict().items()}

    def load_numpy(
        self, tensors: Mapping[str, np.ndarray], *, source: str = "state dict", strict: bool = True
    ) -> None:
        """Copy arrays into the parameters; names and shapes must match (all of them if strict)."""
        own = dict(self.named_parameters())
        unknown = sorted(set(tensors) - set(own))
        missing = sorted(set(own) - set(tensors))
        if unknown or (strict and missing):
            raise weights.WeightsError(
                f"{source}: does not fit ConvNeXt-V2 {self.config()['variant']}: "
                f"missing {_preview(missing)}, unexpected {_preview(unknown)}"
            )
        for name, value in tensors.items():
            param = own[name]
            value = np.asarray(value, dtype=np.float32)
            if tuple(value.shape) != tuple(param.shape):
                raise weights.WeightsError(
                    f"{source}: {name} has shape {value.shape}, expected {tuple(param.shape)}"
                )
            param.assign(jt.array(value))


def _preview(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# --------------------------------------------------------------------------------------------
# Configuration and state dicts

_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.dwconv\.weight$")


def _config(depths, dims, num_classes, in_chans) -> dict[str, Any]:
    depths, dims = [int(d) for d in depths], [int(d) for d in dims]
    variant = next(
        (name for name, (d, c) in VARIANTS.items() if list(d) == depths and list(c) == dims),
        "custom",
    )
    return {
        "variant": variant,
        "depths": depths,
        "dims": dims,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
    }


def variant_config(variant: str, num_classes: int = 1000) -> dict[str, Any]:
    """Config of a named variant (atto ... huge)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ConvNeXt-V2 variant {variant!r}; known: {', '.join(VARIANTS)}")
    depths, dims = VARIANTS[variant]
    return _config(depths, dims, num_classes, 3)


def matches(state_dict: Mapping[str, Any]) -> bool:
    """True for a state dict in the official ConvNeXt-V2 (fine-tuned classifier) layout."""
    return (
        "downsample_layers.0.0.weight" in state_dict
        and "stages.0.0.dwconv.weight" in state_dict
        and "stages.0.0.grn.gamma" in state_dict
    )


def prepare_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise an official-layout state dict: drop a DDP ``module.`` prefix, GRN to [1,1,1,C]."""
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    for k, v in sd.items():
        if k.endswith((".grn.gamma", ".grn.beta")) and np.ndim(v) == 1:
            sd[k] = np.asarray(v).reshape(1, 1, 1, -1)
    return sd


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture from the weights: depths from the block keys, dims and classes from shapes."""
    if not matches(state_dict):
        raise weights.WeightsError("not a ConvNeXt-V2 state dict (no stem/GRN block keys)")
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    n_stages = len(blocks)
    if sorted(blocks) != list(range(n_stages)):
        raise weights.WeightsError(
            f"ConvNeXt-V2 state dict: stages {sorted(blocks)} not contiguous"
        )
    depths = []
    for i in range(n_stages):
        if sorted(blocks[i]) != list(range(len(blocks[i]))):
            raise weights.WeightsError(f"ConvNeXt-V2 state dict: stage {i} has gaps in its blocks")
        depths.append(len(blocks[i]))
    dims = [int(np.shape(state_dict[f"stages.{i}.0.dwconv.weight"])[0]) for i in range(n_stages)]
    stem = np.shape(state_dict["downsample_layers.0.0.weight"])
    head = state_dict.get("head.weight")
    num_classes = int(np.shape(head)[0]) if head is not None else 0
    return _config(depths, dims, num_classes, int(stem[1]))


def param_shapes(config: Mapping[str, Any] | str) -> dict[str, tuple[int, ...]]:
    """Official parameter names and shapes of a config (or a variant name), in model order."""
    if isinstance(config, str):
        config = variant_config(config)
    dims, depths = [int(d) for d in config["dims"]], [int(d) for d in config["depths"]]
    shapes: dict[str, tuple[int, ...]] = {
        "downsample_layers.0.0.weight": (dims[0], int(config["in_chans"]), 4, 4),
        "downsample_layers.0.0.bias": (dims[0],),
        "downsample_layers.0.1.weight": (dims[0],),
        "downsample_layers.0.1.bias": (dims[0],),
    }
    for i in range(1, len(dims)):
        p = f"downsample_layers.{i}"
        shapes[f"{p}.0.weight"] = shapes[f"{p}.0.bias"] = (dims[i - 1],)
        shapes[f"{p}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        shapes[f"{p}.1.bias"] = (dims[i],)
    for i, (depth, d) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"stages.{i}.{j}"
            shapes[f"{p}.dwconv.weight"] = (d, 1, 7, 7)
            shapes[f"{p}.dwconv.bias"] = (d,)
            shapes[f"{p}.norm.weight"] = shapes[f"{p}.norm.bias"] = (d,)
            shapes[f"{p}.pwconv1.weight"] = (4 * d, d)
            shapes[f"{p}.pwconv1.bias"] = (4 * d,)
            shapes[f"{p}.grn.gamma"] = shapes[f"{p}.grn.beta"] = (1, 1, 1, 4 * d)
            shapes[f"{p}.pwconv2.weight"] = (d, 4 * d)
            shapes[f"{p}.pwconv2.bias"] = (d,)
    shapes["norm.weight"] = shapes["norm.bias"] = (dims[-1],)
    if int(config["num_classes"]) > 0:
        shapes["head.weight"] = (int(config["num_classes"]), dims[-1])
        shapes["head.bias"] = (int(config["num_classes"]),)
    return shapes


def random_state_dict(config: Mapping[str, Any] | str, seed: int = 0) -> dict[str, np.ndarray]:
    """Official-layout weights with the official initialisation, from numpy (no torch needed).

    Conv/Linear weights: truncated normal std 0.02 cut at +-2 (timm's trunc_normal_ defaults),
    biases zero; LayerNorm weight 1, bias 0; GRN gamma/beta 0. ``config`` may name a variant.
    """
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".weight") and len(shape) > 1:  # conv and linear kernels
            w = rng.normal(0.0, 0.02, size=shape)
            bad = np.abs(w) > 2.0
            while bad.any():  # redraw the (astronomically rare) values outside the cut
                w[bad] = rng.normal(0.0, 0.02, size=int(bad.sum()))
                bad = np.abs(w) > 2.0
            sd[name] = w.astype(np.float32)
        elif name.endswith(".weight"):  # LayerNorm scale
            sd[name] = np.ones(shape, np.float32)
        else:  # biases, LayerNorm shift, GRN gamma/beta
            sd[name] = np.zeros(shape, np.float32)
    return sd


def from_state_dict(state_dict: Mapping[str, np.ndarray], source: str = "state dict") -> ConvNeXtV2:
    """Build the model that fits ``state_dict`` and load it (strict)."""
    state_dict = prepare_state_dict(state_dict)
    cfg = infer_config(state_dict)
    model = ConvNeXtV2(cfg["depths"], cfg["dims"], cfg["num_classes"], cfg["in_chans"], seed=None)
    model.load_numpy(state_dict, source=source)
    return model.eval()


def load(path: str | os.PathLike, device: str | None = None) -> ConvNeXtV2:
    """Load a converted ConvNeXt-V2 safetensors file (see convert.py) in eval mode.

    ``device``: "cpu", "cuda", "auto" or None (the device already chosen, see models.runtime),
    set before the model is built: ``nn.Conv2d`` picks its CUDA-only depthwise kernel then.

    Jittor's ``eval()`` also stops the parameters' gradients: call ``train()`` (or ``start_grad()``
    on the parameters to tune) before fine-tuning.
    """
    jittor(device)
    tensors, info = weights.load(path, expect_family=FAMILY)
    try:
        inferred = infer_config(tensors)
    except weights.WeightsError as e:
        raise weights.WeightsError(f"{path}: {e}") from e
    stored = info["config"]
    for key in ("depths", "dims", "num_classes"):
        if key in stored and list(np.atleast_1d(stored[key])) != list(np.atleast_1d(inferred[key])):
            raise weights.WeightsError(
                f"{path}: header says {key}={stored[key]} but the tensors say {inferred[key]}"
            )
    return from_state_dict(tensors, source=str(path))


def num_parameters(model: ConvNeXtV2) -> int:
    """Number of scalar parameters (for the challenge's parameter budget)."""
    return int(sum(math.prod(p.shape) for p in model.parameters()))
