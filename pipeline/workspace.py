"""What train.py, test.py and the evaluation share: the configuration, the class list, the
feature cache and the encoders, the trained heads on disk, and the cascade on features.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.backbones import ClipBackbone, ConvNeXtBackbone, combine_views, l2_normalize
from pipeline.cascade import CascadeResult, run_cascade
from pipeline.env import Env
from pipeline.features import FeatureCache
from pipeline.heads import classes_fingerprint, head_path, load_head
from pipeline.lists import ClassList, LabeledList, read_class_list, read_labeled_list
from pipeline.scores import stage1_choice, stage1_scores, stage2_scores
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """One run's environment, settings, class list, feature cache and CLIP backbones."""

    env: Env
    settings: Settings
    classes: ClassList
    cache: FeatureCache
    backbones: dict[str, ClipBackbone]
    timings: dict[str, float] = field(default_factory=dict)
    _convnext: Optional[ConvNeXtBackbone] = None

    @classmethod
    def open(cls, env: Env, settings: Settings) -> Workspace:
        classes = read_class_list(env.classes)
        backbones = {name: ClipBackbone(name, env.weights[name]) for name in settings.backbones}
        return cls(env, settings, classes, FeatureCache(env.cache_dir), backbones)

    @property
    def heads_dir(self) -> Path:
        return self.env.out_dir / "heads"

    @property
    def expert_dir(self) -> Path:
        return self.env.out_dir / "expert"

    @property
    def convnext(self) -> ConvNeXtBackbone:
        """The ConvNeXt-V2 file of CONVNEXT (checked when first asked for)."""
        if self._convnext is None:
            self._convnext = ConvNeXtBackbone(self.env.weights["convnext"])
        return self._convnext

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[name]``."""
        t = time.time()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.time() - t

    def record(self) -> dict[str, Any]:
        """What a run reports in train.json / test.json: the device and CUDA libraries, wall
        time per step (model loads included in the step that needed them, and listed apart)
        and the peak memory."""
        import resource

        from models.runtime import device_record

        loads = {name: bb.load_seconds for name, bb in self.backbones.items()}
        if self._convnext is not None:
            loads["convnext"] = self._convnext.load_seconds
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {
            "device": device_record(),
            "timings": dict(self.timings),
            "model_load_seconds": loads,
            "peak_rss_mb": round(peak_kb / 1024, 1),
        }

    def read_list(self, path: Path, what: str) -> LabeledList:
        if not path.is_file():
            raise FileNotFoundError(f"{what} list not found: {path} (run process.py first)")
        return read_labeled_list(path, self.classes, self.env.data_dir)

    # ------------------------------------------------------------------ features
    def text_classifiers(self) -> dict[str, np.ndarray]:
        s = self.settings
        with self.timed("text classifiers"):
            return {
                name: bb.text_classifier(
                    self.classes.names, s.templates, s.descriptions, self.heads_dir
                )
                for name, bb in self.backbones.items()
            }

    def clip_features(
        self, paths: Sequence[str], label: str
    ) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
        """L2-normalised features of ``paths`` from every backbone (flip-averaged with
        ``flip_tta``), and the undecodable images (placeholder rows).

        Backbones with the same preprocessing (ViT-B/32 and RN101 both take 224 px) share one
        decoding pass; each keeps its own cache entries.
        """
        views = ("orig", "flip") if self.settings.flip_tta else ("orig",)
        groups: dict[str, list[ClipBackbone]] = {}
        for bb in self.backbones.values():
            groups.setdefault(bb.preprocess.describe(), []).append(bb)
        X: dict[str, np.ndarray] = {}
        failed: set[int] = set()
        with self.timed(f"features {label}"):
            for group in groups.values():
                sets = self.cache.get(
                    [bb.encoder(label) for bb in group],
                    paths,
                    group[0].preprocess,
                    views,
                    batch_size=self.env.batch_size,
                    workers=self.env.workers,
                )
                for bb, fs in zip(group, sets):
                    X[bb.name] = combine_views(fs, self.settings.flip_tta)
                    failed.update(fs.failed)
        return {name: X[name] for name in self.backbones}, tuple(sorted(failed))

    def list_features(
        self, items: LabeledList, label: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """CLIP features of a labelled list with the undecodable images dropped (with a
        warning); returns (features by backbone, kept row indices)."""
        X, failed = self.clip_features(items.resolve(self.env.data_dir), label)
        keep = np.setdiff1d(np.arange(len(items)), failed)
        if failed:
            log.warning("%s: %d undecodable image(s) skipped", label, len(failed))
        return {k: v[keep] for k, v in X.items()}, keep

    def convnext_features(
        self, paths: Sequence[str], label: str, preprocess: Any, normalize: bool = False
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """Pooled ConvNeXt-V2 features [n, D] of ``paths`` with ``preprocess`` (cached), and the
        undecodable images; L2-normalised rows with ``normalize``."""
        enc = self.convnext.encoder(label, str(preprocess.size))
        with self.timed(f"features {label} convnext"):
            (fs,) = self.cache.get(
                [enc],
                paths,
                preprocess,
                batch_size=max(1, self.env.batch_size // 4),
                workers=self.env.workers,
            )
        return (l2_normalize(fs["orig"]) if normalize else fs["orig"]), fs.failed

    # ------------------------------------------------------------------ trained heads
    def head_expect(self, name: str) -> dict[str, str]:
        """What a head of backbone ``name`` must have been trained with to be used now."""
        return {
            "classes": classes_fingerprint(self.classes.names),
            "weights": self.backbones[name].fingerprint(),
        }

    def load_probes(self, tag: str = "") -> tuple[dict[str, Any], np.ndarray]:
        """The saved LP++ probes of every backbone and the seen class ids they cover."""
        from fewshot.lpp import LPPlusPlus

        probes, seen = {}, None
        for name in self.backbones:
            path = head_path(self.heads_dir, "lpp", name, tag)
            arrays, info = load_head(path, self.head_expect(name))
            probes[name] = LPPlusPlus.from_state_dict(arrays)
            ids = np.asarray(info["seen_ids"], np.int64)
            if seen is not None and not np.array_equal(seen, ids):
                raise ValueError(
                    "LP++ probes of the backbones cover different classes; re-run train"
                )
            seen = ids
        return probes, seen

    def load_expert(self):
        """The trained domain expert, or None (no expert domain, or none trained)."""
        from pipeline.expert import INFO_FILE, DomainExpert

        if not self.settings.expert_domain:
            return None
        if not (self.expert_dir / INFO_FILE).is_file():
            log.warning("no trained expert in %s: stage 3 is skipped", self.expert_dir)
            return None
        return DomainExpert.load(self.expert_dir, self.env.weights["convnext"])

    # ------------------------------------------------------------------ the cascade
    def run_stages(
        self,
        paths: list[str],
        X: dict[str, np.ndarray],
        T: dict[str, np.ndarray],
        probes: dict[str, Any],
        seen: np.ndarray,
        expert,
        label: str,
    ) -> CascadeResult:
        """All stages on the images ``paths`` with CLIP features X; the expert encodes only the
        images routed to it (through the feature cache)."""
        s = self.settings
        n, C = len(paths), self.classes.num_classes
        unseen = np.setdiff1d(np.arange(C), seen)
        if s.unseen_stage and unseen.size:
            name, variant, params = stage1_choice(s, self.heads_dir)
            log.info("stage 1: InMaP %s %s on %d images", variant, params or "", n)
            with self.timed("stage 1 (InMaP)"):
                all_scores = stage1_scores(X, T, variant, params, s.inmap_fusion)
        else:
            all_scores, unseen = np.zeros((n, C), np.float32), np.zeros(0, np.int64)
        with self.timed("stage 2 (LP++)"):
            seen_scores = stage2_scores(X, probes, s.lpp_fusion)
        if expert is None:
            return run_cascade(all_scores, unseen, seen_scores, seen)
        # Under the pseudo-unseen protocol some expert classes may be held out: it ranks the rest.
        keep = np.isin(expert.class_ids, seen)

        def expert_scores(rows: np.ndarray) -> np.ndarray:
            with self.timed("stage 3 (expert)"):
                feats, _ = self.convnext_features(
                    [paths[i] for i in rows], f"{label}-expert", expert.preprocess
                )
                return expert.logits(feats)[:, keep]

        return run_cascade(
            all_scores, unseen, seen_scores, seen, expert.class_ids[keep], expert_scores
        )
