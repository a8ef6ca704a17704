"""Checks before any work: bad input is refused in one line (PreflightError, exit status 2)
before the first image is encoded. ``checked`` wraps train.py and test.py (pipeline.cli.run_main),
``check_process`` process.py. What is checked, case by case: docs/RELIABILITY.md."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models import weights
from models.fileio import create_temp, write_json_atomic
from models.weights import DOWNLOADS
from pipeline.env import WEIGHT_FILES, ConfigError, Env
from pipeline.heads import HeadError, classes_fingerprint, head_path, read_json_artefact
from pipeline.lists import ClassList, read_class_list, read_labeled_list, seen_class_ids
from pipeline.settings import Settings
from pipeline.submission import TOPK

log = logging.getLogger(__name__)

# Present from train.py's first write to after train.json (docs/RELIABILITY.md); a marker needs
# no clock (comparing file times breaks on copies).
TRAINING_MARKER = "training.incomplete"
LOCK_FILE = ".lock"


class PreflightError(ConfigError):
    """The run cannot start as configured; the message is one line saying what to do."""


@contextlib.contextmanager
def checked(script: str, env: Env, settings: Settings) -> Iterator[None]:
    """Check everything ``script`` ("train", "test" or "eval") needs, then run the block."""
    _output_folder(env, script)
    lock = _lock(env, script)
    try:
        classes = _class_list(env)
        _weight_files(env, _weights_needed(script, env, settings, classes))
        if script in ("train", "eval"):
            _lists_match(env)
        if script != "train":
            _training_finished(env)
            _trained_artefacts(env, settings, classes)
            yield
            return
        _seen_classes(env, classes)
        marker = env.out_dir / TRAINING_MARKER
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json_atomic(marker, {"pid": os.getpid(), "started": started})
        yield  # an exception (or a kill) leaves the marker
        marker.unlink()
    finally:
        os.close(lock)  # releases the lock


def check_process(env: Env) -> None:
    """What process.py needs before it writes the lists."""
    _output_folder(env, "process")
    os.close(_lock(env, "process"))  # only: no train.py or test.py is using OUT_DIR
    if not env.is_demo:  # the demo's class list is generated next (it has 26 classes)
        _class_list(env)


# What each script writes under OUT_DIR: sub-folders, and files (a folder in a file's place would
# fail only when the file is written, after all the work).
WRITES = {
    "process": (("lists",), ("lists/train_4shot.txt", "lists/val.txt", "lists/split.json")),
    "train": (("heads", "expert", "cache"), ("train.json",)),
    "test": (("cache",), ("result.txt", "warnings.txt", "predictions.tsv", "test.json")),
    "eval": (("cache", "report"), ("report/report.md", "report/metrics.json")),
}


def _output_folder(env: Env, script: str) -> None:
    folders, files = WRITES[script]
    _writable_folder(env.out_dir, f"OUT_DIR={env.out_dir}")
    for name in folders:
        path = env.out_dir / name
        if path.exists() or path.is_symlink():
            _writable_folder(path, str(path))
    for name in files:
        path = env.out_dir / name
        if path.is_dir():
            raise PreflightError(
                f"{path}: is a folder, but {script} writes a file there; move it away"
            )


def _writable_folder(path: Path, what: str) -> None:
    """Make ``path`` a folder this process can create files in (``what`` names it in messages)."""
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{what}: is a file, not a folder; set OUT_DIR to a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp(path, ".preflight.")  # a real write: root passes os.access anywhere
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        problem = "not writable" if path.is_dir() else "cannot create the folder"
        raise PreflightError(
            f"{what}: {problem} ({e.strerror}); set OUT_DIR to a writable folder"
        ) from None


def _lock(env: Env, script: str) -> int:
    """An open descriptor holding the exclusive lock on OUT_DIR (close it to release): a POSIX
    record lock (lockf), which forked children (Jittor's compile pool) do not inherit, unlike
    flock, so none keeps a killed run's lock."""
    path = env.out_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise PreflightError(f"{path}: cannot open the lock file ({e.strerror})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "pid unknown"
        os.close(fd)
        raise PreflightError(
            f"OUT_DIR {env.out_dir} is in use by another run ({holder}); wait for it to end or "
            "set another OUT_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{script}, pid {os.getpid()}\n".encode(), 0)
    return fd


def _class_list(env: Env) -> ClassList:
    classes = read_class_list(env.classes)
    if len(classes) < TOPK:
        raise PreflightError(
            f"{env.classes}: {len(classes)} classes, but every line of result.txt names "
            f"{TOPK} distinct class ids: use a class list of at least {TOPK} classes (CLASSES)"
        )
    return classes


def _seen_classes(env: Env, classes: ClassList) -> None:
    path = env.train_shots_list
    if not path.is_file():
        return  # reported by the training itself, with what to run
    seen = seen_class_ids(read_labeled_list(path, classes, env.data_dir), classes).size
    if seen < TOPK:
        raise PreflightError(
            f"{path}: only {seen} classes have training images, but stage 2 answers from the "
            f"classes with training images and result.txt needs {TOPK} per image: add "
            f"images of at least {TOPK} classes to TRAIN_LIST, then re-run python process.py"
        )


def _weights_needed(script: str, env: Env, settings: Settings, classes: ClassList) -> set[str]:
    """The WEIGHT_FILES the run will load: its CLIP backbones, and ConvNeXt-V2 to train an expert
    or AMU-Tuning, for a trained expert at test time and for AMU in the evaluation."""
    need = set(settings.backbones)
    if script == "train":
        convnext = settings.amu or settings.expert_domain in classes.domain_names
    else:
        from pipeline.expert import INFO_FILE

        amu = head_path(env.out_dir / "heads", "amu", settings.backbones[0])
        convnext = bool(settings.expert_domain) and (env.out_dir / "expert" / INFO_FILE).is_file()
        convnext = convnext or (script == "eval" and settings.amu and amu.is_file())
    if convnext:
        need.add("convnext")
    return need


def _weight_files(env: Env, needed: set[str]) -> None:
    # Every file given is checked, needed or not, so swapped variables are caught in any run.
    for name, w in WEIGHT_FILES.items():
        path = env.weights[name]
        if not path.is_file():
            if name in needed:
                raise PreflightError(
                    f"{w.variable}={path}: weight file not found; download "
                    f"{DOWNLOADS[w.family]} and convert it: "
                    f"python convert.py DOWNLOADED_FILE {path}"
                )
            continue
        try:
            family = weights.read_info(path)["family"]
        except weights.WeightsError as e:
            raise PreflightError(f"{w.variable}={' '.join(str(e).split())}") from None
        if family != w.family:
            raise PreflightError(
                f"{w.variable}={path}: holds {family!r} weights, but {w.variable} names the "
                f"{w.help} weights ({w.family!r}); check CLIP_VIT, CLIP_RN and CONVNEXT"
            )


# split.json key (an Env field) -> the variable that sets it; paths are recorded resolved
_SPLIT_PATHS = {"data_dir": "DATA_DIR", "classes": "CLASSES", "train_list": "TRAIN_LIST"}
_SPLIT_KEYS = {**_SPLIT_PATHS, "shots": "SHOTS", "seed": "SEED", "val_per_class": "VAL_PER_CLASS"}
_SPLIT_FILES = ("classes", "train_list")  # and the sha256 of their contents, as <key>_sha256


def split_record(env: Env) -> dict[str, Any]:
    """What process.py's lists are made from (``lists/split.json``), compared at train time."""
    record: dict[str, Any] = {k: _resolved(k, getattr(env, k)) for k in _SPLIT_KEYS}
    for key in _SPLIT_FILES:
        record[f"{key}_sha256"] = hashlib.sha256(getattr(env, key).read_bytes()).hexdigest()
    return record


def _resolved(key: str, value: Any) -> Any:
    return os.path.realpath(str(value)) if key in _SPLIT_PATHS else value


def _lists_match(env: Env) -> None:
    path = env.split_info
    if not env.train_shots_list.is_file():
        return  # reported by the run itself: "list not found ... (run process.py first)"
    if not path.is_file():
        log.warning("%s is missing: cannot check what the lists were made from", path)
        return
    recorded = read_json_artefact(path, "re-run python process.py")
    current = split_record(env)
    where = f"the lists in {env.lists_dir}"
    todo = "re-run python process.py (with the options you gave it), then bash train.sh"
    for key, var in _SPLIT_KEYS.items():
        if key in recorded and _resolved(key, recorded[key]) != current[key]:
            now, was = getattr(env, key), recorded[key]
            raise PreflightError(f"{var} is {now} but {where} were made with {var} {was}; {todo}")
    for key in _SPLIT_FILES:
        digest = f"{key}_sha256"
        if digest in recorded and recorded[digest] != current[digest]:
            var, file = _SPLIT_KEYS[key], getattr(env, key)
            raise PreflightError(f"{var} {file} changed since {where} were made from it; {todo}")


def _trained_artefacts(env: Env, settings: Settings, classes: ClassList) -> None:
    """Load (and throw away) what test.py and the evaluation need from heads/ and expert/."""
    from pipeline.expert import INFO_FILE, DomainExpert
    from pipeline.workspace import Workspace

    heads, expert = env.out_dir / "heads", env.out_dir / "expert"
    for folder in (heads, expert):
        for path in sorted(folder.glob("*.json")):
            read_json_artefact(path)
        for path in sorted(folder.glob("*.safetensors")):
            if path.name.startswith("text_"):
                continue  # the text classifiers' cache: rebuilt when unreadable
            try:
                weights.read_info(path)
            except weights.WeightsError as e:
                raise PreflightError(f"{' '.join(str(e).split())}; re-run bash train.sh") from None
    if settings.expert_domain and (expert / INFO_FILE).is_file():
        try:
            DomainExpert.load(expert, env.weights["convnext"])
        except (KeyError, TypeError, ValueError) as e:
            raise PreflightError(
                f"{expert / INFO_FILE}: corrupted ({type(e).__name__}: {e}); re-run bash train.sh"
            ) from None
    # the choices of heads/cascade.json, and the seen-class heads they name
    names = classes_fingerprint(classes.names)
    expect = {
        b: {"classes": names, "weights": weights.fingerprint(env.weights[b])}
        for b in settings.backbones
    }
    Workspace(env, settings, classes, None, {}).load_cascade(expect)


def _training_finished(env: Env) -> None:
    marker = env.out_dir / TRAINING_MARKER
    if not marker.exists():
        return
    try:
        started = f" (started {read_json_artefact(marker).get('started')})"
    except HeadError:
        started = ""
    raise PreflightError(
        f"{marker}: the last training{started} did not finish (killed or failed), so heads/ and "
        "expert/ may mix two trainings; run bash train.sh to the end first"
    )
