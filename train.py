"""Step 2 of 3: train the heads of the cascade.

For each CLIP backbone (ViT-B/32 and RN101 by default): the text classifier over all classes
(domain-aware prompts) and an LP++ probe over the seen classes, selected on the validation list;
the ConvNeXt-V2 expert for one domain (the dog breeds); with pseudo-unseen classes in the split,
the choice of the stage-1 (InMaP) variant. Reads the lists of process.py, writes ``$OUT_DIR/heads``,
``$OUT_DIR/expert`` and ``$OUT_DIR/train.json``. Image features are cached under
``$OUT_DIR/cache``: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cli import add_common_arguments, run_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(ap)
    args = ap.parse_args(argv)

    def work(env, settings):
        from pipeline.training import train

        summary = train(env, settings)
        logging.getLogger("train").info("done: %s", env.out_dir / "train.json")
        return summary

    return run_main(args, work, "train")


if __name__ == "__main__":
    sys.exit(main())
