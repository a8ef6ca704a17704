"""Jittor 1.3.11 started by several processes at once: its config.json written atomically.

    python scripts/jittor_concurrent.py [SITE_PACKAGES_DIR]   # default: the installed jittor's
    python scripts/jittor_concurrent.py --check [DIR]         # exit 1 when the patch is missing

Every ``import jittor`` runs ``jittor_utils.home()``, which rewrites ``~/.cache/jittor/config.json``
in place, unlocked, when it names another JITTOR_HOME: a process reading it meanwhile dies with a
JSONDecodeError (measured, and why kernels need no patch: docs/RELIABILITY.md). The patch writes
a temporary file and renames it over config.json, and reads an unreadable one as empty (as a
missing one); nothing compiled depends on the file, so no kernel is rebuilt. Conventions as in
scripts/jittor_cuda13.py: exact texts, a marker, idempotent, other sources refused (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jittor_cuda13 import jittor_dir, patched_text, write_atomic  # noqa: E402

MARK = "fewshot-concurrent"
FILE = "jittor_utils/__init__.py"

_READ_OLD = """    if os.path.exists(src_path_file):
        with open(src_path_file,"r") as f:
            data = json.load(f)
"""
_READ_NEW = f"""    if os.path.exists(src_path_file):
        # {MARK}: a file another process is rewriting reads as empty, as a missing one.
        try:
            with open(src_path_file,"r") as f:
                data = json.load(f)
        except ValueError:
            data = {{}}
        if not isinstance(data, dict):
            data = {{}}
"""
_WRITE_OLD = """    if default_path != _home_path:
        with open(src_path_file,"w") as f:
            data['JITTOR_HOME'] = _home_path
            json.dump(data,f)
"""
_WRITE_NEW = f"""    if default_path != _home_path:
        # {MARK}: written beside and renamed over, so no process reads it half-written.
        data['JITTOR_HOME'] = _home_path
        tmp_file = f"{{src_path_file}}.{{os.getpid()}}.tmp"
        with open(tmp_file,"w") as f:
            json.dump(data,f)
        os.replace(tmp_file, src_path_file)
"""
EDITS = [(_READ_OLD, _READ_NEW), (_WRITE_OLD, _WRITE_NEW)]


def site_dir() -> Path:
    """The folder holding the installed jittor and jittor_utils packages (not imported)."""
    return jittor_dir().parent


def is_patched(site: Path) -> bool:
    path = site / FILE
    return path.is_file() and MARK in path.read_text()


def apply(site: Path) -> list[str]:
    """Patch ``site/jittor_utils/__init__.py``; returns the files changed (none when done)."""
    path = site / FILE
    if MARK in path.read_text():
        return []
    edits = [(old, new, 1) for old, new in EDITS]
    write_atomic(path, patched_text(path, edits, MARK, "jittor_concurrent.py"))
    return [FILE]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", nargs="?", type=Path, help="folder holding jittor_utils/")
    ap.add_argument("--check", action="store_true", help="only report whether it is patched")
    args = ap.parse_args(argv)
    site = args.site or site_dir()
    if args.check:
        done = is_patched(site)
        print(f"{site / FILE}: {'patched' if done else 'not patched'} for concurrent starts")
        return 0 if done else 1
    try:
        changed = apply(site)
    except ValueError as e:
        print(f"jittor_concurrent: {e}", file=sys.stderr)
        return 2
    print(f"{site / FILE}: " + ("patched" if changed else "already patched"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
