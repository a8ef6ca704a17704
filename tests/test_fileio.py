"""Atomic writes (pipeline/fileio.py): the new file replaces the old whole, with the
permissions a plain open() would give it."""

from __future__ import annotations

import os
import stat

import pytest

from models.fileio import write_atomic, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    # mkstemp creates 0600 files: trained heads and result.txt were unreadable by the group
    # whatever the user's umask.
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    want = 0o666 & ~umask
    assert _mode(tmp_path / "plain.txt") == want
    write_text_atomic(tmp_path / "a.txt", "hello\n")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    write_atomic(tmp_path / "sub" / "c.bin", lambda f: f.write(b"\0\1"))
    write_text_atomic(tmp_path / "a.txt", "again\n")  # replacing an existing file
    for name in ("a.txt", "b.json", "sub/c.bin"):
        assert _mode(tmp_path / name) == want, name
    assert (tmp_path / "a.txt").read_text() == "again\n"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "plain.txt", "sub"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "old\n")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_atomic(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.txt"]
