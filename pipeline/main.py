"""The main command (``bash scripts/run.sh``): process -> train.sh -> test.sh -> evaluation.

With ``DATA_DIR`` set it runs on the real data and the converted weights named by ``CLIP_VIT``,
``CLIP_RN`` and ``CONVNEXT``. Without it, it runs the demo (docs/DATA.md): a generated dataset and
small random-weight checkpoints in the upstream formats, converted with convert.py, all under
``$OUT_DIR`` (default ``out/demo``). The steps are the scripts a user runs by hand.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.cli import parser, setup_logging

log = logging.getLogger("main")
ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {  # the steps, in order
    "process": [sys.executable, "process.py"],
    "train": ["bash", "train.sh"],
    "test": ["bash", "test.sh"],
    "eval": ["bash", "test.sh", "--eval"],
}


def prepare_demo(env: dict[str, str], seed: int) -> None:
    """Generate the demo data and weights; point the environment at them."""
    from pipeline.env import WEIGHT_FILES
    from pipeline.synthetic import DemoParams, ensure_demo, write_weights

    out = Path(env.setdefault("OUT_DIR", "out/demo"))
    env["DATA_DIR"] = str(out / "data")
    log.info("no DATA_DIR: running the demo in %s (random weights: accuracy means nothing)", out)
    ensure_demo(out / "data", DemoParams(seed=seed, nasty=True))
    for name, path in write_weights(out / "weights", "demo", seed).items():
        env[WEIGHT_FILES[name].variable] = str(path)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, common=False)
    steps_help = f"comma-separated subset of {','.join(COMMANDS)} (default: all)"
    ap.add_argument("--steps", default=",".join(COMMANDS), help=steps_help)
    args = ap.parse_args(argv)
    setup_logging()
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(COMMANDS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}")

    env = dict(os.environ)
    if not env.get("DATA_DIR"):
        prepare_demo(env, int(env.get("SEED", "0")))
    timings = {}
    for step in steps:
        log.info("=== %s: %s", step, " ".join(COMMANDS[step]))
        t = time.time()
        r = subprocess.run(COMMANDS[step], cwd=ROOT, env=env)
        timings[step] = time.time() - t
        if r.returncode != 0:
            log.error("step %s failed (exit %d)", step, r.returncode)
            return r.returncode
    out = Path(env.get("OUT_DIR", "out"))
    log.info("step times: %s", {k: f"{v:.1f}s" for k, v in timings.items()})
    if "test" in steps:
        log.info("submission: %s", out / "result.txt")
    if "eval" in steps:
        log.info("evaluation report: %s", out / "report" / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
