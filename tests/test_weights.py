"""Converted weight files: round trip, and clear refusals of missing, foreign or damaged files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import weights
from models.weights import WeightsError

ROOT = Path(__file__).resolve().parent.parent


def test_round_trip_keeps_values_config_and_source(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.normal(size=(3, 4)).astype(np.float16), "b": np.arange(5)}
    path = weights.save(
        tmp_path / "w.safetensors", tensors, family="clip", config={"x": 1}, source={"f": "y"}
    )
    loaded, info = weights.load(path, expect_family="clip")
    assert loaded["a.weight"].dtype == np.float32  # floats are stored as float32
    np.testing.assert_array_equal(loaded["a.weight"], tensors["a.weight"].astype(np.float32))
    np.testing.assert_array_equal(loaded["b"], tensors["b"])
    assert info["config"] == {"x": 1} and info["source"] == {"f": "y"}
    assert weights.read_info(path)["family"] == "clip"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    # mkstemp's 0600 made converted weights unreadable by the group whatever the umask.
    old = os.umask(umask)
    try:
        path = weights.save(tmp_path / "w.safetensors", {"w": np.ones(2)}, family="clip", config={})
        weights.save(path, {"w": np.zeros(2)}, family="clip", config={})  # replacing it
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_missing_file_says_where_to_download_and_how_to_convert(tmp_path):
    missing = tmp_path / "ViT-B-32.safetensors"
    with pytest.raises(WeightsError) as e:
        weights.load(missing, expect_family="clip")
    msg = str(e.value)
    assert str(missing) in msg
    assert "openaipublic.azureedge.net" in msg and "convnextv2" not in msg
    assert f"python convert.py DOWNLOADED_FILE {missing}" in msg


def test_wrong_family_is_refused(tmp_path):
    path = weights.save(
        tmp_path / "c.safetensors", {"w": np.ones(2)}, family="convnextv2", config={}
    )
    with pytest.raises(WeightsError, match="'convnextv2' weights, but a 'clip' model"):
        weights.load(path, expect_family="clip")


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = weights.save(tmp_path / "w.safetensors", {"w": np.ones(1000)}, family="clip", config={})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt|not a readable"):
        weights.load(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError):
        weights.load(junk)
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(plain))
    with pytest.raises(WeightsError, match="convert the original checkpoint"):
        weights.load(plain)


def test_pipeline_reports_missing_weights_in_one_line(tmp_path):
    env = dict(os.environ)
    env.update(
        OUT_DIR=str(tmp_path / "out"),
        DATA_DIR=str(tmp_path),
        CLIP_VIT=str(tmp_path / "nope.safetensors"),
    )
    (tmp_path / "TestSet").mkdir()
    (tmp_path / "classes_b.txt").write_text("".join(f"A_{c} {i}\n" for i, c in enumerate("abcde")))
    r = subprocess.run(
        [sys.executable, "test.py"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "weight file not found" in r.stderr and "convert.py" in r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert [ln for ln in lines if " ERROR " in ln] == lines[-1:]  # one line, the last


def test_fingerprint_tells_files_apart_cheaply(tmp_path):
    import hashlib

    a = tmp_path / "a.bin"
    big = np.random.default_rng(0).bytes(3 << 20)
    a.write_bytes(big)
    fp = weights.fingerprint(a)
    assert fp == weights.fingerprint(tmp_path / "a.bin") and len(fp) == 64
    b = tmp_path / "b.bin"
    b.write_bytes(big[:-1] + bytes([big[-1] ^ 1]))  # the last byte differs
    assert weights.fingerprint(b) != fp
    b.write_bytes(big + b"x")  # the size differs
    assert weights.fingerprint(b) != fp
    b.write_bytes(bytes([big[0] ^ 1]) + big[1:])  # the first byte (the header) differs
    assert weights.fingerprint(b) != fp
    # full: the whole file's sha256 (convert.py's record of a download)
    assert weights.fingerprint(a, full=True) == hashlib.sha256(big).hexdigest()
    with pytest.raises(WeightsError, match="not found"):
        weights.fingerprint(tmp_path / "missing.bin")
