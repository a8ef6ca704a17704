"""The 4-shot / validation split (pipeline.split) and process.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

import process
from pipeline.lists import LabeledList, ListError, parse_class_list, read_labeled_list
from pipeline.split import (
    SplitError,
    make_checker,
    select_shots,
    split_from_shot_list,
    write_split,
)

CLASSES = parse_class_list(
    [f"A_a{i} {i}" for i in range(4)]
    + [f"B_b{i} {i + 4}" for i in range(3)]
    + ["C_car0 7", "C_car1 8"],
    "c.txt",
)
COUNTS = [10, 6, 30, 4, 12, 5, 9, 0, 0]  # classes 7 and 8 unseen


def make_pool(counts=COUNTS, order_seed=None) -> LabeledList:
    items = [(f"TrainSet/{c}/{k}.jpg", c) for c, n in enumerate(counts) for k in range(n)]
    if order_seed is not None:
        rng = np.random.default_rng(order_seed)
        items = [items[i] for i in rng.permutation(len(items))]
    return LabeledList(tuple(p for p, _ in items), np.array([y for _, y in items]), "train.txt")


def test_shots_and_validation():
    pool = make_pool()
    split = select_shots(pool, CLASSES, shots=4, seed=0, val_per_class=5)
    tc = split.train.counts(len(CLASSES))
    vc = split.val.counts(len(CLASSES))
    assert tc.tolist() == [4, 4, 4, 4, 4, 4, 4, 0, 0]
    assert vc.tolist() == [min(5, n - 4) if n else 0 for n in COUNTS]
    assert not set(split.train.paths) & set(split.val.paths)
    label = dict(zip(pool.paths, pool.labels.tolist()))
    for lst in (split.train, split.val):
        assert all(label[p] == y for p, y in zip(lst.paths, lst.labels.tolist()))


def test_documented_procedure():
    """Per class: sort paths, permute with default_rng([seed, class]); first shots = train."""
    pool = make_pool(order_seed=3)
    split = select_shots(pool, CLASSES, shots=4, seed=11, val_per_class=3)
    for c in range(7):
        paths = sorted(p for p, y in zip(pool.paths, pool.labels) if y == c)
        perm = np.random.default_rng([11, c]).permutation(len(paths))
        want_train = sorted(paths[j] for j in perm[:4])
        want_val = sorted(paths[j] for j in perm[4:7])
        assert [p for p, y in zip(split.train.paths, split.train.labels) if y == c] == want_train
        assert [p for p, y in zip(split.val.paths, split.val.labels) if y == c] == want_val


def test_reproducible_and_independent_of_line_order():
    a = select_shots(make_pool(), CLASSES, 4, seed=5)
    b = select_shots(make_pool(order_seed=1), CLASSES, 4, seed=5)
    assert a.train.paths == b.train.paths and a.val.paths == b.val.paths
    c = select_shots(make_pool(), CLASSES, 4, seed=6)
    assert c.train.paths != a.train.paths
    # adding images to one class does not change the choice of the others
    more = make_pool([10, 6, 30, 4, 12, 5, 20, 0, 0])
    d = select_shots(more, CLASSES, 4, seed=5)
    keep = a.train.labels != 6
    assert (
        np.array(d.train.paths)[d.train.labels != 6].tolist()
        == np.array(a.train.paths)[keep].tolist()
    )


def test_too_few_images(caplog):
    pool = make_pool([10, 2, 5, 4, 4, 4, 4, 0, 0])
    with pytest.raises(
        SplitError, match=r"1 class\(es\) have fewer than 4 usable images: A_a1 \(2\)"
    ):
        select_shots(pool, CLASSES, 4)
    with caplog.at_level(logging.WARNING):
        split = select_shots(pool, CLASSES, 4, allow_fewer=True, val_per_class=10)
    assert "A_a1" in caplog.text
    assert split.train.counts(9)[1] == 2 and split.val.counts(9)[1] == 0


def test_labels_outside_the_class_list():
    pool = LabeledList(("a.jpg",), np.array([9]), "train.txt")
    with pytest.raises(ListError, match="label 9 is not a class id of c.txt"):
        select_shots(pool, CLASSES, 1)


def test_checker_replaces_bad_shots(caplog):
    pool = make_pool()
    clean = select_shots(pool, CLASSES, 4, seed=2, val_per_class=3)
    bad = set(clean.train.paths[:3])  # the first three shots of class 0 are undecodable
    seen_batches = []

    def check(paths):
        seen_batches.append(len(paths))
        return [p not in bad for p in paths]

    with caplog.at_level(logging.WARNING):
        split = select_shots(pool, CLASSES, 4, seed=2, val_per_class=3, check=check)
    assert not bad & set(split.train.paths) and not bad & set(split.val.paths)
    assert split.train.counts(9)[0] == 4
    assert seen_batches[0] == 28  # all classes' first candidates checked together
    assert "3 candidate shot(s)" in caplog.text
    # other classes are untouched
    assert [p for p in split.train.paths if "/0/" not in p] == [
        p for p in clean.train.paths if "/0/" not in p
    ]


def test_make_checker(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"")
    check = make_checker(tmp_path, workers=2)
    assert check(["ok.jpg", "bad.jpg", "missing.jpg"]) == [True, False, False]


def test_user_shot_list():
    pool = make_pool()
    shots = LabeledList(
        ("TrainSet/0/1.jpg", "TrainSet/0/2.jpg", "TrainSet/2/0.jpg"), np.array([0, 0, 2])
    )
    split = split_from_shot_list(shots, pool, CLASSES, 4, seed=0, val_per_class=50)
    assert split.train.paths == shots.paths
    assert not set(split.val.paths) & set(shots.paths)
    assert split.val.counts(9)[0] == 8 and split.val.counts(9)[2] == 29
    wrong = LabeledList(("TrainSet/0/1.jpg",), np.array([3]), "mine.txt")
    with pytest.raises(ListError, match="mine.txt: TrainSet/0/1.jpg is labelled 3 but 0"):
        split_from_shot_list(wrong, pool, CLASSES, 4)
    five = LabeledList(tuple(f"TrainSet/2/{k}.jpg" for k in range(5)), np.full(5, 2), "mine.txt")
    with pytest.raises(ListError, match=r"more than 4 images for A_a2 \(5\)"):
        split_from_shot_list(five, pool, CLASSES, 4)


def test_write_split(tmp_path):
    split = select_shots(make_pool(), CLASSES, 4, seed=0, val_per_class=2)
    out = write_split(split, tmp_path / "lists", CLASSES, {"seed": 0})
    assert read_labeled_list(out["train"], CLASSES).paths == split.train.paths
    assert read_labeled_list(out["val"], CLASSES).paths == split.val.paths
    info = json.loads(out["info"].read_text())
    assert info["train_images"] == 28 and info["seen_classes"] == 7 and info["seed"] == 0
    bad = split.__class__(split.train, split.train)
    with pytest.raises(SplitError, match="both training and validation"):
        write_split(bad, tmp_path / "x", CLASSES, {})


# ------------------------------------------------------------------------------ process.py


def test_process_on_demo_data(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_DIR", raising=False)
    out = tmp_path / "out"
    assert process.main(["--out-dir", str(out), "--seed", "3"]) == 0
    lists = out / "lists"
    train = (lists / "train_4shot.txt").read_text()
    val = (lists / "val.txt").read_text()
    assert len(train.splitlines()) == 22 * 4 and len(val.splitlines()) == 22 * 8
    assert (out / "demo" / "TrainSet").is_dir()
    # same seed: byte-identical lists; another seed: different shots
    assert process.main(["--out-dir", str(out), "--seed", "3"]) == 0
    assert (lists / "train_4shot.txt").read_text() == train
    assert (lists / "val.txt").read_text() == val
    assert process.main(["--out-dir", str(out), "--seed", "4"]) == 0
    assert (lists / "train_4shot.txt").read_text() != train


def test_process_refuses_bad_lists(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    (data / "TrainSet").mkdir(parents=True)
    (data / "classes_b.txt").write_text("A_a 0\nA_b 1\nA_c 2\nA_d 3\nA_e 4")
    (data / "train.txt").write_text("TrainSet/x.jpg 0\nTrainSet/y.jpg 5\n")
    monkeypatch.setenv("DATA_DIR", str(data))
    with caplog.at_level(logging.ERROR):
        rc = process.main(["--out-dir", str(tmp_path / "o"), "--no-check"])
    assert rc == 2
    assert "train.txt:2: label 5 is not a class id" in caplog.text
    assert not (tmp_path / "o" / "lists" / "train_4shot.txt").exists()


def test_process_takes_the_settings_shot_list_in_the_comma_form(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "TrainSet").mkdir(parents=True)
    (data / "classes_b.txt").write_text("\n".join(f"A_{c} {c}" for c in range(6)))
    pool = [f"TrainSet/{c}_{k}.jpg {c}" for c in (0, 1) for k in range(6)]
    (data / "train.txt").write_text("\n".join(pool) + "\n")
    (tmp_path / "seed.txt").write_text("TrainSet/0_5.jpg,0\nTrainSet/1_2.jpg,1\n")
    (tmp_path / "s.yaml").write_text(f"shot_list: {tmp_path / 'seed.txt'}\n")
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("SETTINGS", str(tmp_path / "s.yaml"))
    assert process.main(["--out-dir", str(tmp_path / "o"), "--shots", "1"]) == 0
    lists = tmp_path / "o" / "lists"
    assert (lists / "train_4shot.txt").read_text() == "TrainSet/0_5.jpg 0\nTrainSet/1_2.jpg 1\n"
    assert "TrainSet/0_5.jpg" not in (lists / "val.txt").read_text()
    assert json.loads((lists / "split.json").read_text())["source"] == str(tmp_path / "seed.txt")
