"""Paths and sizes from the environment and the command line (pipeline.env)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.env import WEIGHT_FILES, ConfigError, Env, add_env_arguments


def test_defaults_without_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative defaults must not see a demo set made elsewhere
    cfg = Env.from_env(environ={})
    assert cfg.is_demo
    assert cfg.out_dir == Path("out")
    assert cfg.data_dir == Path("out/demo")
    assert cfg.train_list == Path("out/demo/train.txt")
    assert cfg.result_path == Path("out/result.txt")
    assert cfg.cache_dir == Path("out/cache")
    assert cfg.train_shots_list == Path("out/lists/train_4shot.txt")
    assert cfg.weights == {
        "vit": Path("out/weights/ViT-B-32.safetensors"),
        "rn": Path("out/weights/RN101.safetensors"),
        "convnext": Path("out/weights/convnextv2_base.safetensors"),
    }
    assert (cfg.shots, cfg.seed, cfg.val_per_class, cfg.batch_size) == (4, 0, 20, 64)
    assert cfg.workers >= 1
    # no class list in the (absent) data folder: its own board-B name, never another list
    assert cfg.classes == Path("out/demo/classes_b.txt")


def test_class_list_is_the_data_folders_own(tmp_path):
    """Board A's data (classes.txt only) must not silently get another dataset's class list."""
    env = {"DATA_DIR": str(tmp_path)}
    assert Env.from_env(environ=env).classes == tmp_path / "classes_b.txt"  # missing: reported
    (tmp_path / "classes.txt").write_text("A_a 0\n")
    assert Env.from_env(environ=env).classes == tmp_path / "classes.txt"
    (tmp_path / "classes_b.txt").write_text("A_a 0\n")
    assert Env.from_env(environ=env).classes == tmp_path / "classes_b.txt"


def test_environment_and_data_dir_defaults(tmp_path):
    (tmp_path / "classes_b.txt").write_text("A_a 0\n")
    (tmp_path / "TestSetA").mkdir()
    env = {"DATA_DIR": str(tmp_path), "OUT_DIR": str(tmp_path / "o"), "SEED": "7", "SHOTS": "2"}
    cfg = Env.from_env(environ=env)
    assert not cfg.is_demo
    assert cfg.classes == tmp_path / "classes_b.txt"
    assert cfg.test_dir == tmp_path / "TestSetA"
    assert cfg.weights["vit"] == tmp_path / "o" / "weights" / "ViT-B-32.safetensors"
    assert (cfg.seed, cfg.shots) == (7, 2)
    (tmp_path / "TestSetB").mkdir()  # board B wins when both exist
    assert Env.from_env(environ=env).test_dir == tmp_path / "TestSetB"
    env["TEST_DIR"] = "/x/y"
    env["CLASSES"] = "/x/c.txt"
    env["CLIP_RN"] = "/w/rn.safetensors"
    cfg = Env.from_env(environ=env)
    assert cfg.test_dir == Path("/x/y") and cfg.classes == Path("/x/c.txt")
    assert cfg.weights["rn"] == Path("/w/rn.safetensors")


def test_overrides_beat_environment_and_none_is_ignored(tmp_path):
    env = {"SEED": "7", "BATCH_SIZE": "32", "DATA_DIR": str(tmp_path)}
    cfg = Env.from_env({"seed": 3, "batch_size": None, "unrelated": "x"}, environ=env)
    assert cfg.seed == 3 and cfg.batch_size == 32
    cfg = Env.from_env({"data_dir": str(tmp_path / "d")}, environ={})
    assert cfg.data_dir == tmp_path / "d" and not cfg.is_demo


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SEED": "abc"}, "SEED/--seed: not an integer: 'abc'"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE/--batch-size: must be >= 1, got 0"),
        ({"SHOTS": "-1"}, "SHOTS/--shots: must be >= 1"),
        ({"WORKERS": "1.5"}, "WORKERS/--workers: not an integer"),
    ],
)
def test_malformed_values_name_the_variable(env, message):
    with pytest.raises(ConfigError) as e:
        Env.from_env(environ=env)
    assert message in str(e.value)


def test_empty_variable_means_default():
    cfg = Env.from_env(environ={"DATA_DIR": "", "SEED": ""})
    assert cfg.is_demo and cfg.seed == 0


def test_argparse_integration(tmp_path):
    ap = argparse.ArgumentParser()
    add_env_arguments(ap)
    args = ap.parse_args(
        ["--seed", "9", "--out-dir", str(tmp_path), "--val-per-class", "3", "--clip-vit", "v.st"]
    )
    cfg = Env.from_env(vars(args), environ={"SEED": "1", "VAL_PER_CLASS": "50", "CLIP_VIT": "x"})
    assert (cfg.seed, cfg.val_per_class, cfg.out_dir) == (9, 3, tmp_path)
    assert cfg.weights["vit"] == Path("v.st")
    # every weight file has its option, named after its variable
    for w in WEIGHT_FILES.values():
        assert "--" + w.variable.lower().replace("_", "-") in ap.format_help()
    ap2 = argparse.ArgumentParser()
    add_env_arguments(ap2, ["seed"])
    with pytest.raises(SystemExit):
        ap2.parse_args(["--shots", "3"])
    text = cfg.describe()
    assert "seed" in text and "9" in text and str(tmp_path) in text and "demo" in text
    assert "CLIP_VIT" in text and "v.st" in text
