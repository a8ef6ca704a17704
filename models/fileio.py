"""Atomic file writes, for every file the project writes: a temporary in the same folder, flushed,
then renamed over the target, so a crash or Ctrl-C leaves the old file or the new, never half."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def write_atomic(path: PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(binary_file)`` on a temporary file, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_temp(folder: PathLike, prefix: str) -> tuple[int, str]:
    """(fd, path) of a new ``<prefix><random>.tmp`` in ``folder``, open for writing, with mode
    0666 minus the umask like a plain open() (``tempfile.mkstemp`` makes it 0600)."""
    for _ in range(100):
        tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: cannot create a temporary file {prefix}*.tmp")


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 with ``\\n`` line ends."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 1, sorted keys)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
