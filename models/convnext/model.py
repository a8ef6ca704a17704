"""ConvNeXt-V2 (Woo et al., CVPR 2023) in Jittor; parameter names are the official checkpoint
keys. The NCHW residual stream with channels-last rows inside each block is measured (Jittor's CPU
depthwise conv is fast only in NCHW): docs/CONVNEXT.md section 2."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from models import weights
from models.convnext.config import (
    FAMILY,
    VARIANTS,
    infer_config,
    make_config,
    prepare_state_dict,
    random_state_dict,
)
from models.runtime import jittor

jt = jittor()
nn = jt.nn

LN_EPS = 1e-6  # every LayerNorm of the official model
GRN_EPS = 1e-6  # added to GRN's channel mean


class LayerNorm(nn.Module):
    """LayerNorm over channels: axis 1 of NCHW if ``channels_first``, else the last axis. The
    centred variance, like torch: Jittor's E[x^2] - E[x]^2 loses digits when the mean is large
    against the spread (real checkpoints' stem output)."""

    def __init__(self, dim: int, channels_first: bool = False):
        self.channels_first = channels_first
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)

    def execute(self, x):
        axis, weight, bias, dtype = -1, self.weight, self.bias, x.dtype
        if self.channels_first:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            axis, weight, bias = 1, weight.reshape(shape), bias.reshape(shape)
        if dtype != "float32":  # half precision: normalise in float32, as torch autocast does
            x = x.float32()
        centred = x - x.mean(axis, keepdims=True)
        var = (centred * centred).mean(axis, keepdims=True)
        out = centred / jt.sqrt(var + LN_EPS) * weight + bias
        return out if dtype == "float32" else out.cast(dtype)


class GRN(nn.Module):
    """Global Response Normalization on channels-last ``[N, *spatial, C]``; gamma/beta [1,1,1,C]."""

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


class Block(nn.Module):
    """ConvNeXt-V2 block: dwconv 7x7 -> LN -> Linear 4x -> GELU -> GRN -> Linear -> residual."""

    def __init__(self, dim: int):
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def execute(self, x):
        n, c, h, w = x.shape
        y = self.dwconv(x)
        # Channels-last rows: LN and the Linear layers become 2-D matmuls (fastest in Jittor).
        y = y.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = nn.gelu(self.pwconv1(self.norm(y)))  # nn.gelu is the exact erf form, as nn.GELU()
        y = self.grn(y.reshape(n, h * w, 4 * c)).reshape(n * h * w, 4 * c)
        y = self.pwconv2(y).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return x + y


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 classifier of normalised ``[N, 3, H, W]`` images (docs/CONVNEXT.md)."""

    def __init__(
        self,
        depths: Sequence[int] = VARIANTS["tiny"][0],
        dims: Sequence[int] = VARIANTS["tiny"][1],
        num_classes: int = 1000,
        in_chans: int = 3,
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
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm(dims[0], True))
        self.downsample_layers = nn.ModuleList([stem])
        for a, b in zip(dims, dims[1:]):
            down = nn.Sequential(LayerNorm(a, True), nn.Conv2d(a, b, 2, stride=2))
            self.downsample_layers.append(down)
        stages = [nn.Sequential(*[Block(dim) for _ in range(n)]) for n, dim in zip(depths, dims)]
        self.stages = nn.ModuleList(stages)
        self.norm = LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else None
        if seed is not None:
            weights.load_state(self, random_state_dict(self.config(), seed), f"seed {seed}")

    def config(self) -> dict[str, Any]:
        """The architecture as stored in converted files (see :func:`infer_config`)."""
        return make_config(self.depths, self.dims, self.num_classes, self.in_chans)

    def forward_features(self, x):
        """Pooled features after the final LayerNorm: ``[N, dims[-1]]``."""
        stem = self.downsample_layers[0][0].weight
        if x.dtype != stem.dtype:  # e.g. float32 images into a model.float16() copy
            x = x.cast(stem.dtype)
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean([2, 3]))

    def forward_head(self, features):
        """Logits from pooled features."""
        if self.head is None:
            raise ValueError("this ConvNeXt-V2 has no classification head (num_classes=0)")
        return self.head(features)

    def execute(self, x):
        return self.forward_head(self.forward_features(x))

    forward = execute


def from_state_dict(state_dict: Mapping[str, np.ndarray], source: str = "state dict") -> ConvNeXtV2:
    """Build the model that fits ``state_dict`` and load it (strict)."""
    state_dict = prepare_state_dict(state_dict)
    cfg = infer_config(state_dict)
    model = ConvNeXtV2(cfg["depths"], cfg["dims"], cfg["num_classes"], cfg["in_chans"], seed=None)
    weights.load_state(model, state_dict, source)
    return model.eval()


def load(path: str | os.PathLike, device: str | None = None) -> ConvNeXtV2:
    """A converted ConvNeXt-V2 file in eval mode (no parameter gradients); ``device``: see
    models.runtime, set before the model is built."""
    jittor(device)
    tensors, info = weights.load(path, expect_family=FAMILY)
    try:
        inferred = infer_config(tensors)
    except weights.WeightsError as e:
        raise weights.WeightsError(f"{path}: not usable ConvNeXt-V2 weights: {e}") from e
    stored = info["config"]
    for key in ("depths", "dims", "num_classes"):
        if key in stored and list(np.atleast_1d(stored[key])) != list(np.atleast_1d(inferred[key])):
            raise weights.WeightsError(
                f"{path}: header says {key}={stored[key]} but the tensors say {inferred[key]}"
            )
    return from_state_dict(tensors, source=str(path))
