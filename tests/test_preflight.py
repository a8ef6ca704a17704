"""Bad input and interrupted or concurrent runs are refused before any work, in one line
(pipeline.preflight, train.py, test.py, process.py), and train.py's JSON artefacts are read
through one helper (pipeline.heads.read_json_artefact)."""

from __future__ import annotations

import pytest

from pipeline.heads import HeadError
from pipeline.scores import STAGE1_FILE, stage1_choice
from pipeline.settings import Settings

# ------------------------------------------------------------------------ train.py's artefacts


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"chosen": "challenge", "candid', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'["challenge"]', "not a JSON object"),
        (b'{"chosen": "no-such-variant"}', "'no-such-variant' is not a stage-1 candidate"),
    ],
)
def test_corrupted_stage1_choice_is_one_line_naming_the_file(tmp_path, content, reason):
    path = tmp_path / STAGE1_FILE
    path.write_bytes(content)
    with pytest.raises(HeadError) as e:
        stage1_choice(Settings(), tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and reason in msg and "re-run bash train.sh" in msg
    assert "\n" not in msg


def test_json_artefact_helper(tmp_path):
    from pipeline.heads import read_json_artefact

    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert read_json_artefact(path) == {"a": 1}
    with pytest.raises(HeadError, match="x.json.missing: not found; re-run python process.py"):
        read_json_artefact(tmp_path / "x.json.missing", "re-run python process.py")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(HeadError, match="d.json: unreadable"):
        read_json_artefact(tmp_path / "d.json")
