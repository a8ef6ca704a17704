"""The submission file ``result.txt`` (format and command line: docs/DATA.md): writing and
validating it, and ``warnings.txt``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from models.fileio import write_text_atomic
from pipeline.lists import (
    ListError,
    PathLike,
    list_test_images,
    preview,
    read_class_list,
    result_name_problem,
)

TOPK = 5  # class ids per line


def write_result(path: PathLike, names: Sequence[str], top5_ids: np.ndarray) -> None:
    """Write ``result.txt`` atomically: ``names[i]`` and the ``top5_ids[i]`` row (integer [n, 5],
    best first). ValueError for anything that would make a malformed file."""
    ids = np.asarray(top5_ids)
    if ids.ndim != 2 or ids.shape != (len(names), TOPK):
        raise ValueError(f"top5_ids has shape {ids.shape}, expected ({len(names)}, {TOPK})")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("top5_ids must hold integer class ids")
    if (ids < 0).any():
        raise ValueError("top5_ids holds negative class ids")
    srt = np.sort(ids, axis=1)
    dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if len(dup):
        raise ValueError(f"repeated class ids in the top-5 of {names[dup[0]]} ({len(dup)} rows)")
    if len(set(names)) != len(names):
        raise ValueError("repeated image names")
    for n in names:
        problem = result_name_problem(n)
        if problem:
            raise ValueError(f"image name {n!r} {problem}")
    lines = [f"{n} {' '.join(map(str, row))}\n" for n, row in zip(names, ids.tolist())]
    write_text_atomic(path, "".join(lines))


def validate_result(path: PathLike, test_names: Sequence[str], num_classes: int) -> list[str]:
    """Every problem of a result file (the list is in docs/DATA.md), as messages naming the
    line; empty when the file is valid."""
    problems: list[str] = []
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        return [f"{path}: cannot read ({e})"]
    except UnicodeDecodeError as e:
        return [f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]
    if "\r" in text:
        problems.append(f"{path}: Windows line endings (\\r\\n); use \\n")
    rank = {n: i for i, n in enumerate(test_names)}
    seen: dict[str, int] = {}  # name -> its first line
    for lineno, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            if lineno <= text.count("\n"):  # a blank line, not the final newline
                problems.append(f"{where}: blank line")
            continue
        parts = line.split(" ")
        if line != line.strip() or "" in parts or "\t" in line:
            problems.append(f"{where}: fields must be separated by single spaces")
            parts = line.split()
        name, ids = parts[0], parts[1:]
        if name in seen:
            problems.append(f"{where}: {name} already on line {seen[name]}")
            continue
        seen[name] = lineno
        if name not in rank:
            problems.append(f"{where}: {name} is not an image of the test folder")
        if len(ids) != TOPK:
            problems.append(f"{where}: {len(ids)} class ids, expected {TOPK}")
        vals = [int(tok) for tok in ids if tok.isascii() and tok.isdigit()]
        for tok in ids:
            if not tok.isascii() or not tok.isdigit():
                problems.append(f"{where}: {tok!r} is not a non-negative integer class id")
            elif int(tok) >= num_classes:
                problems.append(f"{where}: class id {int(tok)} out of range 0..{num_classes - 1}")
        if len(set(vals)) != len(vals):
            problems.append(f"{where}: repeated class ids {' '.join(ids)}")
    missing = [n for n in test_names if n not in seen]
    if missing:
        problems.append(f"{path}: {len(missing)} test image(s) missing: {preview(missing)}")
    ranks = [rank[n] for n in seen if n in rank]
    if ranks != sorted(ranks):
        problems.append(f"{path}: lines are not in the test folder's natural order")
    return problems


def write_warnings(path: PathLike, entries: Sequence[tuple[str, str]]) -> None:
    """Write ``warnings.txt`` atomically: ``<image name>\\t<reason>`` per undecodable test image.
    Without entries the file is removed, so a stale one never outlives the problem."""
    if not entries:
        Path(path).unlink(missing_ok=True)
        return
    head = "# test images that could not be decoded; each still has a prediction in result.txt\n"
    body = "".join(f"{name}\t{' '.join(reason.split())}\n" for name, reason in entries)
    write_text_atomic(path, head + body)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Check a result.txt against the test folder.")
    ap.add_argument("result", help="the result file")
    ap.add_argument("--test-dir", required=True, help="folder of test images")
    ap.add_argument("--classes", required=True, help="class list (gives the number of classes)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        names = list_test_images(args.test_dir)
        classes = read_class_list(args.classes)
    except ListError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = validate_result(args.result, names, len(classes))
    if problems:
        print(*problems, sep="\n")
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.result}: valid ({len(names)} images, {len(classes)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
