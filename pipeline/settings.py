"""Method settings of the cascade: stages, fusion weights, hyperparameters.

Paths and sizes come from pipeline.env (environment variables); *what the pipeline does* comes
from here. Defaults follow the challenge solution this project reproduces; a YAML file (``--settings
FILE`` or ``$SETTINGS``) overrides any field, e.g.::

    inmap_variant: official
    inmap_gamma: 0.5
    lpp_fusion: {vit: 0.5, rn: 0.5}
    expert_domain: null        # no expert stage

Which classes are "unseen" (no training image) comes from the training list, and which belong to the
expert from ``expert_domain`` and the class list; nothing is tied to class ids.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.env import CLIP_BACKBONES

INMAP_VARIANTS = ("auto", "official", "challenge")


class SettingsError(ValueError):
    """A settings file or value is invalid (the message names it)."""


@dataclass(frozen=True)
class Settings:
    """Everything that selects or tunes a method. See the module docstring for overriding."""

    # CLIP backbones, by name (pipeline.env.WEIGHT_FILES), and the prompts of the text classifiers.
    backbones: tuple[str, ...] = ("vit", "rn")
    templates: str = "domain"  # single | ensemble7 | domain | descriptions
    descriptions: Optional[str] = None  # JSON {class name: [sentences]} for "descriptions"
    flip_tta: bool = False  # average the features of each image and its mirror image

    # Stage 1: InMaP over all classes; answers images whose top-1 class has no training image.
    unseen_stage: bool = True
    # "auto": the variant train.py picked on the validation split with pseudo-unseen classes
    # (falls back to "challenge" when the split has none); or "official" / "challenge".
    inmap_variant: str = "auto"
    inmap_gamma: Optional[float] = None  # Sinkhorn class-marginal exponent (None: the variant's)
    inmap_fusion: dict[str, float] = field(default_factory=lambda: {"vit": 0.5, "rn": 0.5})

    # Stage 2: LP++ over the seen classes, one probe per backbone, logits fused.
    lpp_fusion: dict[str, float] = field(default_factory=lambda: {"vit": 0.6, "rn": 0.4})
    lpp_epochs: int = 300  # official LP++ default (the challenge solution used 1000)
    lpp_learn_alpha: bool = True  # official; the challenge solution froze alpha

    # Stage 3: the ConvNeXt-V2 expert over the classes of one domain (None: no expert).
    expert_domain: Optional[str] = "Thu-dog"
    expert_epochs: int = 31
    expert_views: int = 10
    expert_eval_size: int = 384
    expert_train_resize: int = 320
    expert_train_crop: int = 280

    # Optional AMU-Tuning head on the seen classes with ConvNeXt-V2 features as auxiliary branch;
    # reported by the evaluation, not used by the cascade.
    amu: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
        """Defaults, then the YAML file (``path`` or ``$SETTINGS``), then ``overrides``."""
        values: dict[str, Any] = {}
        path = path or os.environ.get("SETTINGS") or None
        if path:
            import yaml

            try:
                loaded = yaml.safe_load(Path(path).read_text()) or {}
            except FileNotFoundError:
                raise SettingsError(f"settings file not found: {path}") from None
            except yaml.YAMLError as e:
                raise SettingsError(f"{path}: not valid YAML ({e})") from None
            if not isinstance(loaded, dict):
                raise SettingsError(f"{path}: expected a mapping of setting: value")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source=str(path) if path else "overrides")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> Settings:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise SettingsError(f"{source}: unknown settings {unknown}; known: {sorted(names)}")
        if "backbones" in values:
            values["backbones"] = tuple(values["backbones"])
        s = cls(**values)
        s.validate(source)
        return s

    def validate(self, source: str = "settings") -> None:
        bad = [b for b in self.backbones if b not in CLIP_BACKBONES]
        if bad or not self.backbones:
            known = list(CLIP_BACKBONES)
            raise SettingsError(f"{source}: backbones {bad} unknown; known {known}")
        if self.inmap_variant not in INMAP_VARIANTS:
            raise SettingsError(f"{source}: inmap_variant must be one of {INMAP_VARIANTS}")
        for name in ("inmap_fusion", "lpp_fusion"):
            weights = getattr(self, name)
            if set(weights) != set(self.backbones):
                raise SettingsError(
                    f"{source}: {name} must give a weight for each backbone {list(self.backbones)},"
                    f" got {weights}"
                )
