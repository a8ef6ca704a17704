"""What train.py, test.py and the evaluation share: the configuration, the class list, the
feature cache and the encoders, and the trained artefacts on disk."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.backbones import ClipBackbone, ConvNeXtBackbone, l2_normalize
from pipeline.env import Env
from pipeline.features import FeatureCache, FeatureSet
from pipeline.heads import classes_fingerprint
from pipeline.lists import ClassList, LabeledList, read_class_list, read_labeled_list
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
    loads_in: dict[str, float] = field(default_factory=dict)  # model loading inside each step
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

    def _load_seconds(self) -> dict[str, float]:
        loads = {name: bb.load_seconds for name, bb in self.backbones.items()}
        if self._convnext is not None:
            loads["convnext"] = self._convnext.load_seconds
        return loads

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``timings[name]``, its model loading to ``loads_in``."""
        t, loaded = time.time(), sum(self._load_seconds().values())
        yield  # a failed step is not recorded: the run ends with its error
        self.timings[name] = self.timings.get(name, 0.0) + time.time() - t
        inside = sum(self._load_seconds().values()) - loaded
        if inside:
            self.loads_in[name] = self.loads_in.get(name, 0.0) + inside

    def record(self) -> dict[str, Any]:
        """What train.json / test.json report: the device, wall time per step (steps may nest;
        model loads count in the step that needed them, and are listed apart), peak memory."""
        import resource

        from models.runtime import device_record

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {
            "device": device_record(),
            "timings": dict(self.timings),
            "model_load_seconds": self._load_seconds(),
            "model_load_seconds_in_steps": dict(self.loads_in),
            "peak_rss_mb": round(peak_kb / 1024, 1),
        }

    def _loader(self, batch_divisor: int = 1) -> dict[str, Any]:
        """The feature cache's loading options (the seed only draws the "aug" view)."""
        batch_size = max(1, self.env.batch_size // batch_divisor)
        return dict(batch_size=batch_size, workers=self.env.workers, seed=self.env.seed)

    def read_list(self, path: Path, what: str) -> LabeledList:
        if not path.is_file():
            raise FileNotFoundError(f"{what} list not found: {path} (run process.py first)")
        return read_labeled_list(path, self.classes, self.env.data_dir)

    def text_classifiers(self, prompts: str) -> dict[str, np.ndarray]:
        """T [d, C] per backbone for ``prompts``: "bare", or "templates" (the settings' set)."""
        s = self.settings
        templates = s.templates if prompts == "templates" else prompts
        args = (self.classes.names, templates, s.descriptions, s.name_edits, self.heads_dir)
        with self.timed("text classifiers"):
            return {name: bb.text_classifier(*args) for name, bb in self.backbones.items()}

    def clip_views(
        self, paths: Sequence[str], label: str, views: Sequence[str]
    ) -> tuple[dict[str, FeatureSet], tuple[int, ...]]:
        """Raw features of ``paths`` in ``views`` from every backbone, and the undecodable images
        (placeholder rows). Backbones of one input size share a decoding pass."""
        groups: dict[str, list[ClipBackbone]] = {}
        for bb in self.backbones.values():
            groups.setdefault(bb.preprocess.describe(), []).append(bb)
        out: dict[str, FeatureSet] = {}
        with self.timed(f"features {label}"):
            for group in groups.values():
                encoders = [bb.encoder(label) for bb in group]
                sets = self.cache.get(encoders, paths, group[0].preprocess, views, **self._loader())
                out.update({bb.name: fs for bb, fs in zip(group, sets)})
        failed = sorted(set().union(*(fs.failed for fs in out.values())))
        return {name: out[name] for name in self.backbones}, tuple(failed)

    def list_views(
        self, items: LabeledList, label: str, views: Sequence[str]
    ) -> tuple[dict[str, FeatureSet], np.ndarray]:
        """``clip_views`` of a labelled list without its undecodable images: (sets, kept rows)."""
        sets, failed = self.clip_views(items.resolve(self.env.data_dir), label, views)
        keep = np.setdiff1d(np.arange(len(items)), failed)
        if failed:
            log.warning("%s: %d undecodable image(s) skipped", label, len(failed))
        return {
            b: FeatureSet({v: x[keep] for v, x in fs.features.items()}, ())
            for b, fs in sets.items()
        }, keep

    def convnext_features(
        self, paths: Sequence[str], label: str, preprocess: Any
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """Pooled ConvNeXt-V2 features [n, D] of ``paths`` (cached), and the undecodable images."""
        enc = self.convnext.encoder(label, str(preprocess.size))
        with self.timed(f"features {label} convnext"):
            (fs,) = self.cache.get([enc], paths, preprocess, **self._loader(batch_divisor=4))
        return fs["orig"], fs.failed

    def aux_features(self, paths: Sequence[str], label: str) -> np.ndarray:
        """AMU's auxiliary features: ConvNeXt-V2's in the expert's eval view, L2-normalised."""
        from models.convnext import preprocess

        pre = preprocess(self.settings.expert_eval_size, self.settings.expert_resample)
        return l2_normalize(self.convnext_features(paths, label, pre)[0])

    def head_expect(self, name: str) -> dict[str, str]:
        """What a head of backbone ``name`` must have been trained with to be used now."""
        classes = classes_fingerprint(self.classes.names)
        return {"classes": classes, "weights": self.backbones[name].fingerprint()}

    def load_cascade(
        self, expect: Optional[dict[str, dict[str, str]]] = None
    ) -> tuple[Any, dict[str, dict[str, Any]], np.ndarray, dict[str, Any]]:
        """train.py's choices (with the settings' pins), the seen-class head, its class ids and
        heads/cascade.json. ``expect``: backbone -> what its head must have been trained with."""
        from pipeline.heads import HeadError, load_models, read_json_artefact
        from pipeline.scores import CHOICE_FILE, HEAD_METHODS, Choice

        path = self.heads_dir / CHOICE_FILE
        record = read_json_artefact(path)
        try:
            choice = Choice(**record["choice"]).pinned(self.settings)
            trained_with = dict(record["trained_with"])
        except (KeyError, TypeError, ValueError) as e:
            raise HeadError(
                f"{path}: corrupted ({type(e).__name__}: {e}); re-run bash train.sh"
            ) from None
        for key, value in trained_with.items():
            if getattr(choice, key) != value:
                raise HeadError(
                    f"settings pin {key}={getattr(choice, key)!r}, but the heads were trained "
                    f"with {value!r}: run train.sh again with these settings"
                )
        expect = expect or {b: self.head_expect(b) for b in self.backbones}
        models, infos = load_models(self.heads_dir, HEAD_METHODS[choice.seen_head], expect)
        seen = np.asarray(infos[0]["seen_ids"], np.int64)
        if any(info["seen_ids"] != infos[0]["seen_ids"] for info in infos):
            raise HeadError(f"{self.heads_dir}: heads of different classes; run train.sh again")
        return choice, models, seen, record

    def load_expert(self):
        """The trained domain expert, or None (no expert domain, or none trained)."""
        from pipeline.expert import INFO_FILE, DomainExpert

        if not self.settings.expert_domain:
            return None
        if not (self.expert_dir / INFO_FILE).is_file():
            log.warning("no trained expert in %s: stage 3 is skipped", self.expert_dir)
            return None
        return DomainExpert.load(self.expert_dir, self.env.weights["convnext"])
