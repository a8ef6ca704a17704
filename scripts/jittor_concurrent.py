"""Jittor 1.3.11 started by several processes at once: its config.json written atomically.

    python scripts/jittor_concurrent.py [SITE_PACKAGES_DIR]   # default: the installed jittor's
    python scripts/jittor_concurrent.py --check [DIR]         # exit 1 when the patch is missing

Why (a process reading config.json while another rewrites it dies with a JSONDecodeError) and
what the patch does: docs/RELIABILITY.md. Machinery and conventions: scripts/jittor_cuda13.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jittor_cuda13  # noqa: E402

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
_PATCH = ([(FILE, [(old, new, 1) for old, new in EDITS])], [], MARK)


def site_dir() -> Path:
    """The folder holding the installed jittor and jittor_utils packages (not imported)."""
    return jittor_cuda13.jittor_dir().parent


def is_patched(site: Path) -> bool:
    return jittor_cuda13.is_patched(site, *_PATCH)


def apply(site: Path) -> list[str]:
    """Patch ``site/jittor_utils/__init__.py``; returns the files changed (none when done)."""
    return jittor_cuda13.apply(site, *_PATCH, "jittor_concurrent.py")


def main(argv: list[str] | None = None) -> int:
    return jittor_cuda13.main(argv, site_dir, apply, is_patched, "concurrent starts")


if __name__ == "__main__":
    sys.exit(main())
