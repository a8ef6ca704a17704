"""Where the pipeline reads and writes, and how much: paths, sizes and the seed, from environment
variables overridden by command-line options. (What the methods do comes from
``pipeline.settings``.)

=================  ==============================================  ================================
variable           default                                         meaning
=================  ==============================================  ================================
OUT_DIR            ``out``                                         everything the pipeline writes;
                                                                   the submission is
                                                                   ``$OUT_DIR/result.txt``
DATA_DIR           ``$OUT_DIR/demo`` (the generated demo data)     holds ``TrainSet/``,
                                                                   ``train.txt``, the class list
CLASSES            ``$DATA_DIR/classes_b.txt``, else               the class list
                   ``$DATA_DIR/classes.txt``
TRAIN_LIST         ``$DATA_DIR/train.txt``                         the labelled training pool
TEST_DIR           first existing of ``$DATA_DIR/TestSetB``,       the test images
                   ``TestSetA``, ``TestSet`` (else ``TestSet``)
CLIP_VIT           ``$OUT_DIR/weights/ViT-B-32.safetensors``       weight files: see WEIGHT_FILES
CLIP_RN            ``$OUT_DIR/weights/RN101.safetensors``
CONVNEXT           ``$OUT_DIR/weights/convnextv2_base.safetensors``
BATCH_SIZE         64                                              images per encoder batch
WORKERS            one per core, at most 16                        image decoding threads
SEED               0                                               every random choice
SHOTS              4                                               training images per class
VAL_PER_CLASS      20                                              validation images per class
=================  ==============================================  ================================

Relative paths are taken relative to the current directory. ``Env.is_demo`` is true when no
DATA_DIR was given: scripts then work on the generated demo dataset (pipeline.synthetic).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from pipeline.images import default_workers

REPO_ROOT = Path(__file__).resolve().parent.parent


class WeightFile(NamedTuple):
    variable: str  # environment variable (and --option) naming the file
    default: str  # file name under $OUT_DIR/weights
    family: str  # "clip" (a backbone of the cascade) or "convnextv2"
    help: str


# Every weight file the pipeline reads, by name. The "clip" entries are the backbones that
# Settings.backbones may name: adding a backbone is one line here.
WEIGHT_FILES: dict[str, WeightFile] = {
    "vit": WeightFile("CLIP_VIT", "ViT-B-32.safetensors", "clip", "converted CLIP ViT-B/32"),
    "rn": WeightFile("CLIP_RN", "RN101.safetensors", "clip", "converted CLIP RN101"),
    "convnext": WeightFile(
        "CONVNEXT", "convnextv2_base.safetensors", "convnextv2", "converted ConvNeXt-V2"
    ),
}
CLIP_BACKBONES = tuple(k for k, w in WEIGHT_FILES.items() if w.family == "clip")


class ConfigError(ValueError):
    """A configuration value is malformed (the message names the variable)."""


@dataclass(frozen=True)
class Env:
    """Resolved paths and sizes; build it with ``Env.from_env``."""

    out_dir: Path
    data_dir: Path
    classes: Path
    train_list: Path
    test_dir: Path
    weights: dict[str, Path]  # WEIGHT_FILES name -> file
    batch_size: int = 64
    workers: int = dataclasses.field(default_factory=default_workers)
    seed: int = 0
    shots: int = 4
    val_per_class: int = 20
    is_demo: bool = False

    # ------------------------------------------------------------------ derived locations
    @property
    def result_path(self) -> Path:
        """The submission file."""
        return self.out_dir / "result.txt"

    @property
    def warnings_path(self) -> Path:
        """Test images that could not be decoded but still got a prediction."""
        return self.out_dir / "warnings.txt"

    @property
    def cache_dir(self) -> Path:
        """Root of the feature cache (pipeline.features)."""
        return self.out_dir / "cache"

    @property
    def lists_dir(self) -> Path:
        """Where process.py writes the 4-shot and validation lists."""
        return self.out_dir / "lists"

    @property
    def train_shots_list(self) -> Path:
        return self.lists_dir / "train_4shot.txt"

    @property
    def val_list(self) -> Path:
        return self.lists_dir / "val.txt"

    @property
    def split_info(self) -> Path:
        return self.lists_dir / "split.json"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(
        cls,
        overrides: Optional[Mapping[str, Any]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> Env:
        """Read the environment (``os.environ`` unless ``environ`` is given), then apply
        ``overrides`` (field or weight name -> value; None values are ignored, as are unknown
        keys, so ``vars(argparse_namespace)`` can be passed as is)."""
        env = os.environ if environ is None else environ
        ov = {k: v for k, v in (overrides or {}).items() if v is not None}

        def get(field: str, var: str) -> Optional[str]:
            if field in ov:
                return str(ov[field])
            val = env.get(var)
            return val if val not in (None, "") else None

        def path(field: str, var: str, default: Path) -> Path:
            val = get(field, var)
            return Path(val).expanduser() if val is not None else default

        def integer(field: str, var: str, default: int, minimum: int) -> int:
            val = get(field, var)
            if val is None:
                return default
            try:
                x = int(val)
            except ValueError:
                raise ConfigError(f"{var}/{_option(field)}: not an integer: {val!r}") from None
            if x < minimum:
                raise ConfigError(f"{var}/{_option(field)}: must be >= {minimum}, got {x}")
            return x

        out_dir = path("out_dir", "OUT_DIR", Path("out"))
        data_given = get("data_dir", "DATA_DIR")
        data_dir = Path(data_given).expanduser() if data_given else out_dir / "demo"
        # The data folder's own class list: board B's name first, then board A's. Never another
        # dataset's list (a missing file is reported when it is read).
        classes_default = data_dir / "classes_b.txt"
        if not classes_default.is_file() and (data_dir / "classes.txt").is_file():
            classes_default = data_dir / "classes.txt"
        test_default = data_dir / "TestSet"
        for name in ("TestSetB", "TestSetA", "TestSet"):
            if (data_dir / name).is_dir():
                test_default = data_dir / name
                break
        weights = {
            name: path(name, w.variable, out_dir / "weights" / w.default)
            for name, w in WEIGHT_FILES.items()
        }
        return cls(
            out_dir=out_dir,
            data_dir=data_dir,
            classes=path("classes", "CLASSES", classes_default),
            train_list=path("train_list", "TRAIN_LIST", data_dir / "train.txt"),
            test_dir=path("test_dir", "TEST_DIR", test_default),
            weights=weights,
            batch_size=integer("batch_size", "BATCH_SIZE", 64, 1),
            workers=integer("workers", "WORKERS", default_workers(), 0),
            seed=integer("seed", "SEED", 0, 0),
            shots=integer("shots", "SHOTS", 4, 1),
            val_per_class=integer("val_per_class", "VAL_PER_CLASS", 20, 0),
            is_demo=data_given is None,
        )

    def replace(self, **changes: Any) -> Env:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """Multi-line summary for logs."""
        lines = []
        for f in dataclasses.fields(self):
            if f.name == "weights":
                lines += [f"  {WEIGHT_FILES[k].variable:14s} {v}" for k, v in self.weights.items()]
            else:
                lines.append(f"  {f.name:14s} {getattr(self, f.name)}")
        head = "configuration" + (" (demo dataset: DATA_DIR not set)" if self.is_demo else "")
        return "\n".join([head, *lines])


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


_ARGS = {
    # field: (environment variable, type, help)
    "data_dir": ("DATA_DIR", str, "folder with TrainSet/, train.txt and the class list"),
    "classes": ("CLASSES", str, "class list file"),
    "train_list": ("TRAIN_LIST", str, "labelled training list"),
    "test_dir": ("TEST_DIR", str, "folder of test images"),
    "out_dir": ("OUT_DIR", str, "output folder"),
    **{name: (w.variable, str, w.help + " weights") for name, w in WEIGHT_FILES.items()},
    "batch_size": ("BATCH_SIZE", int, "images per encoder batch"),
    "workers": ("WORKERS", int, "image decoding threads (0: decode inline)"),
    "seed": ("SEED", int, "random seed"),
    "shots": ("SHOTS", int, "training images per class"),
    "val_per_class": ("VAL_PER_CLASS", int, "validation images per class"),
}


def add_env_arguments(parser: argparse.ArgumentParser, fields: Optional[list[str]] = None) -> None:
    """Add ``--data-dir``, ``--out-dir``, ``--clip-vit``, ... (all, or the fields named) to
    ``parser``, each defaulting to None so that ``Env.from_env(vars(args))`` falls back to the
    environment. A weight file's option is named after its variable (``CLIP_VIT`` ->
    ``--clip-vit``)."""
    group = parser.add_argument_group("configuration (overrides the environment variable)")
    for name, (var, typ, text) in _ARGS.items():
        if fields is not None and name not in fields:
            continue
        option = "--" + var.lower().replace("_", "-") if name in WEIGHT_FILES else _option(name)
        group.add_argument(option, dest=name, type=typ, default=None, help=f"{text} [${var}]")
