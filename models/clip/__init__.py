"""OpenAI CLIP in Jittor, with OpenAI's API shape (``clip.load``, ``clip.tokenize``; usage and
converted files: docs/CONVERSION.md). Importing this package imports no Jittor; ``load`` does.
The model, its config, preprocessing and tokenizer are the modules of this package.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Union

from models.clip.preprocess import Preprocess
from models.clip.tokenizer import tokenize

if TYPE_CHECKING:
    from models.clip.model import CLIP

FAMILY = "clip"

__all__ = ["FAMILY", "load", "tokenize"]


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
