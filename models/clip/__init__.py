"""OpenAI CLIP in Jittor, with OpenAI's API shape (``clip.load``, ``clip.tokenize``; usage and
converted files: docs/CONVERSION.md). Importing this package imports no Jittor; ``load`` and the
model classes do.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Union

from models.clip.config import infer_config, matches
from models.clip.preprocess import CLIP_MEAN, CLIP_STD, Preprocess
from models.clip.tokenizer import Tokenizer, default_tokenizer, tokenize

if TYPE_CHECKING:
    from models.clip.model import CLIP

FAMILY = "clip"

__all__ = [
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "FAMILY",
    "Preprocess",
    "Tokenizer",
    "build_model",
    "default_tokenizer",
    "infer_config",
    "load",
    "matches",
    "tokenize",
]


def load(path: Union[str, os.PathLike], device: Optional[str] = None) -> tuple[CLIP, Preprocess]:
    """(model in eval mode, its preprocessing) from a converted CLIP file. ``device``: see
    models.runtime, set before the model is built. WeightsError: missing, other family, misfit."""
    from models import weights
    from models.runtime import jittor

    jittor(device)
    from models.clip.model import build_model

    tensors, info = weights.load(path, expect_family=FAMILY)
    model = build_model((info["config"], tensors), source=str(path))
    return model, Preprocess(model.visual.input_resolution)


def __getattr__(name: str) -> Any:
    # The Jittor-backed names load on first use, keeping `import models.clip` light.
    if name in ("CLIP", "build_model"):
        from models.clip import model

        return getattr(model, name)
    raise AttributeError(f"module 'models.clip' has no attribute {name!r}")
