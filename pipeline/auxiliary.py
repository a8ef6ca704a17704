"""ConvNeXt-V2 features as the auxiliary branch of AMU-Tuning (optional, ``amu: true``).

AMU-Tuning learns a logit bias from features of a second model; the paper used MoCo-v3, this
project has the ImageNet ConvNeXt-V2 at hand. The frozen backbone's pooled features (eval
transform, no augmentation) go through the same feature cache as CLIP's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.backbones import l2_normalize
from pipeline.features import FeatureCache

log = logging.getLogger(__name__)


class ConvNeXtFeatures:
    """Pooled ConvNeXt-V2 features of image lists, cached; the model loads on a cache miss."""

    def __init__(self, weights_path: str | os.PathLike, cache: FeatureCache, size: int):
        from models import convnext_v2

        self.path = Path(weights_path)
        self.cache = cache
        self.preprocess = convnext_v2.preprocess(size)
        self._model = None

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        from models import convnext_v2
        from models.runtime import jittor

        jt = jittor()
        if self._model is None:
            self._model = convnext_v2.load(self.path)
        with jt.no_grad():
            return np.array(self._model.forward_features(jt.array(batch)).numpy(), np.float32)

    def features(
        self, paths: Sequence[str], label: str, batch_size: int = 16, workers: int | None = None
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """(L2-normalised features [n, D], indices of undecodable images)."""
        fs = self.cache.get_or_compute(
            {"backbone": "convnextv2", "weights": self.cache.fingerprint(self.path)},
            paths,
            self._encode,
            self.preprocess,
            batch_size=batch_size,
            workers=workers,
            label=f"{label}-convnext",
        )
        return l2_normalize(fs["orig"]), fs.failed
