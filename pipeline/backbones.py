"""The frozen encoders as feature-cache encoders: CLIP backbones (image features, text
classifiers) and ConvNeXt-V2 (pooled features, for the expert and AMU-Tuning). A model loads only
when something is not cached, so a second run of test.sh loads neither image nor text encoder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import weights
from pipeline.features import Encoder, FeatureSet

log = logging.getLogger(__name__)

TEXT_FAMILY = "fewshot-text"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def combine_views(fs: FeatureSet, flip_tta: bool, view: str = "orig") -> np.ndarray:
    """L2-normalised features [n, d] of ``view``; with flip_tta the mean of the normalised
    original and mirrored views, normalised again."""
    x = l2_normalize(fs[view])
    if flip_tta:
        x = l2_normalize(x + l2_normalize(fs["flip"]))
    return x


class _LazyEncoder:
    """A weight file whose model (subclasses' ``_build``) loads on first use, run without
    gradients."""

    family = name = ""
    forward = ""  # the model's method from preprocessed images to features

    def __init__(self, weights_path: str | os.PathLike) -> None:
        self.path = Path(weights_path)
        # Fails early, naming the file, when it is absent or of another family.
        self.info = weights.read_info(self.path)
        if self.info["family"] != self.family:
            raise weights.WeightsError(
                f"{self.path}: holds {self.info['family']!r} weights, but {self.name!r} needs "
                f"{self.family!r} weights"
            )
        self._model = None
        self.load_seconds = 0.0

    @property
    def model(self) -> Any:
        if self._model is None:
            t = time.time()
            self._model = self._build()
            self.load_seconds += time.time() - t
            log.info("loaded %s from %s (%.1fs)", self.name, self.path, time.time() - t)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def fingerprint(self) -> str:
        return weights.fingerprint(self.path)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Features [B, D] of preprocessed images [B, 3, H, W]."""
        from models.runtime import jittor

        jt = jittor()
        with jt.no_grad():
            out = getattr(self.model, self.forward)(jt.array(batch)).numpy()
        return np.array(out, np.float32)  # own the memory: Jittor may reuse the buffer

    def num_parameters(self) -> int:
        """Parameters in the weight file, from its header."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="numpy") as f:
            return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))


class ClipBackbone(_LazyEncoder):
    """One CLIP model (by name, e.g. "vit"): image features and text classifiers."""

    family = "clip"
    forward = "encode_image"

    def __init__(self, name: str, weights_path: str | os.PathLike) -> None:
        self.name = name
        super().__init__(weights_path)
        from models.clip.preprocess import Preprocess

        # A pure function of the input resolution: cache hits never load the network.
        self.preprocess = Preprocess(int(self.info["config"]["image_resolution"]))

    def _build(self) -> Any:
        from models import clip

        return clip.load(self.path)[0]

    def encoder(self, label: str) -> Encoder:
        """This backbone's image tower as a feature-cache encoder."""
        parts = {"backbone": f"clip-{self.name}", "weights": self.fingerprint()}
        return Encoder(parts, self.features, f"{label}-{self.name}")

    def text_classifier(
        self,
        class_names: Sequence[str],
        templates: str,
        descriptions: str | None,
        name_edits: dict[str, str] | None,
        out_dir: str | os.PathLike,
    ) -> np.ndarray:
        """T [d, C] for ``class_names``, cached in ``out_dir/text_<name>_<templates>.safetensors``
        and reused while the weights, the class names and the prompts are the same."""
        from fewshot.templates import class_prompts

        prompts = class_prompts(class_names, templates, descriptions, name_edits)
        digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
        key = {"weights": self.fingerprint(), "prompts": digest}
        path = Path(out_dir) / f"text_{self.name}_{templates}.safetensors"
        if path.is_file():
            try:
                tensors, info = weights.load(path, expect_family=TEXT_FAMILY)
                if info["config"].get("key") == key:
                    return tensors["T"]
            except weights.WeightsError as e:
                log.warning("rebuilding the text classifier: %s", e)
        from fewshot.zeroshot import text_classifier_from_prompts

        t = time.time()
        T = text_classifier_from_prompts(self.model, prompts)
        log.info("text classifier %s: %d classes in %.1fs", self.name, T.shape[1], time.time() - t)
        config = {"key": key, "templates": templates}
        weights.save(path, {"T": T}, family=TEXT_FAMILY, config=config)
        return T


class ConvNeXtBackbone(_LazyEncoder):
    """A ConvNeXt-V2: pooled features after the final LayerNorm (its ImageNet head unused)."""

    family = "convnextv2"
    name = "convnext"
    forward = "forward_features"  # pooled, after the final LayerNorm

    def _build(self) -> Any:
        from models import convnext

        return convnext.load(self.path)

    def encoder(self, label: str, preprocess_id: str) -> Encoder:
        """A feature-cache encoder; ``preprocess_id`` tells entries of different sizes apart in
        their labels (the cache key has the preprocessing anyway)."""
        parts = {"backbone": "convnextv2", "weights": self.fingerprint()}
        return Encoder(parts, self.features, f"{label}-convnext-{preprocess_id}")

    def num_parameters(self) -> int:
        """Parameters in use: the backbone without its ImageNet head."""
        cfg = self.info["config"]
        head = cfg["num_classes"] * (cfg["dims"][-1] + 1) if cfg.get("num_classes") else 0
        return super().num_parameters() - head
