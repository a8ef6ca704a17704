"""Class list, labelled lists and the test folder listing (pipeline.lists)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.lists import (
    ClassList,
    LabeledList,
    ListError,
    list_test_images,
    natural_key,
    parse_class_list,
    parse_labeled_list,
    read_class_list,
    read_labeled_list,
    result_name_problem,
    seen_class_ids,
    split_class_name,
    write_labeled_list,
)

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


# ------------------------------------------------------------------------------ class list


def test_official_class_lists():
    a = read_class_list(REPO / "data" / "classes.txt")  # no trailing newline
    b = read_class_list(REPO / "data" / "classes_b.txt")
    assert len(a) == 374 and len(b) == 403
    assert b.names[:374] == a.names
    assert b.domain_names == ("Animal", "Caltech-101", "Food-101", "Thu-dog", "Stanford-Cars")
    sizes = {d: len(b.ids_in_domain(d)) for d in b.domain_names}
    assert sizes == {
        "Animal": 52,
        "Caltech-101": 91,
        "Food-101": 101,
        "Thu-dog": 130,
        "Stanford-Cars": 29,
    }
    np.testing.assert_array_equal(b.ids_in_domain("Thu-dog"), np.arange(244, 374))
    np.testing.assert_array_equal(b.ids_in_domain("Stanford-Cars"), np.arange(374, 403))
    assert b.names[53] == "Caltech-101_Faces_easy"
    assert b.clean_names[53] == "Faces easy"
    assert b.domains[53] == "Caltech-101"
    assert b.names.index("Thu-dog_papillon") == 373
    assert b.source.endswith("classes_b.txt")


def test_split_class_name():
    assert split_class_name("Thu-dog_Shiba_Dog") == ("Thu-dog", "Shiba Dog")
    assert split_class_name("Food-101_apple_pie") == ("Food-101", "apple pie")
    assert split_class_name("Plain") == ("", "Plain")
    assert split_class_name("_x") == ("", " x".strip())


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
@pytest.mark.parametrize("bom", [True, False])
def test_class_list_line_endings(tmp_path, newline, trailing, bom):
    text = "Animal_Bear 0\nAnimal_Bee 1\n\nMyDomain_red_car 2" + ("\n" if trailing else "")
    p = tmp_path / "c.txt"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.replace("\n", newline).encode())
    cl = read_class_list(p)
    assert cl.names == ("Animal_Bear", "Animal_Bee", "MyDomain_red_car")
    assert cl.domains == ("Animal", "Animal", "MyDomain")
    assert cl.clean_names[2] == "red car"
    np.testing.assert_array_equal(cl.ids_in_domain("MyDomain"), [2])


def test_class_list_ids_in_any_order():
    cl = parse_class_list(["B_b 1", "A_a 0", "C_c 2"])
    assert cl.names == ("A_a", "B_b", "C_c")


@pytest.mark.parametrize(
    "lines, message",
    [
        (["A_a 0", "A_b 0"], "x.txt:2: class id 0 already used on line 1"),
        (["A_a 0", "A_a 1"], "x.txt:2: class name 'A_a' already used on line 1"),
        (["A_a 0", "A_b 2"], "class ids must be 0..1; missing 1, out of range 2"),
        (["A_a zero"], "x.txt:1: expected '<Domain>_<name> <id>'"),
        (["A_a"], "x.txt:1: expected"),
        (["A_a -1"], "x.txt:1: negative class id -1"),
        (["A_a 1.0"], "x.txt:1: expected"),
        ([], "x.txt: no classes"),
        (["", "  "], "x.txt: no classes"),
    ],
)
def test_class_list_errors(lines, message):
    with pytest.raises(ListError) as e:
        parse_class_list(lines, "x.txt")
    assert message in str(e.value)


def test_class_list_file_errors(tmp_path):
    with pytest.raises(ListError, match="file not found"):
        read_class_list(tmp_path / "missing.txt")
    with pytest.raises(ListError, match="is a directory"):
        read_class_list(tmp_path)
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"A_a 0\nA_caf\xe9 1\n")
    with pytest.raises(ListError, match=r"latin1.txt:2: not valid UTF-8"):
        read_class_list(p)


def test_unknown_domain_is_clear():
    cl = parse_class_list(["A_a 0"], "x.txt")
    with pytest.raises(ListError, match="no domain 'B'"):
        cl.ids_in_domain("B")


# --------------------------------------------------------------------------- labelled lists


@pytest.fixture
def classes() -> ClassList:
    return parse_class_list(["Animal_Bear 0", "Animal_Bee 1", "Thu-dog_pug 2", "Cars_x 3"], "c.txt")


def test_train_list_basic(tmp_path, classes, caplog):
    text = (
        "TrainSet/Animal/Bear/1.jpg 0\n"
        "\n"
        "TrainSet/Animal/Bear/2.jpg 0\r\n"
        "  TrainSet/Thu-dog/pug/a b.jpeg   2  \n"
        "TrainSet/Animal/Bee/ü 蜜蜂.jpg 1\n"
        "TrainSet\\Animal\\Bee\\win.jpg 1\n"
        "TrainSet/Animal/Bear/1.jpg 0"  # duplicate, no trailing newline
    )
    p = write(tmp_path / "train.txt", text)
    with caplog.at_level(logging.WARNING):
        lst = read_labeled_list(p, classes)
    assert lst.paths == (
        "TrainSet/Animal/Bear/1.jpg",
        "TrainSet/Animal/Bear/2.jpg",
        "TrainSet/Thu-dog/pug/a b.jpeg",
        "TrainSet/Animal/Bee/ü 蜜蜂.jpg",
        "TrainSet/Animal/Bee/win.jpg",
    )
    assert lst.labels.tolist() == [0, 0, 2, 1, 1]
    assert lst.labels.dtype == np.int64
    assert "1 duplicate line(s) ignored" in caplog.text and "line 7" in caplog.text
    np.testing.assert_array_equal(seen_class_ids(lst, classes), [0, 1, 2])
    np.testing.assert_array_equal(lst.counts(len(classes)) == 0, [0, 0, 0, 1])
    np.testing.assert_array_equal(lst.counts(4), [2, 2, 1, 0])
    assert lst.resolve("/data")[0] == "/data/TrainSet/Animal/Bear/1.jpg"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.jpg 0\na.jpg 1\n", "t.txt:2: a.jpg is labelled 1 here but 0 on line 1"),
        ("a.jpg 0\nb.jpg 4\n", "t.txt:2: label 4 is not a class id of c.txt (0..3)"),
        ("a.jpg -1\n", "t.txt:1: label -1 is not a class id"),
        ("a.jpg\n", "t.txt:1: expected '<image path> <label>'"),
        ("a.jpg x\n", "t.txt:1: expected"),
    ],
)
def test_train_list_errors(classes, text, message):
    with pytest.raises(ListError) as e:
        parse_labeled_list(text.splitlines(), "t.txt", classes)
    assert message in str(e.value)


def test_comma_lists_of_the_challenge_solution(tmp_path, classes):
    text = "TrainSet/Animal/Bear/1.jpg,0\nTrainSet/a,b/2.jpg,1\nTrainSet/c.jpg, 2\nx,y.jpg 3\n"
    lst = read_labeled_list(write(tmp_path / "seed.txt", text), classes)
    assert lst.paths == (
        "TrainSet/Animal/Bear/1.jpg",
        "TrainSet/a,b/2.jpg",
        "TrainSet/c.jpg",
        "x,y.jpg",
    )
    assert lst.labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(ListError, match="seed2.txt:1"):
        read_labeled_list(write(tmp_path / "seed2.txt", "a.jpg,x\n"), classes)


def test_shipped_seed_shot_list_is_four_per_seen_class_of_board_b():
    from pipeline.env import REPO_ROOT

    board_b = read_class_list(REPO_ROOT / "data" / "classes_b.txt")
    shots = read_labeled_list(REPO_ROOT / "data" / "seed_train_4shot.txt", board_b)
    assert len(shots) == 1496 and all(p.startswith("TrainSet/") for p in shots.paths)
    counts = shots.counts(len(board_b))
    assert (counts[:374] == 4).all() and (counts[374:] == 0).all()


def test_labeled_list_roundtrip(tmp_path, classes):
    lst = LabeledList(("x/ä b.jpg", "y.png"), np.array([3, 0]))
    p = tmp_path / "sub" / "l.txt"
    write_labeled_list(p, lst)
    assert p.read_text(encoding="utf-8") == "x/ä b.jpg 3\ny.png 0\n"
    back = read_labeled_list(p, classes)
    assert back.paths == lst.paths and back.labels.tolist() == [3, 0]
    assert [q.name for q in p.parent.iterdir()] == ["l.txt"]  # no temporary left behind
    sub = lst.subset([1], "val")
    assert sub.paths == ("y.png",) and sub.labels.tolist() == [0] and sub.source == "val"


# Fuzzing: arbitrary text either parses or raises ListError, never anything else.
_line = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda a, b, sep: f"{a}{sep}{b}",
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12),
        st.one_of(st.integers(-3, 6).map(str), st.text(max_size=4)),
        st.sampled_from([" ", "\t", "  ", "\u3000", "_"]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=8))
def test_fuzz_class_list(lines):
    try:
        cl = parse_class_list(lines, "fuzz.txt")
    except ListError as e:
        assert str(e).startswith("fuzz.txt")
        return
    assert len(cl.names) == len(cl.domains) == len(cl.clean_names) == len(cl)
    assert len(set(cl.names)) == len(cl)
    for d in cl.domain_names:
        assert len(cl.ids_in_domain(d)) > 0


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=8))
def test_fuzz_labeled_list(lines):
    cl = parse_class_list(["A_a 0", "A_b 1", "B_c 2"])
    try:
        lst = parse_labeled_list(lines, "fuzz.txt", cl)
    except ListError as e:
        assert str(e).startswith("fuzz.txt")
        return
    assert len(set(lst.paths)) == len(lst)
    assert ((lst.labels >= 0) & (lst.labels < 3)).all()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=120))
def test_fuzz_list_files_bytes(tmp_path, data):
    p = tmp_path / "f.txt"
    p.write_bytes(data)
    classes = parse_class_list(["A_a 0", "A_b 1"])
    for reader in (read_class_list, lambda p: read_labeled_list(p, classes)):
        try:
            reader(p)
        except ListError as e:
            assert str(p) in str(e)


# ------------------------------------------------------------------------------ test folder


def test_natural_order_and_extensions(tmp_path, caplog):
    names = ["image_10.jpg", "image_2.JPG", "image_1.jpeg", "image_3.png", "image_20.webp"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING):
        got = list_test_images(tmp_path)
    assert got == ["image_1.jpeg", "image_2.JPG", "image_3.png", "image_10.jpg", "image_20.webp"]
    assert "ignored 3 entries" in caplog.text and "notes.txt" in caplog.text


def test_natural_key_mixed():
    names = ["b2", "a10", "a2", "a", "10", "9", "A3"]
    assert sorted(names, key=natural_key) == ["9", "10", "a", "a2", "A3", "a10", "b2"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=6))
def test_fuzz_natural_key_total_order(names):
    once = sorted(names, key=natural_key)
    assert sorted(reversed(names), key=natural_key) == once  # total: input order is irrelevant


def test_empty_or_missing_test_folder(tmp_path):
    with pytest.raises(ListError, match="no images in the test folder"):
        list_test_images(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ListError, match="no images"):
        list_test_images(tmp_path)
    with pytest.raises(ListError, match="test folder not found"):
        list_test_images(tmp_path / "nope")


def test_symlink_loops_are_skipped_like_dangling_links(tmp_path, caplog):
    (tmp_path / "image_1.jpg").write_bytes(b"x")
    (tmp_path / "image_2.jpg").symlink_to("image_2.jpg")  # a link to itself
    (tmp_path / "image_3.jpg").symlink_to("image_4.jpg")  # two links to each other
    (tmp_path / "image_4.jpg").symlink_to("image_3.jpg")
    (tmp_path / "image_5.jpg").symlink_to("missing.jpg")  # dangling
    (tmp_path / "image_6.jpg").symlink_to("image_1.jpg")  # a good link is an image
    with caplog.at_level(logging.WARNING):
        got = list_test_images(tmp_path)
    assert got == ["image_1.jpg", "image_6.jpg"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignored 4 entries" in warnings[0].getMessage()
    assert "image_2.jpg, image_3.jpg, image_4.jpg, image_5.jpg" in warnings[0].getMessage()


def test_image_names_result_txt_cannot_hold_are_refused_at_listing(tmp_path):
    # A submission needs a line per test image, '<name> <ids>': refused before any feature is
    # computed, in one line naming the files, rather than when result.txt is written.
    for n in ["image_1.jpg", "image 2.jpg", "image\n3.jpg", "image\t4.png", "image\xa05.jpg"]:
        (tmp_path / n).write_bytes(b"x")
    fd = os.open(os.path.join(os.fsencode(tmp_path), b"image_\xff6.jpg"), os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    (tmp_path / "notes about this.txt").write_text("skipped, not an image: no problem")
    with pytest.raises(ListError) as e:
        list_test_images(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: 5 test image")
    for shown in ["'image 2.jpg'", "'image\\n3.jpg'", "'image\\t4.png'", "'image\\xa05.jpg'"]:
        assert shown in msg, msg
    assert "'image_\\udcff6.jpg'" in msg and "rename" in msg and "notes" not in msg


@pytest.mark.parametrize(
    "name, reason",
    [
        ("image_1.jpg", None),
        ("Ünïcödé_画像.jpg", None),
        ("a b.jpg", "whitespace"),
        ("a\u2028b.jpg", "whitespace"),
        ("a\udcffb.jpg", "not valid UTF-8"),
        ("", "empty"),
    ],
)
def test_result_name_problem(name, reason):
    got = result_name_problem(name)
    assert got == reason if reason is None else reason in got


# ------------------------------------------------------------------ paths outside the data folder


@pytest.mark.parametrize(
    "line",
    ["../../etc/passwd 1", "TrainSet/../../secret.jpg 1", "..\\..\\boot.ini 1", ".. 1"],
)
def test_relative_paths_leaving_the_data_folder_are_refused(classes, line):
    text = ["TrainSet/a.jpg 0", line]
    with pytest.raises(ListError) as e:
        parse_labeled_list(text, "t.txt", classes)
    msg = str(e.value)
    assert msg.startswith("t.txt:2: ") and "outside the data folder" in msg and "\n" not in msg


def test_absolute_paths_only_inside_the_data_folder(tmp_path, classes):
    data = tmp_path / "data"
    inside = f"{data}/TrainSet/a.jpg 0"
    lst = parse_labeled_list([inside, "TrainSet/b.jpg 1"], "t.txt", classes, root=data)
    assert lst.paths == (f"{data}/TrainSet/a.jpg", "TrainSet/b.jpg")
    for line in ("/etc/passwd 3", f"{data}/../x.jpg 1", f"{tmp_path}/data2/a.jpg 1"):
        with pytest.raises(ListError) as e:
            parse_labeled_list(["TrainSet/b.jpg 1", line], "t.txt", classes, root=data)
        assert str(e.value).startswith("t.txt:2: ") and f"outside the data folder {data}" in str(
            e.value
        )
    # Through a symlinked data folder, spelled either way.
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    parse_labeled_list([f"{data}/a.jpg 0"], "t.txt", classes, root=link)
    parse_labeled_list([f"{link}/a.jpg 0"], "t.txt", classes, root=data)


def test_process_refuses_a_training_list_that_leaves_the_data_folder(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    (data / "TrainSet").mkdir(parents=True)
    (data / "classes_b.txt").write_text("".join(f"A_c{i} {i}\n" for i in range(6)))
    shots = "".join(f"TrainSet/{i}_{k}.jpg {i}\n" for i in range(6) for k in range(4))
    (data / "train.txt").write_text(shots + "../../etc/passwd 3\n")
    env = dict(os.environ, DATA_DIR=str(data), OUT_DIR=str(tmp_path / "out"))
    r = subprocess.run(
        [sys.executable, "process.py", "--no-check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert f"{data / 'train.txt'}:25: ../../etc/passwd is outside the data folder" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "lists").exists()
