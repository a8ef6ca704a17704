"""OpenAI CLIP in Jittor, with OpenAI's API shape.

    from models import clip
    model, preprocess = clip.load("out/weights/ViT-B-32.safetensors")   # a converted file
    tokens = clip.tokenize(["a photo of a dog", "a photo of a cat"])    # numpy int64 [N, 77]
    with jt.no_grad():
        image_features = model.encode_image(preprocess.batch(images))  # jt.Var [N, embed_dim]
        text_features = model.encode_text(tokens)
        logits_per_image, logits_per_text = model(images_array, tokens)

Converted files: docs/CONVERSION.md. Importing this package imports no Jittor; ``load`` and the
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
    "num_parameters",
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
    if name in ("CLIP", "build_model", "num_parameters"):
        from models.clip import model

        return getattr(model, name)
    raise AttributeError(f"module 'models.clip' has no attribute {name!r}")
