"""ConvNeXt-V2 in Jittor, shaped like facebookresearch/ConvNeXt-V2 (API: docs/CONVNEXT.md).
Importing this package imports no Jittor; ``load`` and the model classes do."""

from __future__ import annotations

from typing import Any

from models.convnext.config import (
    FAMILY,
    VARIANTS,
    infer_config,
    matches,
    param_shapes,
    prepare_state_dict,
    random_state_dict,
    variant_config,
)
from models.convnext.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    preprocess,
)

__all__ = [
    "FAMILY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "ConvNeXtV2",
    "EvalTransform",
    "TrainTransform",
    "from_state_dict",
    "infer_config",
    "load",
    "matches",
    "param_shapes",
    "prepare_state_dict",
    "preprocess",
    "random_state_dict",
    "variant_config",
]


def __getattr__(name: str) -> Any:
    # The Jittor-backed names load on first use, keeping `import models.convnext` light.
    if name in ("ConvNeXtV2", "from_state_dict", "load"):
        from models.convnext import model

        return getattr(model, name)
    raise AttributeError(f"module 'models.convnext' has no attribute {name!r}")
