"""Jittor started by several processes at once (scripts/jittor_concurrent.py).

Every ``import jittor`` reads ``~/.cache/jittor/config.json`` and, when it names another
JITTOR_HOME, rewrites it in place, unlocked: a process starting at that moment read an empty
file and died with a JSONDecodeError. The tests run copies of ``jittor_utils`` (patched or not)
with their own HOME and JITTOR_HOME, so neither the user's config.json nor the shared kernel
cache is touched; importing ``jittor_utils`` compiles nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import jittor_concurrent  # noqa: E402


def site_copy(folder: Path, patched: bool) -> Path:
    """A copy of the installed jittor_utils (and the version line it reads from jittor)."""
    src = jittor_concurrent.site_dir()
    shutil.copytree(
        src / "jittor_utils",
        folder / "jittor_utils",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # The installed copy may be patched already (scripts/setup.sh): start from Jittor's text.
    init = folder / jittor_concurrent.FILE
    text = init.read_text()
    if jittor_concurrent.MARK in text:
        text = text.split(f"# {jittor_concurrent.MARK}: patched by")[0]
        for old, new in jittor_concurrent.EDITS:
            text = text.replace(new, old)
        init.write_text(text)
    (folder / "jittor").mkdir()
    (folder / "jittor" / "__init__.py").write_text("__version__ = '1.3.11.0'\n")
    if patched:
        assert jittor_concurrent.apply(folder) == [jittor_concurrent.FILE]
    return folder


def start_import(site: Path, home: Path, jittor_home: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=str(site),
        HOME=str(home),
        JITTOR_HOME=str(jittor_home),
        log_silent="1",
    )
    return subprocess.Popen(
        [sys.executable, "-c", "import jittor_utils"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("patched", [False, True])
def test_half_written_config_json(tmp_path, patched):
    # What a process sees between another one's truncation of config.json and its write.
    site = site_copy(tmp_path / "site", patched)
    config = tmp_path / "home" / ".cache" / "jittor" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text("")
    p = start_import(site, tmp_path / "home", tmp_path / "jh")
    _, err = p.communicate(timeout=120)
    if patched:
        assert p.returncode == 0, err[-2000:]
        assert json.loads(config.read_text()) == {"JITTOR_HOME": str(tmp_path / "jh")}
        assert [f.name for f in config.parent.iterdir()] == ["config.json"]  # no temporary
    else:  # Jittor 1.3.11 as released: the import dies
        assert p.returncode != 0 and "JSONDecodeError" in err, err[-2000:]


def test_simultaneous_starts_on_two_homes(tmp_path):
    # Each start rewrites config.json (it names the other home): 10 rounds of 4 at once. Jittor
    # as released failed 14 of 120 such imports here.
    site = site_copy(tmp_path / "site", patched=True)
    failures = []
    for _ in range(10):
        procs = [start_import(site, tmp_path / "home", tmp_path / f"jh{i % 2}") for i in range(4)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            if p.returncode:
                failures.append(err.strip().splitlines()[-1])
    assert not failures, failures


def test_patch_is_idempotent_and_refuses_other_sources(tmp_path):
    site = site_copy(tmp_path / "site", patched=True)
    text = (site / jittor_concurrent.FILE).read_text()
    assert jittor_concurrent.apply(site) == [] and jittor_concurrent.is_patched(site)
    assert (site / jittor_concurrent.FILE).read_text() == text
    other = site_copy(tmp_path / "other", patched=False)
    init = other / jittor_concurrent.FILE
    init.write_text(init.read_text().replace("json.dump(data,f)", "json.dump(data, f)"))
    before = init.read_text()
    with pytest.raises(ValueError, match="not Jittor 1.3.11's sources"):
        jittor_concurrent.apply(other)
    assert init.read_text() == before
    assert jittor_concurrent.main(["--check", str(other)]) == 1


def test_installed_jittor_is_patched():
    # scripts/setup.sh applies the patch to the venv's Jittor before warming it up.
    assert jittor_concurrent.is_patched(jittor_concurrent.site_dir()), (
        "run bash scripts/setup.sh (or python scripts/jittor_concurrent.py)"
    )


# Jittor's kernel cache inside one process: a kernel whose file was cut short (a killed compile,
# a full disk) keeps its .key, so Jittor would load the short file in every later run.


def test_truncated_kernels_are_dropped_with_their_keys(tmp_path):
    import _ctypes  # an extension module: a real shared object to cut short

    from models.runtime import drop_truncated_kernels

    whole = Path(_ctypes.__file__).read_bytes()
    kernels = {"whole": whole, "half": whole[: len(whole) // 2], "stub": whole[:10], "empty": b""}
    for name, data in kernels.items():
        (tmp_path / f"{name}_op.so").write_bytes(data)
        (tmp_path / f"{name}_op.so.key").write_text("cmd\n")
    (tmp_path / "whole_op.cc").write_text("// source")
    dropped = drop_truncated_kernels(str(tmp_path))
    assert sorted(Path(p).name for p in dropped) == ["empty_op.so", "half_op.so", "stub_op.so"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "whole_op.cc",
        "whole_op.so",
        "whole_op.so.key",
    ]
    assert drop_truncated_kernels(str(tmp_path / "missing")) == []


def test_cpu_jittor_compiles_kernels_in_the_calling_thread():
    # Jittor's parallel op compiler is where a cold run died loading a truncated kernel.
    from models.runtime import jittor

    jt = jittor()
    if jt.flags.use_cuda:
        pytest.skip("CUDA builds keep the parallel compiler (nvcc is slow)")
    assert jt.flags.use_parallel_op_compiler == 0
