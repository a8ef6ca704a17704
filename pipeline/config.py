"""Configuration of every script: environment variables, overridden by command-line arguments.

=================  ==============================================  ================================
variable           default                                         meaning
=================  ==============================================  ================================
OUT_DIR            ``out``                                         everything the pipeline writes;
                                                                   the submission is
                                                                   ``$OUT_DIR/result.txt``
DATA_DIR           ``$OUT_DIR/demo`` (the generated demo data)     holds ``TrainSet/``,
                                                                   ``train.txt``, the class lists
CLASSES            ``$DATA_DIR/classes_b.txt``, else the repo's    the class list
                   ``data/classes_b.txt``
TRAIN_LIST         ``$DATA_DIR/train.txt``                         the labelled training pool
TEST_DIR           first existing of ``$DATA_DIR/TestSetB``,       the test images
                   ``TestSetA``, ``TestSet`` (else ``TestSet``)
CLIP_VIT           ``$OUT_DIR/weights/ViT-B-32.safetensors``       converted CLIP ViT-B/32
CLIP_RN            ``$OUT_DIR/weights/RN101.safetensors``          converted CLIP RN101
CONVNEXT           ``$OUT_DIR/weights/convnextv2_base.safetensors``  converted ConvNeXt-V2 base
BATCH_SIZE         64                                              images per encoder batch
WORKERS            one per core, at most 16                        image decoding workers
DECODE_BACKEND     ``auto``: processes when Jittor runs on CUDA,   how images are decoded
                   threads on the CPU                              (``thread``/``process``)
SEED               0                                               every random choice
SHOTS              4                                               training images per class
VAL_PER_CLASS      20                                              validation images per class
=================  ==============================================  ================================

Relative paths are taken relative to the current directory. ``Config.is_demo`` is true when no
DATA_DIR was given: scripts then work on the generated demo dataset (pipeline.demo_data).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_CLASSES = REPO_ROOT / "data" / "classes_b.txt"


# The first is the default (see pipeline.images.resolve_backend).
DECODE_BACKENDS = ("auto", "thread", "process")


class ConfigError(ValueError):
    """A configuration value is malformed (the message names the variable)."""


def _default_workers() -> int:
    # One decoding thread per core: see pipeline.images.default_workers for why no core is
    # kept back for the encoder.
    return max(1, min(16, os.cpu_count() or 1))


@dataclass(frozen=True)
class Config:
    """Resolved configuration; build it with ``Config.from_env``."""

    out_dir: Path
    data_dir: Path
    classes: Path
    train_list: Path
    test_dir: Path
    clip_vit: Path
    clip_rn: Path
    convnext: Path
    batch_size: int = 64
    workers: int = dataclasses.field(default_factory=_default_workers)
    decode_backend: str = "auto"
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
    ) -> Config:
        """Read the environment (``os.environ`` unless ``environ`` is given), then apply
        ``overrides`` (field name -> value; None values are ignored, as are keys that are not
        fields, so ``vars(argparse_namespace)`` can be passed as is)."""
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
                raise ConfigError(
                    f"{var}/--{field.replace('_', '-')}: not an integer: {val!r}"
                ) from None
            if x < minimum:
                raise ConfigError(
                    f"{var}/--{field.replace('_', '-')}: must be >= {minimum}, got {x}"
                )
            return x

        def choice(field: str, var: str, allowed: tuple[str, ...]) -> str:
            val = get(field, var)
            if val is None:
                return allowed[0]
            if val not in allowed:
                raise ConfigError(
                    f"{var}/--{field.replace('_', '-')}: must be one of {', '.join(allowed)}, "
                    f"got {val!r}"
                )
            return val

        out_dir = path("out_dir", "OUT_DIR", Path("out"))
        data_given = get("data_dir", "DATA_DIR")
        data_dir = Path(data_given).expanduser() if data_given else out_dir / "demo"

        classes_default = data_dir / "classes_b.txt"
        if not classes_default.is_file():
            classes_default = REPO_CLASSES
        test_default = data_dir / "TestSet"
        for name in ("TestSetB", "TestSetA", "TestSet"):
            if (data_dir / name).is_dir():
                test_default = data_dir / name
                break
        weights = out_dir / "weights"
        return cls(
            out_dir=out_dir,
            data_dir=data_dir,
            classes=path("classes", "CLASSES", classes_default),
            train_list=path("train_list", "TRAIN_LIST", data_dir / "train.txt"),
            test_dir=path("test_dir", "TEST_DIR", test_default),
            clip_vit=path("clip_vit", "CLIP_VIT", weights / "ViT-B-32.safetensors"),
            clip_rn=path("clip_rn", "CLIP_RN", weights / "RN101.safetensors"),
            convnext=path("convnext", "CONVNEXT", weights / "convnextv2_base.safetensors"),
            batch_size=integer("batch_size", "BATCH_SIZE", 64, 1),
            workers=integer("workers", "WORKERS", _default_workers(), 0),
            decode_backend=choice("decode_backend", "DECODE_BACKEND", DECODE_BACKENDS),
            seed=integer("seed", "SEED", 0, 0),
            shots=integer("shots", "SHOTS", 4, 1),
            val_per_class=integer("val_per_class", "VAL_PER_CLASS", 20, 0),
            is_demo=data_given is None,
        )

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """Multi-line summary for logs."""
        lines = [f"  {f.name:14s} {getattr(self, f.name)}" for f in dataclasses.fields(self)]
        head = "configuration" + (" (demo dataset: DATA_DIR not set)" if self.is_demo else "")
        return "\n".join([head, *lines])


_ARGS = {
    # field: (environment variable, type, help)
    "data_dir": ("DATA_DIR", str, "folder with TrainSet/, train.txt and the class lists"),
    "classes": ("CLASSES", str, "class list file"),
    "train_list": ("TRAIN_LIST", str, "labelled training list"),
    "test_dir": ("TEST_DIR", str, "folder of test images"),
    "out_dir": ("OUT_DIR", str, "output folder"),
    "clip_vit": ("CLIP_VIT", str, "converted CLIP ViT-B/32 weights"),
    "clip_rn": ("CLIP_RN", str, "converted CLIP RN101 weights"),
    "convnext": ("CONVNEXT", str, "converted ConvNeXt-V2 weights"),
    "batch_size": ("BATCH_SIZE", int, "images per encoder batch"),
    "workers": ("WORKERS", int, "image decoding workers (0: decode inline)"),
    "decode_backend": ("DECODE_BACKEND", str, "auto, thread or process (auto: process on CUDA)"),
    "seed": ("SEED", int, "random seed"),
    "shots": ("SHOTS", int, "training images per class"),
    "val_per_class": ("VAL_PER_CLASS", int, "validation images per class"),
}


def add_config_arguments(
    parser: argparse.ArgumentParser, fields: Optional[list[str]] = None
) -> None:
    """Add ``--data-dir``, ``--out-dir``, ... (all fields, or those named) to ``parser``, each
    defaulting to None so that ``Config.from_env(vars(args))`` falls back to the environment."""
    group = parser.add_argument_group("configuration (overrides the environment variable)")
    for name, (var, typ, text) in _ARGS.items():
        if fields is not None and name not in fields:
            continue
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=typ,
            default=None,
            help=f"{text} [${var}]",
        )
