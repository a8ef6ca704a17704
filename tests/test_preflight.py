"""Bad input and interrupted or concurrent runs are refused before any work, in one line
(pipeline.preflight, train.py, test.py, process.py), and train.py's JSON artefacts are read
through one helper (pipeline.heads.read_json_artefact)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.heads import HeadError
from pipeline.scores import CHOICE_FILE, Choice
from pipeline.settings import Settings

# ------------------------------------------------------------------------ train.py's artefacts


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"choice": {"stage1": "chall', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'["challenge"]', "not a JSON object"),
        (b'{"choice": {"stage1": "challenge"}}', "corrupted (TypeError"),
        (b'{"choice": 3, "trained_with": {}}', "corrupted (TypeError"),
    ],
)
def test_corrupted_cascade_choice_is_one_line_naming_the_file(tmp_path, content, reason):
    from pipeline.env import Env
    from pipeline.workspace import Workspace

    path = tmp_path / "heads" / CHOICE_FILE
    path.parent.mkdir()
    path.write_bytes(content)
    ws = Workspace(Env.from_env(environ={"OUT_DIR": str(tmp_path)}), Settings(), None, None, {})
    with pytest.raises(HeadError) as e:
        ws.load_cascade()
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


# ------------------------------------------------------------------- the scripts on small inputs

ROOT = Path(__file__).resolve().parent.parent


def make_data(folder: Path, num_classes: int = 6, per_class: int = 6) -> Path:
    """A data folder in the challenge layout; the images are tiny (nothing here decodes them
    but process.py's --no-check run, which does not)."""
    from PIL import Image

    (folder / "TrainSet").mkdir(parents=True)
    names = [f"Animal_c{i}" if i % 2 else f"Thu-dog_d{i}" for i in range(num_classes)]
    (folder / "classes_b.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    lines = []
    for c in range(num_classes):
        for k in range(per_class):
            rel = f"TrainSet/{c}_{k}.jpg"
            Image.new("RGB", (8, 8), (c * 30, k * 30, 0)).save(folder / rel)
            lines.append(f"{rel} {c}\n")
    (folder / "train.txt").write_text("".join(lines))
    (folder / "TestSet").mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8), (k * 60, 0, 0)).save(folder / "TestSet" / f"image_{k + 1}.jpg")
    return folder


def fake_weights(folder: Path) -> dict[str, Path]:
    """Files with the header of converted weights (family, config) and a token tensor: enough
    for every check that reads headers, never loaded as a model here."""
    import numpy as np

    from models import weights
    from pipeline.env import WEIGHT_FILES

    out = {}
    for name, w in WEIGHT_FILES.items():
        config = {"image_resolution": 224} if w.family == "clip" else {"depths": [1]}
        out[name] = weights.save(
            folder / w.default, {"x": np.zeros(1, np.float32)}, family=w.family, config=config
        )
    return out


@pytest.fixture
def setup(tmp_path):
    data = make_data(tmp_path / "data")
    w = fake_weights(tmp_path / "weights")
    env = dict(
        os.environ,
        DATA_DIR=str(data),
        OUT_DIR=str(tmp_path / "out"),
        CLIP_VIT=str(w["vit"]),
        CLIP_RN=str(w["rn"]),
        CONVNEXT=str(w["convnext"]),
        WORKERS="1",
    )
    env.pop("SETTINGS", None)
    return {"env": env, "data": data, "out": tmp_path / "out", "weights": w, "tmp": tmp_path}


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def refused(args: list[str], env: dict[str, str], *needles: str) -> str:
    """Run a script; it must exit 2 with one ERROR line holding every needle, no traceback, and
    nothing encoded. Returns that line."""
    r = run_script(args, env)
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert r.returncode == 2, f"exit {r.returncode}:\n{r.stderr[-3000:]}"
    assert len(errors) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "encoding" not in r.stderr, r.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (Path(env["OUT_DIR"]) / "cache").exists()
    return errors[0]


def process(setup, *args: str) -> None:
    r = run_script(["process.py", "--no-check", *args], setup["env"])
    assert r.returncode == 0, r.stderr[-3000:]


# ------------------------------------------------------------------------------ class lists


@pytest.mark.parametrize("script", [["test.py"], ["train.py"], ["test.py", "--eval"]])
def test_fewer_than_five_classes_refused_up_front(setup, script):
    classes = setup["data"] / "classes_b.txt"
    classes.write_text("".join(f"A_c{i} {i}\n" for i in range(4)))
    refused(script, setup["env"], f"{classes}: 4 classes", "5 distinct class ids")


def test_process_refuses_fewer_than_five_classes(setup):
    classes = setup["data"] / "classes_b.txt"
    classes.write_text("".join(f"A_c{i} {i}\n" for i in range(4)))
    (setup["data"] / "train.txt").write_text("TrainSet/0_0.jpg 0\n")
    refused(["process.py", "--no-check"], setup["env"], f"{classes}: 4 classes")
    assert not (setup["out"] / "lists").exists()


def test_training_refused_with_fewer_than_five_seen_classes(setup):
    train = setup["data"] / "train.txt"
    train.write_text("".join(ln for ln in train.read_text().splitlines(True) if ln[-2] in "0123"))
    process(setup)
    refused(["train.py"], setup["env"], "train_4shot.txt: only 4 classes have training images")


# ------------------------------------------------------------------------------ the output folder


@pytest.mark.parametrize("script", [["test.py"], ["train.py"], ["process.py", "--no-check"]])
def test_out_dir_that_is_a_file(setup, script):
    setup["out"].write_text("not a folder")
    refused(script, setup["env"], f"OUT_DIR={setup['out']}: is a file, not a folder")


def test_out_dir_that_cannot_be_created(setup):
    blocker = setup["tmp"] / "file"
    blocker.write_text("")
    env = dict(setup["env"], OUT_DIR=str(blocker / "out"))
    refused(["test.py"], env, f"OUT_DIR={blocker / 'out'}: cannot create the folder")


@pytest.mark.parametrize("name", ["result.txt", "test.json"])
def test_output_file_that_is_a_folder(setup, name):
    (setup["out"] / name).mkdir(parents=True)
    refused(["test.py"], setup["env"], f"{setup['out'] / name}: is a folder")


def test_read_only_out_dir_is_refused_up_front(setup):
    # Root ignores permission bits, so the folder is made read-only the way root respects: a
    # read-only bind mount of it in a private mount namespace (EROFS).
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    out = setup["out"]
    out.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    mount = f'mount --bind "{out}" "{out}" && mount -o remount,bind,ro "{out}" && exec "$@"'
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount, "sh", sys.executable, "test.py"],
        cwd=ROOT,
        env=setup["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"OUT_DIR={out}: not writable (Read-only file system)" in errors[0]


def test_unwritable_out_dir_without_a_mount(setup, monkeypatch):
    # The same refusal where mounts are not permitted: the write probe fails as on a
    # read-only folder for a user other than root.
    import errno

    from pipeline import preflight
    from pipeline.env import Env
    from pipeline.settings import Settings

    setup["out"].mkdir()
    real = os.open

    def fake_open(path, flags, *args, **kw):
        if str(path).startswith(str(setup["out"])) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)
    env = Env.from_env(environ=setup["env"])
    with pytest.raises(preflight.PreflightError, match="not writable \\(Permission denied\\)"):
        with preflight.checked("test", env, Settings()):
            pass


def test_settings_folder_refused_before_any_work(setup):
    (setup["tmp"] / "settings.yaml").mkdir()
    env = dict(setup["env"], SETTINGS=str(setup["tmp"] / "settings.yaml"))
    refused(["test.py"], env, "settings.yaml: is a folder, not a YAML file")


# -------------------------------------------------------------------------------- weight files


@pytest.mark.parametrize("script", [["test.py"], ["train.py"], ["test.py", "--eval"]])
def test_clip_file_given_as_convnext_is_refused_up_front(setup, script):
    vit = setup["weights"]["vit"]
    env = dict(setup["env"], CONVNEXT=str(vit))
    refused(script, env, f"CONVNEXT={vit}: holds 'clip' weights", "'convnextv2'")


def test_convnext_file_given_as_clip_is_refused_up_front(setup):
    cnx = setup["weights"]["convnext"]
    env = dict(setup["env"], CLIP_RN=str(cnx))
    refused(["train.py"], env, f"CLIP_RN={cnx}: holds 'convnextv2' weights", "'clip'")


def test_missing_or_unreadable_weight_file(setup):
    gone = setup["tmp"] / "nowhere" / "RN101.safetensors"
    line = refused(
        ["test.py"], dict(setup["env"], CLIP_RN=str(gone)), f"CLIP_RN={gone}: weight file not found"
    )
    assert "python convert.py" in line
    junk = setup["tmp"] / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    refused(["test.py"], dict(setup["env"], CLIP_VIT=str(junk)), f"CLIP_VIT={junk}: ")


def test_convnext_needed_only_when_it_will_be_used(setup):
    from pipeline import preflight
    from pipeline.env import Env
    from pipeline.settings import Settings

    gone = setup["tmp"] / "none.safetensors"
    env = Env.from_env(environ=dict(setup["env"], CONVNEXT=str(gone)))
    # test.py with no trained expert (it stops at the heads, checked after the weights),
    # training without an expert domain: not needed
    with pytest.raises(HeadError, match="cascade.json: not found"):
        with preflight.checked("test", env, Settings()):
            pass
    with preflight.checked("train", env, Settings(expert_domain=None)):
        pass
    # training an expert on the data's dog classes, or AMU-Tuning: needed
    for settings in (Settings(), Settings(expert_domain=None, amu=True)):
        with pytest.raises(
            preflight.PreflightError, match=f"CONVNEXT={gone}: weight file not found"
        ):
            with preflight.checked("train", env, settings):
                pass


# ------------------------------------------------------------------- lists made from other input


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SEED": "1"}, "SEED is 1 but the lists in {lists} were made with SEED 0"),
        ({"SHOTS": "3"}, "SHOTS is 3 but the lists in {lists} were made with SHOTS 4"),
        ({"VAL_PER_CLASS": "1"}, "VAL_PER_CLASS is 1 but the lists in {lists} were made with"),
        ({"TRAIN_LIST": "{data}/train2.txt"}, "TRAIN_LIST is {data}/train2.txt but the lists"),
        ({"DATA_DIR": "{tmp}/data2"}, "DATA_DIR is {tmp}/data2 but the lists in {lists}"),
        ({"CLASSES": "{data}/classes2.txt"}, "CLASSES is {data}/classes2.txt but the lists"),
    ],
)
def test_lists_made_with_other_values_are_refused_at_train_time(setup, change, message):
    import shutil

    process(setup)
    shutil.copytree(setup["data"], setup["tmp"] / "data2")
    shutil.copy(setup["data"] / "train.txt", setup["data"] / "train2.txt")
    shutil.copy(setup["data"] / "classes_b.txt", setup["data"] / "classes2.txt")
    names = {"data": setup["data"], "tmp": setup["tmp"], "lists": setup["out"] / "lists"}
    env = dict(setup["env"], **{k: v.format(**names) for k, v in change.items()})
    for script in (["train.py"], ["test.py", "--eval"]):
        refused(script, env, message.format(**names), "re-run python process.py")


@pytest.mark.parametrize("name", ["train.txt", "classes_b.txt"])
def test_lists_made_from_an_edited_file_are_refused(setup, name):
    process(setup)
    path = setup["data"] / name
    if name == "train.txt":
        path.write_text(path.read_text().replace("TrainSet/0_5.jpg 0\n", ""))
    else:
        path.write_text(path.read_text().replace("d0 0", "d0_renamed 0"))
    var = "TRAIN_LIST" if name == "train.txt" else "CLASSES"
    refused(["train.py"], setup["env"], f"{var} {path} changed since the lists in")


def test_lists_of_the_current_values_pass(setup):
    from pipeline import preflight
    from pipeline.env import Env
    from pipeline.settings import Settings

    process(setup)
    env = Env.from_env(environ=dict(setup["env"], SEED="2"))
    with pytest.raises(preflight.PreflightError, match="SEED is 2"):
        with preflight.checked("train", env, Settings(expert_domain=None)):
            pass
    process(setup, "--seed", "2")  # re-run as the message says
    with preflight.checked("train", env, Settings(expert_domain=None)):
        pass


# ------------------------------------------------------------------ trained artefacts at test time


def write_choice(heads: Path) -> None:
    """heads/cascade.json as train.py leaves it: the challenge solution's choices."""
    import json

    choice = Choice.challenge().as_dict()
    trained = {k: choice[k] for k in ("flip_tta", "lpp_views", "seen_head")}
    heads.mkdir(parents=True, exist_ok=True)
    (heads / CHOICE_FILE).write_text(json.dumps({"choice": choice, "trained_with": trained}))


def test_corrupted_cascade_json_refused_before_encoding(setup):
    heads = setup["out"] / "heads"
    heads.mkdir(parents=True)
    (heads / CHOICE_FILE).write_text('{"choice": {"stage1": "chall')
    for script in (["test.py"], ["test.py", "--eval"]):
        refused(script, setup["env"], f"{heads / CHOICE_FILE}: corrupted", "re-run bash train.sh")


def test_truncated_head_and_corrupted_expert_refused_before_encoding(setup):
    import numpy as np

    from models import weights
    from pipeline.heads import classes_fingerprint, save_head
    from pipeline.lists import read_class_list

    heads, expert = setup["out"] / "heads", setup["out"] / "expert"
    names = read_class_list(setup["data"] / "classes_b.txt").names
    for name in ("vit", "rn"):
        info = {
            "classes": classes_fingerprint(names),
            "weights": weights.fingerprint(setup["weights"][name]),
        }
        save_head(heads / f"lpp_{name}.safetensors", {"w": np.zeros(3, np.float32)}, info)
    expert.mkdir()
    (expert / "expert.json").write_text("{}")
    refused(["test.py"], setup["env"], f"{expert / 'expert.json'}: artefact version None")
    (expert / "expert.json").write_text("[1, 2")
    refused(["test.py"], setup["env"], f"{expert / 'expert.json'}: corrupted (not valid JSON")
    (expert / "expert.json").unlink()
    data = (heads / "lpp_rn.safetensors").read_bytes()
    (heads / "lpp_rn.safetensors").write_bytes(data[: len(data) // 2])
    refused(["test.py"], setup["env"], f"{heads / 'lpp_rn.safetensors'}: ", "re-run bash train.sh")


def test_heads_missing_or_of_another_class_list_refused_before_encoding(setup):
    import numpy as np

    from models import weights
    from pipeline.heads import save_head

    heads = setup["out"] / "heads"
    refused(["test.py"], setup["env"], f"{heads / CHOICE_FILE}: not found; re-run bash train.sh")
    write_choice(heads)
    refused(["test.py"], setup["env"], f"trained head not found: {heads / 'lpp_vit.safetensors'}")
    for name in ("vit", "rn"):
        info = {
            "classes": "0123456789abcdef",
            "weights": weights.fingerprint(setup["weights"][name]),
        }
        save_head(heads / f"lpp_{name}.safetensors", {"w": np.zeros(3, np.float32)}, info)
    refused(["test.py"], setup["env"], f"{heads / 'lpp_vit.safetensors'}: trained with classes=")


# ------------------------------------------------------------------------ interrupted training

# train.py's preflight and bookkeeping around a stand-in for the training (the real one needs
# real weights and minutes): it announces itself, then waits to be killed or finishes.
FAKE_TRAIN = """
import sys, time
from pipeline.cli import parser, run_main
def work(env, settings):
    from pipeline.heads import load_head, save_head
    path = env.out_dir / "heads" / "lpp_vit.safetensors"
    arrays, info = load_head(path, {})
    save_head(path, {**arrays, "bias": arrays["bias"] + 1}, info)  # a new head beside the old
    if sys.argv[3:] == ["fork"]:  # a child as Jittor's compile pool forks one: it lives on
        import os
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print(child, flush=True)
    print("working", flush=True)
    time.sleep(float(sys.argv[1]))
sys.exit(run_main(parser(None).parse_args([]), work, sys.argv[2]))
"""


def start_fake_training(setup, seconds: float, script: str = "train", *more: str):
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_TRAIN, str(seconds), script, *more],
        cwd=ROOT,
        env=setup["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "working", proc.stderr.read()
    return proc


def trained_heads(setup) -> None:
    """Seen-class heads (LP++) and heads/cascade.json that fit the class list and the weights,
    as a finished training leaves them."""
    from dataclasses import asdict

    import numpy as np

    from fewshot.lpp import LPPConfig
    from models import weights
    from pipeline.heads import classes_fingerprint, save_head
    from pipeline.lists import read_class_list

    names = read_class_list(setup["data"] / "classes_b.txt").names
    S, d = len(names), 4
    state = {
        "weight": np.zeros((S, d), np.float32),
        "bias": np.zeros(S, np.float32),
        "alpha": np.ones(S, np.float32),
        "text": np.zeros((d, S), np.float32),
    }
    for name in ("vit", "rn"):
        info = {
            "classes": classes_fingerprint(names),
            "weights": weights.fingerprint(setup["weights"][name]),
            "config": asdict(LPPConfig()),
            "seen_ids": list(range(S)),
        }
        path = setup["out"] / "heads" / f"lpp_{name}.safetensors"
        save_head(path, state, info)
    write_choice(setup["out"] / "heads")


def test_killed_training_is_refused_at_test_time(setup):
    import signal

    process(setup)
    trained_heads(setup)  # an earlier, complete training
    proc = start_fake_training(setup, 300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    marker = setup["out"] / "training.incomplete"
    for script in (["test.py"], ["test.py", "--eval"]):
        refused(script, setup["env"], f"{marker}: the last training", "did not finish")
    # a training that completes clears it
    proc = start_fake_training(setup, 0)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert not marker.exists()


def test_failed_training_is_refused_at_test_time(setup):
    # The real train.py, failing after its checks (the stand-in weights cannot be built).
    process(setup)
    trained_heads(setup)
    r = run_script(["train.py"], setup["env"])
    assert r.returncode == 2 and "CLIP config" in r.stderr, r.stderr[-3000:]
    refused(["test.py"], setup["env"], "training.incomplete: the last training", "bash train.sh")


# ------------------------------------------------------------------------- concurrent runs


def test_second_run_on_the_same_out_dir_is_refused(setup):
    import signal

    process(setup)
    trained_heads(setup)
    holder = start_fake_training(setup, 300, "test")  # a test.py at work (the checks passed)
    try:
        pid = holder.pid
        line = refused(["test.py"], setup["env"], f"OUT_DIR {setup['out']} is in use by another")
        assert f"test, pid {pid}" in line
        refused(["train.py"], setup["env"], f"pid {pid}")
        refused(["process.py", "--no-check"], setup["env"], f"pid {pid}")
        other = dict(setup["env"], OUT_DIR=str(setup["tmp"] / "out2"))
        r = run_script(["test.py"], other)  # another OUT_DIR is free (and needs its training)
        assert "in use" not in r.stderr and "cascade.json: not found" in r.stderr, r.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)
    # the lock went with its process: the same command now passes the lock
    r = run_script(["test.py"], setup["env"])
    assert "in use" not in r.stderr, r.stderr[-2000:]


def test_two_test_runs_started_together_one_is_refused(setup):
    trained_heads(setup)
    env2 = dict(setup["env"], TEST_DIR=str(setup["tmp"] / "tests2"))
    (setup["tmp"] / "tests2").mkdir()
    (setup["tmp"] / "tests2" / "image_1.jpg").write_bytes(
        (setup["data"] / "TestSet" / "image_1.jpg").read_bytes()
    )
    a = start_fake_training(setup, 30, "test")
    b = subprocess.run(
        [sys.executable, "-c", FAKE_TRAIN, "0", "test"],
        cwd=ROOT,
        env=env2,
        capture_output=True,
        text=True,
        timeout=120,
    )
    a.terminate()
    a.wait(timeout=60)
    assert b.returncode == 2 and "is in use by another run" in b.stderr, b.stderr[-2000:]
    assert "working" not in b.stdout


def test_lock_is_not_kept_by_a_forked_child_of_a_killed_run(setup):
    import signal

    process(setup)
    trained_heads(setup)
    holder = subprocess.Popen(
        [sys.executable, "-c", FAKE_TRAIN, "300", "train", "fork"],
        cwd=ROOT,
        env=setup["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = int(holder.stdout.readline())
    assert holder.stdout.readline().strip() == "working"
    try:
        refused(["test.py"], setup["env"], "is in use by another run")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        os.kill(child, 0)  # still alive, holding the lock file open
        refused(["test.py"], setup["env"], "training.incomplete: the last training")
    finally:
        os.kill(child, signal.SIGKILL)
