"""Method settings: which method each stage runs and its hyperparameters, every value checked.
``settings/default.yaml`` explains each, ``settings/challenge.yaml`` is the challenge recipe; the
cascade choices (CHOICE_OPTIONS) left null are made by the validation (pipeline.selection)."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fewshot.templates import TEMPLATE_SETS
from pipeline.env import CLIP_BACKBONES

# The options of each cascade choice (None in a Settings field: validation chooses). The first
# option is the challenge solution's; STAGE1 names are pipeline.scores.STAGE1_CANDIDATES.
CHOICE_OPTIONS: dict[str, tuple] = {
    "flip_tta": (True, False),
    "inmap_prompts": ("bare", "templates"),
    "stage1": ("challenge", "official-gamma0", "official-gamma0.5", "official-gamma1"),
    "lpp_views": ("orig", "aug"),
    "seen_head": ("lpp", "tip", "lpp+tip", "amu"),
    "expert_integration": ("switch", "fusion"),
    "transclip": ("off", "after", "stage2", "alone"),
}


class SettingsError(ValueError):
    """A settings file or value is invalid (the message names it)."""


@dataclass(frozen=True)
class Settings:
    """Everything that selects or tunes a method (settings/default.yaml says what each means)."""

    backbones: tuple[str, ...] = ("vit", "rn")  # pipeline.env.WEIGHT_FILES
    templates: str = "domain"  # stage-2 prompts (and stage 1's with inmap_prompts: templates)
    descriptions: Optional[str] = None  # JSON {class name: [sentences]} for "descriptions"
    name_edits: dict[str, str] = field(default_factory=dict)  # raw class name -> prompt name
    shot_list: Optional[str] = None  # process.py: use this 4-shot list instead of choosing

    # The cascade's choices (module docstring): None lets the validation choose.
    flip_tta: Optional[bool] = None  # average each image's features with its mirror image's
    inmap_prompts: Optional[str] = None  # stage-1 text: "bare" class names or the templates
    stage1: Optional[str] = None  # InMaP variant (pipeline.scores.STAGE1_CANDIDATES)
    lpp_views: Optional[str] = None  # seen head trained on "orig" or "aug"mented shot views
    seen_head: Optional[str] = None  # "lpp", "tip" (Tip-Adapter-F), "lpp+tip", "amu"
    expert_integration: Optional[str] = None  # "switch" (the expert's ranking) or "fusion"
    transclip: Optional[str] = None  # "off", "after" the cascade, "stage2" or "alone"

    # Stage 1: InMaP over all classes; answers images whose top-1 class has no training image.
    unseen_stage: bool = True
    inmap_fusion: dict[str, float] = field(default_factory=lambda: {"vit": 0.5, "rn": 0.5})

    # Stage 2: a head over the seen classes per backbone, logits fused; LP++'s official defaults.
    lpp_fusion: dict[str, float] = field(default_factory=lambda: {"vit": 0.6, "rn": 0.4})
    lpp_epochs: int = 300
    lpp_learn_alpha: bool = True
    lpp_schedule: str = "none"  # none | cosine | jittor-cosine
    lpp_t_max: dict[str, int] = field(default_factory=dict)  # per backbone (default: epochs)
    lpp_strict_best: bool = False
    lpp_bias_init: str = "zero"  # zero | uniform
    amu: bool = False  # AMU a seen_head candidate: ConvNeXt features of every shot and val image

    # Stage 3: the ConvNeXt-V2 expert over the classes of one domain (None: no expert).
    expert_domain: Optional[str] = "Thu-dog"
    expert_epochs: int = 31
    expert_views: int = 10
    expert_eval_size: int = 384
    expert_train_resize: int = 320
    expert_train_crop: int = 280
    expert_resample: str = "bicubic"  # bicubic | bilinear (the challenge: Jittor's default)
    expert_weight_decay: float = 0.01
    expert_schedule: str = "cosine"  # cosine | jittor-cosine
    expert_t_max: Optional[int] = None  # default: expert_epochs
    expert_eta_min: float = 0.0
    expert_select: str = "best"  # best (validation) | last

    # The board-shaped validation (pipeline.validation).
    val_folds: int = 3  # held-out blocks of seen classes, each playing the unseen classes
    val_unseen_share: Optional[float] = None  # None: stage 1's share on the test set, or 0.28

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        base: Optional[Settings] = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults (or ``base``), then the YAML file (``path`` or $SETTINGS), then overrides."""
        values: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
        path = path or os.environ.get("SETTINGS") or None
        if path:
            import yaml

            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise SettingsError(_unreadable(path, e)) from None
            if not isinstance(loaded, dict):
                raise SettingsError(f"{path}: expected a mapping of setting: value")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source=str(path) if path else "overrides")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> Settings:
        """Settings from ``{name: value}`` (a parsed YAML file), every value checked against
        its field's type and range; SettingsError names ``source`` and the setting."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in values if k not in names)
        if unknown:
            raise SettingsError(f"{source}: unknown settings {unknown}; known: {sorted(names)}")
        checked = {k: _check_type(source, k, v, hints[k]) for k, v in values.items()}
        s = cls(**checked)
        s.validate(source)
        return s

    def validate(self, source: str = "settings") -> None:
        """Ranges, choices and the agreement between fields (types: :meth:`from_dict`)."""

        def error(name: str, what: str) -> SettingsError:
            return SettingsError(f"{source}: {name}: {what}, got {getattr(self, name)!r}")

        if not self.backbones:
            raise error("backbones", "expected at least one backbone")
        bad = [b for b in self.backbones if b not in CLIP_BACKBONES]
        if bad:
            raise error("backbones", f"unknown {bad[0]!r}; known: {list(CLIP_BACKBONES)}")
        if len(set(self.backbones)) != len(self.backbones):
            raise error("backbones", "a backbone is named twice")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise error(name, f"expected one of {', '.join(map(str, choices))}")
        for name, options in CHOICE_OPTIONS.items():
            if getattr(self, name) not in (*options, None):
                text = ", ".join(map(str, options))
                raise error(name, f"expected one of {text} or null (validation chooses)")
        if self.seen_head == "amu" and not self.amu:
            raise error("seen_head", "amu needs amu: true")
        if self.val_unseen_share is not None and self.val_unseen_share >= 1:
            raise error("val_unseen_share", "expected a share below 1")
        if set(self.lpp_t_max) - set(self.backbones):
            raise error("lpp_t_max", f"expected backbones of {list(self.backbones)}")
        for name, low in MINIMUM.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise error(name, f"expected a value >= {low}")
        if self.expert_train_crop > self.expert_train_resize:
            raise error(
                "expert_train_crop",
                f"expected at most expert_train_resize ({self.expert_train_resize})",
            )
        for name in ("inmap_fusion", "lpp_fusion"):
            weights = getattr(self, name)
            if set(weights) != set(self.backbones):
                raise error(name, f"expected a weight for each backbone {list(self.backbones)}")
            if any(w < 0 for w in weights.values()):
                raise error(name, "expected weights >= 0")
            if not sum(weights.values()) > 0:
                raise error(name, "expected weights with a positive sum")
        if self.templates == "descriptions":
            if self.descriptions is None:
                what = "templates: descriptions needs a JSON file {class name: [sentences]}"
                raise error("descriptions", what)
            from fewshot.templates import load_descriptions

            try:
                load_descriptions(self.descriptions)
            except ValueError as e:
                raise SettingsError(f"{source}: descriptions: {' '.join(str(e).split())}") from None
        elif self.descriptions is not None:
            what = "is only read with templates: descriptions (set that too, or remove this)"
            raise error("descriptions", what)


# Choices and lower bounds of the fields that have them (None, where allowed, passes).
CHOICES = {
    "templates": TEMPLATE_SETS,
    "lpp_schedule": ("none", "cosine", "jittor-cosine"),
    "lpp_bias_init": ("zero", "uniform"),
    "expert_resample": ("bicubic", "bilinear"),
    "expert_schedule": ("cosine", "jittor-cosine"),
    "expert_select": ("best", "last"),
}
MINIMUM = {
    **dict.fromkeys(("lpp_epochs", "expert_epochs", "expert_views", "expert_t_max"), 1),
    "val_folds": 1,
    # ConvNeXt-V2 downsamples by 32 in all: smaller images leave nothing to classify.
    **dict.fromkeys(("expert_eval_size", "expert_train_resize", "expert_train_crop"), 32),
    **dict.fromkeys(("expert_weight_decay", "expert_eta_min", "val_unseen_share"), 0),
}
# How a field's value must be written, for the messages (by field; then by annotation).
_EXPECTED = {
    "backbones": "a list of backbone names, e.g. [vit, rn]",
    "descriptions": "the path of a JSON file {class name: [sentences]}",
    "inmap_fusion": "a mapping of backbone: weight, e.g. {vit: 0.5, rn: 0.5}",
    "lpp_fusion": "a mapping of backbone: weight, e.g. {vit: 0.6, rn: 0.4}",
    "lpp_t_max": "a mapping of backbone: epochs, e.g. {vit: 1000, rn: 500}",
    "name_edits": "a mapping of class name: name in prompts",
    "shot_list": "the path of a <path> <label> (or <path>,<label>) list",
}


def _check_type(source: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (bool, int, float, str, Optional[...],
    tuple[str, ...], dict[str, float]) and normalised (tuple, float); SettingsError otherwise."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    ok, out = _matches(value, hint)
    if ok:
        return out
    if name in CHOICES:
        expected = f"one of {', '.join(CHOICES[name])}"
    else:
        expected = _EXPECTED.get(name) or _DESCRIBE.get(hint, str(hint))
    if optional:
        expected += " or null"
    note = ""
    if hint is bool and isinstance(value, str):
        note = " (a string: write true or false without quotes)"
    raise SettingsError(f"{source}: {name}: expected {expected}, got {value!r}{note}")


_DESCRIBE = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _matches(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether ``value`` is of type ``hint``, the value normalised)."""
    origin = typing.get_origin(hint)
    if hint in (bool, str):
        return isinstance(value, hint), value
    if hint is int:  # bool is an int to Python, not here; nor is 2.0
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        return _is_number(value), float(value) if _is_number(value) else value
    if origin is tuple:  # tuple[str, ...]
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value
    if origin is dict:  # dict[str, float | int | str]
        inner = typing.get_args(hint)[1]
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and _matches(v, inner)[0] for k, v in value.items()
        )
        return ok, {k: _matches(v, inner)[1] for k, v in value.items()} if ok else value
    raise TypeError(f"no type check for {hint!r}")  # a new field needs one here


def _unreadable(path: str | os.PathLike, e: Exception) -> str:
    """The one-line message for a settings file that cannot be read or parsed."""
    if isinstance(e, FileNotFoundError):
        return f"settings file not found: {path}"
    if isinstance(e, IsADirectoryError):
        return f"{path}: is a folder, not a YAML file (set SETTINGS or --settings to a file)"
    if isinstance(e, UnicodeDecodeError):
        return f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, OSError):
        return f"{path}: cannot read the settings file ({e.strerror})"
    return f"{path}: not valid YAML ({' '.join(str(e).split())})"
