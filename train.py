"""Step 2 of 3: train the cascade and choose its configuration.

Per CLIP backbone the text classifiers and the seen-class heads, the ConvNeXt-V2 expert for one
domain (the dog breeds), and every open choice of the cascade made on the board-shaped validation
(docs/METHODS.md). Reads the lists of process.py, writes ``$OUT_DIR/heads``, ``$OUT_DIR/expert``
and ``$OUT_DIR/train.json``. Features are cached under ``$OUT_DIR/cache``: a re-run resumes.
"""

from __future__ import annotations

import sys

from pipeline.cli import parser, run_main


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)

    def work(env, settings):
        from pipeline.training import train

        return train(env, settings)

    return run_main(args, work, "train")


if __name__ == "__main__":
    sys.exit(main())
