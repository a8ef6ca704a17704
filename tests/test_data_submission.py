"""result.txt writing and validation, warnings.txt (pipeline.submission)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.submission import main, validate_result, write_result, write_warnings

NAMES = ["image_1.jpg", "image_2.png", "image_10.jpeg"]
TOP5 = np.array([[371, 332, 350, 358, 360], [0, 1, 2, 3, 4], [402, 5, 17, 9, 100]])


def test_write_read_validate(tmp_path):
    p = tmp_path / "out" / "result.txt"
    write_result(p, NAMES, TOP5)
    lines = [f"{n} {' '.join(map(str, row))}" for n, row in zip(NAMES, TOP5.tolist())]
    assert p.read_text().splitlines() == lines
    assert lines[0] == "image_1.jpg 371 332 350 358 360"
    assert p.read_bytes().endswith(b"\n") and b"\r" not in p.read_bytes()
    assert validate_result(p, NAMES, 403) == []
    assert [q.name for q in p.parent.iterdir()] == ["result.txt"]  # no temporary left


@pytest.mark.parametrize(
    "ids, names, message",
    [
        (TOP5[:, :4], NAMES, "shape"),
        (TOP5[:2], NAMES, "shape"),
        (np.array([[1, 1, 2, 3, 4]] * 3), NAMES, "repeated class ids"),
        (-TOP5, NAMES, "negative"),
        (TOP5 + 0.5, NAMES, "integer"),
        (TOP5, ["a.jpg", "a.jpg", "b.jpg"], "repeated image names"),
        (TOP5, ["a b.jpg", "c.jpg", "d.jpg"], "whitespace"),
        (TOP5, ["a.jpg", "c\udcff.jpg", "d.jpg"], "'c\\\\udcff.jpg' is not valid UTF-8"),
    ],
)
def test_write_result_refuses_malformed_input(tmp_path, ids, names, message):
    with pytest.raises(ValueError, match=message):
        write_result(tmp_path / "r.txt", names, ids)
    assert not (tmp_path / "r.txt").exists()


GOOD = "image_1.jpg 371 332 350 358 360\nimage_2.png 0 1 2 3 4\nimage_10.jpeg 402 5 17 9 100\n"


@pytest.mark.parametrize(
    "text, problem",
    [
        (GOOD.replace("image_2.png 0 1 2 3 4\n", ""), "1 test image(s) missing: image_2.png"),
        (GOOD + "image_11.jpg 1 2 3 4 5\n", ":4: image_11.jpg is not an image of the test folder"),
        (GOOD + "image_1.jpg 1 2 3 4 5\n", ":4: image_1.jpg already on line 1"),
        (GOOD.replace("0 1 2 3 4", "0 1 2 3"), ":2: 4 class ids, expected 5"),
        (GOOD.replace("0 1 2 3 4", "0 1 2 3 4 5"), ":2: 6 class ids, expected 5"),
        (GOOD.replace("0 1 2 3 4", "0 1 2 3 3"), ":2: repeated class ids"),
        (GOOD.replace("402", "403"), ":3: class id 403 out of range 0..402"),
        (GOOD.replace("0 1 2 3 4", "0 1 x 3 4"), ":2: 'x' is not a non-negative integer"),
        (GOOD.replace("0 1 2 3 4", "0 1 -2 3 4"), ":2: '-2' is not a non-negative integer"),
        (GOOD.replace("0 1 2 3 4", "0 1 2.0 3 4"), ":2: '2.0' is not"),
        (GOOD.replace("0 1 2 3 4", "0  1 2 3 4"), ":2: fields must be separated by single spaces"),
        (GOOD.replace("0 1 2 3 4", "0\t1 2 3 4"), ":2: fields must be separated"),
        (GOOD.replace("\n", "\r\n"), "Windows line endings"),
        (GOOD.replace("\nimage_2", "\n\nimage_2"), ":2: blank line"),
        (
            "".join(GOOD.splitlines(keepends=True)[i] for i in (1, 0, 2)),
            "not in the test folder's natural order",
        ),
    ],
)
def test_validator_catches(tmp_path, text, problem):
    p = tmp_path / "result.txt"
    p.write_bytes(text.encode())
    problems = validate_result(p, NAMES, 403)
    assert any(problem in x for x in problems), problems


def test_validator_accepts_missing_final_newline(tmp_path):
    p = tmp_path / "result.txt"
    p.write_text(GOOD.rstrip("\n"))
    assert validate_result(p, NAMES, 403) == []


def test_validator_unreadable(tmp_path):
    assert "cannot read" in validate_result(tmp_path / "nope.txt", NAMES, 403)[0]
    p = tmp_path / "r.txt"
    p.write_bytes(b"image_1.jpg \xff\xfe 1 2 3 4\n")
    assert "not UTF-8" in validate_result(p, NAMES, 403)[0]


def test_command_line(tmp_path, capsys):
    test_dir = tmp_path / "TestSet"
    test_dir.mkdir()
    for n in NAMES:
        (test_dir / n).write_bytes(b"x")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"A_c{i} {i}" for i in range(403)))
    p = tmp_path / "result.txt"
    write_result(p, NAMES, TOP5)
    args = [str(p), "--test-dir", str(test_dir), "--classes", str(classes)]
    assert main(args) == 0
    assert "valid (3 images, 403 classes)" in capsys.readouterr().out
    p.write_text(GOOD.replace("402", "999"))
    assert main(args) == 1
    assert "class id 999 out of range" in capsys.readouterr().out
    assert main([str(p), "--test-dir", str(tmp_path / "none"), "--classes", str(classes)]) == 2


def test_command_line_skips_symlink_loops(tmp_path, capsys):
    test_dir = tmp_path / "TestSet"
    test_dir.mkdir()
    for n in NAMES:
        (test_dir / n).write_bytes(b"x")
    (test_dir / "image_99.jpg").symlink_to("image_99.jpg")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"A_c{i} {i}" for i in range(403)))
    write_result(tmp_path / "result.txt", NAMES, TOP5)
    args = [str(tmp_path / "result.txt"), "--test-dir", str(test_dir), "--classes", str(classes)]
    assert main(args) == 0
    assert "valid (3 images, 403 classes)" in capsys.readouterr().out


def test_command_line_refuses_a_test_folder_result_txt_cannot_describe(tmp_path, capsys):
    test_dir = tmp_path / "TestSet"
    test_dir.mkdir()
    for n in [*NAMES, "image 11.jpg"]:
        (test_dir / n).write_bytes(b"x")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"A_c{i} {i}" for i in range(403)))
    write_result(tmp_path / "result.txt", NAMES, TOP5)
    args = [str(tmp_path / "result.txt"), "--test-dir", str(test_dir), "--classes", str(classes)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'image 11.jpg'" in err and "rename" in err


def test_warnings_file(tmp_path):
    p = tmp_path / "warnings.txt"
    write_warnings(p, [("image_7.jpg", "cannot decode\nimage (truncated)")])
    lines = p.read_text().splitlines()
    assert lines[0].startswith("#")
    assert lines[1] == "image_7.jpg\tcannot decode image (truncated)"
    write_warnings(p, [])  # a clean run removes a stale file
    assert not p.exists()
    write_warnings(p, [])  # and does not fail when there is none
