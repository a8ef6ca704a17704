"""test.py's work: the cascade on the test images -> result.txt (validated), warnings.txt,
predictions.tsv (which stage answered each image) and test.json (stage counts and timings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from models.fileio import write_text_atomic
from pipeline.cascade import STAGE_NAMES, CascadeResult
from pipeline.env import Env
from pipeline.lists import list_test_images
from pipeline.settings import Settings
from pipeline.submission import validate_result, write_result, write_warnings
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def stage_counts(result: CascadeResult) -> dict[str, int]:
    return {name: int((result.stage == i).sum()) for i, name in enumerate(STAGE_NAMES)}


def predict(env: Env, settings: Settings) -> Path:
    """Run the cascade on every image of TEST_DIR and write result.txt (validated)."""
    ws = Workspace.open(env, settings)
    names = list_test_images(env.test_dir)
    paths = [str(Path(env.test_dir) / n) for n in names]
    log.info("%d test images in %s", len(names), env.test_dir)
    T = ws.text_classifiers()
    X, failed = ws.clip_features(paths, "test")
    probes, seen = ws.load_probes()
    with ws.timed("load expert"):
        expert = ws.load_expert()
    result = ws.run_stages(paths, X, T, probes, seen, expert, "test")
    write_result(env.result_path, names, result.top5)
    problems = validate_result(env.result_path, names, ws.classes.num_classes)
    if problems:
        raise RuntimeError(f"{env.result_path}: invalid submission: " + "; ".join(problems[:5]))
    reason = "undecodable image: predicted from a grey placeholder"
    write_warnings(env.warnings_path, [(names[i], reason) for i in failed])
    if failed:
        log.warning("%d test images could not be decoded; see %s", len(failed), env.warnings_path)
    log.info("answered by stage: %s", stage_counts(result))
    log.info("timings: %s", {k: round(v, 2) for k, v in ws.timings.items()})
    # Which stage answered each image: for inspection, never read by the pipeline.
    rows = [
        f"{n}\t{STAGE_NAMES[st]}\t{' '.join(map(str, t5))}"
        for n, st, t5 in zip(names, result.stage, result.top5)
    ]
    write_text_atomic(
        env.out_dir / "predictions.tsv", "name\tstage\ttop5\n" + "\n".join(rows) + "\n"
    )
    summary = {
        "images": len(names),
        "undecodable": len(failed),
        "stages": stage_counts(result),
        "clip_loaded": {name: bb.loaded for name, bb in ws.backbones.items()},
        **ws.record(),
    }
    write_text_atomic(env.out_dir / "test.json", json.dumps(summary, indent=1) + "\n")
    return env.result_path
