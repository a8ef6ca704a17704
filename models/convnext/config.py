"""ConvNeXt-V2 architecture from a state dict's key names and shapes, and the official random
initialisation: numpy only, so convert.py can use it on any tensors."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Mapping

import numpy as np

from models.weights import WeightsError

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

_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.\d+\.dwconv\.weight$")


def make_config(depths, dims, num_classes, in_chans) -> dict[str, Any]:
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
    return make_config(depths, dims, num_classes, 3)


def matches(state_dict: Mapping[str, Any]) -> bool:
    """True for a state dict in the official ConvNeXt-V2 (fine-tuned classifier) layout."""
    keys = ("downsample_layers.0.0.weight", "stages.0.0.dwconv.weight", "stages.0.0.grn.gamma")
    return all(k in state_dict for k in keys)


def prepare_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise an official-layout state dict: 1-D GRN parameters to [1,1,1,C]."""
    sd = dict(state_dict)
    for k, v in sd.items():
        if k.endswith((".grn.gamma", ".grn.beta")) and np.ndim(v) == 1:
            sd[k] = np.asarray(v).reshape(1, 1, 1, -1)
    return sd


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture from the weights: depths from the block keys, dims and classes from shapes."""
    if not matches(state_dict):
        raise WeightsError("not a ConvNeXt-V2 state dict (no stem/GRN block keys)")
    # Blocks counted per stage, as OpenAI's build_model counts CLIP's layers: a gap shows as
    # missing and unexpected keys when the weights are loaded (models.weights.load_state).
    blocks = Counter(int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)))
    depths = [blocks[i] for i in range(len(blocks))]
    headless = [i for i in range(len(blocks)) if f"stages.{i}.0.dwconv.weight" not in state_dict]
    if headless:  # a stage's width is read from its first block
        raise WeightsError(f"ConvNeXt-V2 state dict: stage {headless[0]} has no block 0")
    dims = [int(np.shape(state_dict[f"stages.{i}.0.dwconv.weight"])[0]) for i in range(len(blocks))]
    stem = np.shape(state_dict["downsample_layers.0.0.weight"])
    head = state_dict.get("head.weight")
    num_classes = int(np.shape(head)[0]) if head is not None else 0
    return make_config(depths, dims, num_classes, int(stem[1]))


def param_shapes(config: Mapping[str, Any] | str) -> dict[str, tuple[int, ...]]:
    """Official parameter names and shapes of a config (or a variant name), in model order."""
    if isinstance(config, str):
        config = variant_config(config)
    dims, depths = [int(d) for d in config["dims"]], [int(d) for d in config["depths"]]
    p = "downsample_layers.0"  # the stem: 4x4 stride-4 conv, LayerNorm
    shapes: dict[str, tuple[int, ...]] = {f"{p}.0.weight": (dims[0], int(config["in_chans"]), 4, 4)}
    shapes[f"{p}.0.bias"] = shapes[f"{p}.1.weight"] = shapes[f"{p}.1.bias"] = (dims[0],)
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
    """Official-layout weights with the official init (``config`` may name a variant): kernels
    normal with std 0.02 (timm's trunc_normal_, whose cut at +-2 = 100 std never binds: numpy's
    normal stays within 14 std), LayerNorm 1 and 0, the rest 0."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".weight") and len(shape) > 1:  # conv and linear kernels
            sd[name] = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        elif name.endswith(".weight"):  # LayerNorm scale
            sd[name] = np.ones(shape, np.float32)
        else:  # biases, LayerNorm shift, GRN gamma/beta
            sd[name] = np.zeros(shape, np.float32)
    return sd
