"""Where the pipeline reads and writes, and how much: paths, sizes and the seed, from environment
variables overridden by command-line options (the variables and their defaults: docs/DATA.md,
"Configuration"). What the methods do comes from ``pipeline.settings``.
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

# Env field -> (variable, help); the defaults are computed in Env.from_env.
_PATHS = {
    "data_dir": ("DATA_DIR", "folder with TrainSet/, train.txt and the class list"),
    "classes": ("CLASSES", "class list file"),
    "train_list": ("TRAIN_LIST", "labelled training list"),
    "test_dir": ("TEST_DIR", "folder of test images"),
    "out_dir": ("OUT_DIR", "output folder"),
}
# Env field -> (variable, default (None: default_workers()), minimum, help)
_INTS = {
    "batch_size": ("BATCH_SIZE", 64, 1, "images per encoder batch"),
    "workers": ("WORKERS", None, 0, "image decoding threads (0: decode inline)"),
    "seed": ("SEED", 0, 0, "random seed"),
    "shots": ("SHOTS", 4, 1, "training images per class"),
    "val_per_class": ("VAL_PER_CLASS", 20, 0, "validation images per class"),
}


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
    batch_size: int
    workers: int
    seed: int
    shots: int
    val_per_class: int
    is_demo: bool  # no DATA_DIR given: the generated demo dataset (pipeline.synthetic)

    @property
    def result_path(self) -> Path:
        return self.out_dir / "result.txt"

    @property
    def warnings_path(self) -> Path:
        return self.out_dir / "warnings.txt"

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "cache"

    @property
    def lists_dir(self) -> Path:
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

    @classmethod
    def from_env(
        cls,
        overrides: Optional[Mapping[str, Any]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> Env:
        """Read the environment (``os.environ`` unless ``environ`` is given), then apply
        ``overrides`` (field or weight name -> value; None values and unknown keys are ignored:
        ``vars(argparse_namespace)`` can be passed as is)."""
        env = os.environ if environ is None else environ
        ov = {k: v for k, v in (overrides or {}).items() if v is not None}

        def get(field: str, var: str) -> Optional[str]:
            return str(ov[field]) if field in ov else env.get(var) or None

        def path(field: str, var: str, default: Path) -> Path:
            val = get(field, var)
            return Path(val).expanduser() if val is not None else default

        def integer(field: str) -> int:
            var, default, minimum, _ = _INTS[field]
            val = get(field, var)
            if val is None:
                return default_workers() if default is None else default
            try:
                x = int(val)
            except ValueError:
                raise ConfigError(f"{var}/{_option(var)}: not an integer: {val!r}") from None
            if x < minimum:
                raise ConfigError(f"{var}/{_option(var)}: must be >= {minimum}, got {x}")
            return x

        out_dir = path("out_dir", "OUT_DIR", Path("out"))
        data_given = get("data_dir", "DATA_DIR")
        data_dir = Path(data_given).expanduser() if data_given else out_dir / "demo"
        # The data folder's own class list, board B's name first; never another dataset's list
        # (a missing file is reported when it is read).
        classes = data_dir / "classes_b.txt"
        if not classes.is_file() and (data_dir / "classes.txt").is_file():
            classes = data_dir / "classes.txt"
        tests = [data_dir / name for name in ("TestSetB", "TestSetA", "TestSet")]
        test_dir = next((d for d in tests if d.is_dir()), tests[-1])
        return cls(
            out_dir=out_dir,
            data_dir=data_dir,
            classes=path("classes", "CLASSES", classes),
            train_list=path("train_list", "TRAIN_LIST", data_dir / "train.txt"),
            test_dir=path("test_dir", "TEST_DIR", test_dir),
            weights={
                n: path(n, w.variable, out_dir / "weights" / w.default)
                for n, w in WEIGHT_FILES.items()
            },
            **{field: integer(field) for field in _INTS},
            is_demo=data_given is None,
        )

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


def _option(variable: str) -> str:
    return "--" + variable.lower().replace("_", "-")


def add_env_arguments(parser: argparse.ArgumentParser, fields: Optional[list[str]] = None) -> None:
    """Add ``--data-dir``, ``--clip-vit``, ... (all, or the fields named), named after their
    variables, defaulting to None so that ``Env.from_env(vars(args))`` falls back to them."""
    group = parser.add_argument_group("configuration (overrides the environment variable)")
    options = {
        **{field: (var, str, text) for field, (var, text) in _PATHS.items()},
        **{name: (w.variable, str, w.help + " weights") for name, w in WEIGHT_FILES.items()},
        **{field: (var, int, text) for field, (var, _, _, text) in _INTS.items()},
    }
    for name, (var, typ, text) in options.items():
        if fields is None or name in fields:
            group.add_argument(
                _option(var), dest=name, type=typ, default=None, help=f"{text} [${var}]"
            )
