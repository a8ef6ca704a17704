"""Trained heads on disk: arrays in safetensors, the rest as JSON in its header, with the class
list's fingerprint and the backbone weights they were trained with (test.py refuses stale heads)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from models import weights

HEAD_FAMILY = "fewshot-head"


class HeadError(weights.WeightsError):
    """A trained head is missing or does not fit the current configuration."""


def classes_fingerprint(names) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def head_path(heads_dir: str | os.PathLike, method: str, backbone: str) -> Path:
    return Path(heads_dir) / f"{method}_{backbone}.safetensors"


def save_head(path: Path, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    weights.save(path, arrays, family=HEAD_FAMILY, config=json.loads(json.dumps(info, default=_j)))


def load_head(path: Path, expect: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and info of a head; every (key, value) of ``expect`` must match the saved info."""
    if not Path(path).is_file():
        raise HeadError(f"trained head not found: {path} (run train.sh first)")
    arrays, meta = weights.load(path, expect_family=HEAD_FAMILY)
    info = meta["config"]
    for k, v in expect.items():
        if info.get(k) != v:
            raise HeadError(
                f"{path}: trained with {k}={info.get(k)!r}, but the current run has {v!r}; "
                "re-run train.sh"
            )
    return arrays, info


def read_json_artefact(path: str | os.PathLike, remedy: str = "re-run bash train.sh") -> dict:
    """A JSON object that train.py or process.py wrote; a missing, unreadable or corrupted file is
    a one-line HeadError naming it and ``remedy``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"{path}: not found; {remedy}") from None
    except UnicodeDecodeError as e:
        raise HeadError(f"{path}: corrupted (not UTF-8 text: {e.reason}); {remedy}") from None
    except json.JSONDecodeError as e:
        raise HeadError(f"{path}: corrupted (not valid JSON: {e}); {remedy}") from None
    except OSError as e:
        raise HeadError(f"{path}: unreadable ({e.strerror}); {remedy}") from None
    if not isinstance(data, dict):
        raise HeadError(f"{path}: corrupted (not a JSON object); {remedy}")
    return data


def _j(x):  # JSON for numpy scalars and arrays
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def save_models(
    heads_dir: Path, models: dict[str, dict[str, Any]], info: dict[str, dict[str, Any]]
) -> None:
    """Save a fitted seen-class head (pipeline.scores.fit_head), ``info[backbone]`` with each."""
    for method, by_backbone in models.items():
        for b, model in by_backbone.items():
            path = head_path(heads_dir, method, b)
            save_head(path, model.state_dict(), {**model.info(), **info[b]})


def load_models(
    heads_dir: Path, methods: tuple[str, ...], expect: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(method -> backbone -> model, their infos) of ``methods`` for every backbone of
    ``expect`` (backbone -> what its models must have been trained with)."""
    from fewshot.amu import AMUTuning
    from fewshot.lpp import LPPlusPlus
    from fewshot.tip_adapter import TipAdapterF

    models: dict[str, dict[str, Any]] = {}
    infos = []
    for method in methods:
        cls = {"lpp": LPPlusPlus, "tip": TipAdapterF, "amu": AMUTuning}[method]
        config_type = type(cls().config)
        names = {f.name for f in fields(config_type)}
        for b, wanted in expect.items():
            path = head_path(heads_dir, method, b)
            arrays, info = load_head(path, wanted)
            try:
                config = config_type(**{k: v for k, v in info["config"].items() if k in names})
                models.setdefault(method, {})[b] = cls.from_state_dict(arrays, config)
                infos.append({"seen_ids": list(info["seen_ids"]), **info})
            except (KeyError, TypeError, ValueError) as e:
                raise HeadError(
                    f"{path}: corrupted ({type(e).__name__}: {e}); re-run bash train.sh"
                ) from None
    return models, infos
