"""CLIP backbones of the pipeline: cached image features and text classifiers.

A backbone is loaded only when something is not in the cache, so a second run of test.sh touches
neither the image nor the text encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models import weights
from pipeline.features import EncoderJob, FeatureCache, FeatureSet, describe_preprocess

log = logging.getLogger(__name__)

TEXT_FAMILY = "fewshot-text"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def combine_views(fs: FeatureSet, flip_tta: bool) -> np.ndarray:
    """L2-normalised features [n, d]; with flip_tta the mean of the normalised original and
    mirrored views, normalised again."""
    x = l2_normalize(fs["orig"])
    if flip_tta:
        x = l2_normalize(x + l2_normalize(fs["flip"]))
    return x


class ClipBackbone:
    """One CLIP model (by name, e.g. "vit"), its feature cache entries and text classifiers."""

    def __init__(self, name: str, weights_path: str | os.PathLike, cache: FeatureCache):
        self.name = name
        self.path = Path(weights_path)
        self.cache = cache
        info = weights.read_info(self.path)  # fails early, naming the file, if absent/wrong
        if info["family"] != "clip":
            raise weights.WeightsError(
                f"{self.path}: holds {info['family']!r} weights, but backbone {name!r} needs CLIP"
            )
        self.info = info
        self._model = None
        self._preprocess = None
        self.load_seconds = 0.0

    # ------------------------------------------------------------------ lazy model
    def _load(self):
        if self._model is None:
            from models import clip

            t = time.time()
            self._model, self._preprocess = clip.load(self.path)
            self.load_seconds += time.time() - t
            log.info("loaded CLIP %s from %s (%.1fs)", self.name, self.path, time.time() - t)
        return self._model

    @property
    def preprocess(self):
        if self._preprocess is None:
            from models.clip.preprocess import Preprocess

            # The preprocessing is a pure function of the input resolution: no model needed
            # to build it, so cache hits never load the network.
            self._preprocess = Preprocess(int(self.info["config"]["image_resolution"]))
        return self._preprocess

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def num_parameters(self) -> int:
        """Parameters of the whole CLIP model (image and text towers), from the file header."""
        from safetensors import safe_open

        total = 0
        with safe_open(str(self.path), framework="numpy") as f:
            for k in f.keys():
                total += int(np.prod(f.get_slice(k).get_shape()))
        return total

    def key_parts(self) -> dict[str, str]:
        return {"backbone": f"clip-{self.name}", "weights": self.cache.fingerprint(self.path)}

    # ------------------------------------------------------------------ images
    def _encode(self, batch: np.ndarray) -> np.ndarray:
        from models.runtime import jittor

        jt = jittor()
        model = self._load()
        with jt.no_grad():
            out = model.encode_image(jt.array(batch)).numpy()
        return np.array(out, np.float32)  # own the memory: Jittor may reuse the buffer

    def job(self, label: str) -> EncoderJob:
        """This backbone as one encoder of ``FeatureCache.get_or_compute_many``."""
        return EncoderJob(self.key_parts(), self._encode, f"{label}-{self.name}")

    # ------------------------------------------------------------------ text
    def text_classifier(
        self,
        class_names: Sequence[str],
        templates: str,
        descriptions: str | None,
        out_dir: str | os.PathLike,
    ) -> np.ndarray:
        """T [d, C] for ``class_names``, cached in ``out_dir/text_<name>.safetensors`` and reused
        while the weights, the class names and the prompts are the same."""
        from fewshot.templates import class_prompts

        prompts = class_prompts(class_names, templates, descriptions)
        key = {
            "weights": self.cache.fingerprint(self.path),
            "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
        }
        path = Path(out_dir) / f"text_{self.name}.safetensors"
        if path.is_file():
            try:
                tensors, info = weights.load(path, expect_family=TEXT_FAMILY)
                if info["config"].get("key") == key:
                    return tensors["T"]
            except weights.WeightsError as e:
                log.warning("rebuilding the text classifier: %s", e)
        from fewshot.zeroshot import text_classifier_from_prompts

        t = time.time()
        T = text_classifier_from_prompts(self._load(), prompts)
        log.info("text classifier %s: %d classes in %.1fs", self.name, T.shape[1], time.time() - t)
        config = {"key": key, "templates": templates}
        weights.save(path, {"T": T}, family=TEXT_FAMILY, config=config)
        return T


def backbone_features(
    backbones: Mapping[str, ClipBackbone],
    paths: Sequence[str],
    label: str,
    *,
    flip_tta: bool = False,
    batch_size: int = 64,
    workers: int | None = None,
) -> tuple[dict[str, np.ndarray], set[int]]:
    """L2-normalised features of ``paths`` from every backbone, and the undecodable images.

    Backbones with the same preprocessing (ViT-B/32 and RN101 both take 224 px) share one
    decoding pass: each image is read once for all of them. Each keeps its own cache entry.
    """
    views = ("orig", "flip") if flip_tta else ("orig",)
    groups: dict[str, list[ClipBackbone]] = {}
    for bb in backbones.values():
        groups.setdefault(describe_preprocess(bb.preprocess), []).append(bb)
    X: dict[str, np.ndarray] = {}
    failed: set[int] = set()
    for group in groups.values():
        sets = group[0].cache.get_or_compute_many(
            [bb.job(label) for bb in group],
            paths,
            group[0].preprocess,
            batch_size=batch_size,
            workers=workers,
            views=views,
        )
        for bb, fs in zip(group, sets):
            X[bb.name] = combine_views(fs, flip_tta)
            failed.update(fs.failed)
    return {name: X[name] for name in backbones}, failed
