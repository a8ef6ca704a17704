"""``SETTINGS=settings/challenge.yaml bash train.sh && bash test.sh`` end to end, on a generated
dataset in the challenge's layout over board B's class list whose training folder holds the
files the challenge solution's 4-shot list names (tiny images, small random-weight models: the
recipe's every step runs, at the challenge's sizes of lists, epochs and views). Slow: the expert
alone encodes 520 dog images x 31 views.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def make_dataset(folder: Path, extra_per_class: int = 2, test_images: int = 120) -> None:
    """classes_b.txt, TrainSet/ with the seed list's files plus ``extra_per_class`` more images
    of each seen class (the validation pool), train.txt, TestSetB/ and its answers."""
    from pipeline.lists import read_class_list, read_labeled_list

    classes = read_class_list(ROOT / "data" / "classes_b.txt")
    shots = read_labeled_list(ROOT / "data" / "seed_train_4shot.txt", classes)
    (folder / "classes_b.txt").write_bytes((ROOT / "data" / "classes_b.txt").read_bytes())
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (len(classes), 3))

    def image(c: int) -> Image.Image:
        a = colours[c] + rng.normal(0, 25, (24, 24, 3))
        return Image.fromarray(a.clip(0, 255).astype(np.uint8))

    lines = []
    for path, c in zip(shots.paths, shots.labels.tolist()):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        image(c).save(folder / path)
        lines.append(f"{path} {c}")
    for c in np.unique(shots.labels).tolist():
        domain = classes.domains[c]
        for k in range(extra_per_class):
            path = f"TrainSet/{domain}/extra_{c}/{k}.jpg"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            image(c).save(folder / path)
            lines.append(f"{path} {c}")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    (folder / "TestSetB").mkdir()
    answers = []
    for i, c in enumerate(rng.integers(0, len(classes), test_images).tolist()):
        image(c).save(folder / "TestSetB" / f"image_{i + 1}.jpg")
        answers.append(f"image_{i + 1}.jpg {c}")
    (folder / "test_labels.txt").write_text("\n".join(answers) + "\n")


def test_the_challenge_recipe_runs_end_to_end(tmp_path):
    from pipeline.synthetic import write_weights

    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data)
    weights = write_weights(tmp_path / "weights", "demo", seed=0)
    env = dict(os.environ)
    env.update(
        DATA_DIR=str(data),
        OUT_DIR=str(tmp_path / "out"),
        CLIP_VIT=str(weights["vit"]),
        CLIP_RN=str(weights["rn"]),
        CONVNEXT=str(weights["convnext"]),
        SETTINGS=str(ROOT / "settings" / "challenge.yaml"),
        VAL_PER_CLASS="2",
    )
    for script in ("train.sh", "test.sh"):
        r = subprocess.run(["bash", script], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{script}:\n{r.stderr[-5000:]}"
    out = tmp_path / "out"
    # the seed's own shots, in our list format
    shots = (out / "lists" / "train_4shot.txt").read_text().splitlines()
    seed = (ROOT / "data" / "seed_train_4shot.txt").read_text().splitlines()
    assert shots == [line.replace(",", " ") for line in seed]
    record = json.loads((out / "heads" / "cascade.json").read_text())
    assert record["candidates"] == []  # every choice pinned: nothing to search
    assert record["choice"] == {
        "flip_tta": True, "inmap_prompts": "bare", "stage1": "challenge", "lpp_views": "orig",
        "seen_head": "lpp", "expert_integration": "switch", "transclip": "off",
    }  # fmt: skip
    expert = json.loads((out / "expert" / "expert.json").read_text())
    assert expert["settings"]["weight_decay"] == 0.0 and expert["settings"]["views"] == 31
    assert expert["settings"]["schedule"] == "jittor-cosine per epoch, T_max 15, eta_min 1e-05"
    assert expert["best_epoch"] == 31 and expert["transforms"]["resample"] == "bilinear"
    lrs = [h["lr"] for h in expert["history"]]
    assert lrs[0] == lrs[1] == 1e-3 and min(lrs) < 2e-5 and lrs[-1] > 9e-4  # restarted
    rows = (out / "result.txt").read_text().splitlines()
    assert len(rows) == 120 and all(len(r.split()) == 6 for r in rows)
    p = json.loads((out / "train.json").read_text())["predicted_top1"]
    assert 0 <= p["low"] <= p["value"] <= p["high"] <= 1
