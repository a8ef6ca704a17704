"""Step 3 of 3: the cascade on the test images -> ``$OUT_DIR/result.txt``.

Stage 1 (InMaP over all classes) answers the images whose top class has no training image, stage 2
(the seen-class head) the rest, stage 3 (the ConvNeXt-V2 expert) re-ranks those predicted as dogs.
The submission is written atomically and validated; undecodable images still get a line and are
listed in ``$OUT_DIR/warnings.txt``. ``--eval`` writes ``$OUT_DIR/report/report.md`` instead: the
predicted board score and the cascade on the labelled validation list.
"""

from __future__ import annotations

import sys

from pipeline.cli import parser, run_main


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument(
        "--eval", action="store_true", help="evaluate on the validation list instead of predicting"
    )
    args = ap.parse_args(argv)

    def work(env, settings):
        from pipeline import evaluation, predict

        return (evaluation.evaluate if args.eval else predict.predict)(env, settings)

    return run_main(args, work, "eval" if args.eval else "test")


if __name__ == "__main__":
    sys.exit(main())
