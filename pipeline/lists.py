"""The challenge's text files: the class list, labelled image lists, the test folder (formats:
docs/DATA.md, "File formats"). Every problem raises ListError naming the file and the line."""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from models.fileio import write_text_atomic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

PathLike = Union[str, os.PathLike]


class ListError(ValueError):
    """A list or class file is malformed; the message names the file and line."""


def preview(items: Sequence, k: int = 5) -> str:
    """The first ``k`` items, comma-separated, and how many in all when there are more."""
    more = f", ... ({len(items)} in all)" if len(items) > k else ""
    return ", ".join(map(str, items[:k])) + more


def read_lines(path: PathLike) -> list[str]:
    """The lines of a UTF-8 text file (BOM and any line endings accepted); ListError naming the
    file, and the line of the first bad byte, when it cannot be read."""
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            return f.read().splitlines()
    except FileNotFoundError as e:
        raise ListError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise ListError(f"{path}: is a directory, expected a text file") from e
    except UnicodeDecodeError as e:
        with open(path, "rb") as f:
            line = f.read()[: e.start].count(b"\n") + 1
        raise ListError(f"{path}:{line}: not valid UTF-8 text ({e.reason})") from e


def _split_line(line: str) -> Optional[tuple[str, str]]:
    """``'<text> <last token>'`` (or ``'<text>,<integer>'``) -> (text, token); None for a blank
    line. Only the last whitespace separates, so file names may contain spaces."""
    s = line.strip()
    if not s:
        return None
    parts = s.rsplit(None, 1)
    if len(parts) == 2 and _parse_int(parts[1]) is not None:
        return parts[0].removesuffix(",").rstrip() or parts[0], parts[1]
    head, comma, tail = s.rpartition(",")
    if comma and head.strip() and _parse_int(tail.strip()) is not None:
        return head.strip(), tail.strip()
    return (parts[0], parts[1]) if len(parts) == 2 else (s, "")


def _parse_int(token: str) -> Optional[int]:
    # Plain decimal only: "1e3", "0x10", "½" or "٣" (other scripts' digits) are errors.
    return int(token) if re.fullmatch(r"[+-]?[0-9]+", token) else None


def split_class_name(raw: str) -> tuple[str, str]:
    """``'Caltech-101_Faces_easy'`` -> ``('Caltech-101', 'Faces easy')``; ``''`` is the domain
    of a name without an underscore."""
    if "_" in raw:
        domain, name = raw.split("_", 1)
        if domain and name:
            return domain, name.replace("_", " ").strip()
    return "", raw.replace("_", " ").strip()


@dataclass(frozen=True)
class ClassList:
    """The classes of a board, indexed by id (0..C-1)."""

    names: tuple[str, ...]  # raw names as in the file, e.g. "Thu-dog_Shiba_Dog"
    domains: tuple[str, ...]  # e.g. "Thu-dog"
    clean_names: tuple[str, ...]  # e.g. "Shiba Dog" (for text prompts)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.names)

    @property
    def domain_names(self) -> tuple[str, ...]:
        """Distinct domains in order of first appearance (by id)."""
        return tuple(dict.fromkeys(self.domains))

    def ids_in_domain(self, domain: str) -> np.ndarray:
        """Sorted int64 ids of ``domain``'s classes; ListError for an unknown domain."""
        if domain not in self.domain_names:
            raise ListError(
                f"{self.source}: no domain {domain!r}; domains: {', '.join(self.domain_names)}"
            )
        return np.flatnonzero(np.asarray(self.domains) == domain).astype(np.int64)

    def check_label(self, label: int, where: str) -> None:
        if not 0 <= label < len(self.names):
            raise ListError(
                f"{where}: label {label} is not a class id of {self.source} "
                f"(0..{len(self.names) - 1})"
            )


def parse_class_list(lines: Iterable[str], source: str = "<memory>") -> ClassList:
    """Parse class-list lines (see ``read_class_list``)."""
    by_id: dict[int, tuple[str, int]] = {}
    by_name: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        parts = _split_line(line)
        if parts is None:
            continue
        name, tok = parts
        where = f"{source}:{lineno}"
        cid = _parse_int(tok)
        if cid is None:
            raise ListError(f"{where}: expected '<Domain>_<name> <id>', got {line.strip()!r}")
        if cid < 0:
            raise ListError(f"{where}: negative class id {cid}")
        if cid in by_id:
            raise ListError(f"{where}: class id {cid} already used on line {by_id[cid][1]}")
        if name in by_name:
            raise ListError(f"{where}: class name {name!r} already used on line {by_name[name]}")
        by_id[cid] = (name, lineno)
        by_name[name] = lineno
    if not by_id:
        raise ListError(f"{source}: no classes")
    n = len(by_id)
    missing = sorted(set(range(n)) - set(by_id))
    if missing:
        extra = sorted(set(by_id) - set(range(n)))
        raise ListError(
            f"{source}: class ids must be 0..{n - 1}; missing {preview(missing, 8)}, "
            f"out of range {preview(extra, 8) or 'none'}"
        )
    names = tuple(by_id[i][0] for i in range(n))
    domains, clean_names = zip(*map(split_class_name, names))
    return ClassList(names, domains, clean_names, source)


def read_class_list(path: PathLike) -> ClassList:
    """Read a class list: ``<Domain>_<name> <id>`` lines, ids exactly 0..C-1, names unique."""
    return parse_class_list(read_lines(path), os.fspath(path))


@dataclass(frozen=True)
class LabeledList:
    """Image paths (as written in the list, relative to its root) with integer labels."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int64 [n]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths for {len(labels)} labels")
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.paths)

    def resolve(self, root: PathLike) -> list[str]:
        """Paths joined to ``root`` (absolute ones stay as they are)."""
        return [os.path.join(root, p) for p in self.paths]

    def counts(self, num_classes: int) -> np.ndarray:
        """Images per class id, int64 [num_classes]."""
        return np.bincount(self.labels, minlength=num_classes)[:num_classes]

    def subset(
        self, index: Sequence[int] | np.ndarray, source: Optional[str] = None
    ) -> LabeledList:
        index = np.asarray(index, dtype=np.int64)
        return LabeledList(
            tuple(self.paths[i] for i in index), self.labels[index], source or self.source
        )


def _outside(path: str, root: Optional[PathLike]) -> Optional[str]:
    """Why the list entry ``path`` is not inside the data folder ``root`` (None: it is). An
    absolute path must lie in ``root``, spelled as given or through links (any, without a root)."""
    if not os.path.isabs(path):
        norm = posixpath.normpath(path)
        if norm == ".." or norm.startswith("../"):
            return "is outside the data folder (it climbs out with '..')"
        return None
    if root is None:
        return None
    for a, b in (
        (os.path.normpath(path), os.path.abspath(root)),
        (os.path.realpath(path), os.path.realpath(root)),
    ):
        if os.path.commonpath([a, b]) == b:
            return None
    return f"is outside the data folder {root}"


def parse_labeled_list(
    lines: Iterable[str], source: str, classes: ClassList, root: Optional[PathLike] = None
) -> LabeledList:
    """Parse ``<path> <label>`` lines (see ``read_labeled_list``)."""
    seen: dict[str, tuple[int, int]] = {}  # path -> (label, line), in list order
    duplicates: list[int] = []
    for lineno, line in enumerate(lines, 1):
        parts = _split_line(line)
        if parts is None:
            continue
        where = f"{source}:{lineno}"
        path, tok = parts
        label = _parse_int(tok)
        if label is None:
            raise ListError(f"{where}: expected '<image path> <label>', got {line.strip()!r}")
        classes.check_label(label, where)
        path = path.replace("\\", "/")  # lists written on Windows
        outside = _outside(path, root)
        if outside:
            raise ListError(f"{where}: {path} {outside}; list images by their path inside DATA_DIR")
        if path in seen:
            first_label, first_line = seen[path]
            if first_label != label:
                raise ListError(
                    f"{where}: {path} is labelled {label} here but {first_label} "
                    f"on line {first_line}"
                )
            duplicates.append(lineno)
            continue
        seen[path] = (label, lineno)
    if duplicates:
        what = f"{len(duplicates)} duplicate line(s) ignored (same image and label)"
        log.warning("%s: %s, first on line %d", source, what, duplicates[0])
    labels = np.asarray([label for label, _ in seen.values()], np.int64)
    return LabeledList(tuple(seen), labels, source)


def read_labeled_list(
    path: PathLike, classes: ClassList, root: Optional[PathLike] = None
) -> LabeledList:
    """Read a ``<image path> <label>`` list such as train.txt: labels must be ids of ``classes``,
    paths inside the data folder ``root`` (without a root: no '..')."""
    return parse_labeled_list(read_lines(path), os.fspath(path), classes, root)


def write_labeled_list(path: PathLike, items: LabeledList) -> None:
    """Write ``<path> <label>`` lines atomically."""
    write_text_atomic(path, "".join(f"{p} {int(y)}\n" for p, y in zip(items.paths, items.labels)))


def seen_class_ids(train: LabeledList, classes: ClassList) -> np.ndarray:
    """Ids of classes with at least one image in ``train`` (sorted int64)."""
    return np.flatnonzero(train.counts(len(classes)) > 0).astype(np.int64)


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: image_2 < image_10."""
    parts = tuple(
        (0, int(tok)) if "0" <= tok[0] <= "9" else (1, tok.lower())
        for tok in re.split(r"([0-9]+)", name)
        if tok
    )
    # Ties ("a01" vs "a1", "A" vs "a") are broken by the raw name, so the order is total.
    return (parts, name)


def result_name_problem(name: str) -> Optional[str]:
    """Why result.txt (UTF-8, fields split at whitespace) cannot hold ``name`` as the first field
    of a line; None when it can. Undecodable file names come from os.scandir as surrogates."""
    if not name:
        return "is empty"
    if any(c.isspace() for c in name):
        return "contains whitespace"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def list_test_images(test_dir: PathLike) -> list[str]:
    """File names of the images in ``test_dir`` in natural order; other entries are skipped with
    one warning. ListError for a missing or image-less folder, or names result.txt cannot hold."""
    d = Path(test_dir)
    if not d.is_dir():
        raise ListError(f"{d}: test folder not found (set TEST_DIR or --test-dir)")
    names, skipped = [], []
    for entry in os.scandir(d):
        try:  # a link loop (or an entry that cannot be examined) is no file, like a dangling link
            is_file = entry.is_file()
        except OSError:
            is_file = False
        ext = os.path.splitext(entry.name)[1].lower()
        if is_file and ext in IMAGE_EXTENSIONS and not entry.name.startswith("."):
            names.append(entry.name)
        else:
            skipped.append(entry.name)
    if skipped:
        what = "entry that is" if len(skipped) == 1 else "entries that are"
        shown = preview(sorted(skipped, key=natural_key), 10)
        log.warning("%s: ignored %d %s not image files: %s", d, len(skipped), what, shown)
    if not names:
        raise ListError(
            f"{d}: no images in the test folder (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    names.sort(key=natural_key)
    # Refused now, before any feature is computed; repr shows odd characters on one line.
    bad = [n for n in names if result_name_problem(n)]
    if bad:
        raise ListError(
            f"{d}: {len(bad)} test image name(s) with whitespace or not valid UTF-8, which "
            f"result.txt cannot hold: {preview([repr(n) for n in bad])}; rename them "
            "(e.g. image_<n>.jpg)"
        )
    return names
