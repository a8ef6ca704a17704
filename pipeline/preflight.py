"""Checks before any work: bad input is refused in one line before the first image is encoded.

``checked(script, env, settings)`` wraps the work of train.py, ``test.py`` and ``test.py --eval``
(from :func:`pipeline.cli.run_main`); :func:`check_process` runs before process.py writes its
lists. Each problem raises :class:`PreflightError` (a ConfigError: reported in one line, exit
status 2) naming the file, setting or variable and what to do. What is checked, by script:

- the class list: at least 5 classes (a submission line holds 5 distinct class ids); for
  training, at least 5 classes with training images (stage 2 ranks the seen classes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Optional

from pipeline.env import ConfigError, Env
from pipeline.lists import ClassList, read_class_list, read_labeled_list, seen_class_ids
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SCRIPTS = ("process", "train", "test", "eval")
TOP_K = 5  # class ids per line of result.txt


class PreflightError(ConfigError):
    """The run cannot start as configured; the message is one line saying what to do."""


@contextlib.contextmanager
def checked(script: str, env: Env, settings: Settings) -> Iterator[None]:
    """Check everything ``script`` ("train", "test" or "eval") needs, then run the block."""
    if script not in SCRIPTS[1:]:
        raise ValueError(f"unknown script {script!r}")
    classes = _class_list(env)
    if script == "train":
        _seen_classes(env, classes)
    yield


def check_process(env: Env) -> None:
    """What process.py needs before it writes the lists."""
    if not env.is_demo:  # the demo's class list is generated next (it has 26 classes)
        _class_list(env)


# ----------------------------------------------------------------------------- the class list


def _class_list(env: Env) -> ClassList:
    classes = read_class_list(env.classes)
    if classes.num_classes < TOP_K:
        raise PreflightError(
            f"{env.classes}: {classes.num_classes} classes, but every line of result.txt names "
            f"{TOP_K} distinct class ids: use a class list of at least {TOP_K} classes (CLASSES)"
        )
    return classes


def _seen_classes(env: Env, classes: ClassList) -> Optional[int]:
    """Refuse a training list with fewer than TOP_K classes (when the list exists: its absence
    is reported by the training itself, with what to run)."""
    path = env.train_shots_list
    if not path.is_file():
        return None
    seen = seen_class_ids(read_labeled_list(path, classes, env.data_dir), classes).size
    if seen < TOP_K:
        raise PreflightError(
            f"{path}: only {seen} classes have training images, but stage 2 answers from the "
            f"classes with training images and result.txt needs {TOP_K} per image: add "
            f"images of at least {TOP_K} classes to TRAIN_LIST, then re-run python process.py"
        )
    return seen
