"""Step 1 of 3: choose the 4-shot training list and the labelled validation list.

Reads the class list and train.txt (from DATA_DIR, or the generated demo dataset when DATA_DIR is
not set), picks --shots images per class reproducibly from --seed (or takes --shot-list) and
writes into $OUT_DIR/lists/ train_4shot.txt (the shots), val.txt (up to --val-per-class other
images per class, never used for training) and split.json (seed, sources, counts).
Then run ``bash train.sh`` and ``bash test.sh``. See docs/DATA.md.
"""

from __future__ import annotations

import logging
import sys

from pipeline import preflight
from pipeline.cli import parser, setup_logging
from pipeline.env import ConfigError, Env, add_env_arguments
from pipeline.lists import ListError, read_class_list, read_labeled_list
from pipeline.settings import Settings, SettingsError
from pipeline.split import SplitError, make_checker, select_shots, split_from_shot_list, write_split

log = logging.getLogger("process")

# The configuration process.py reads (pipeline.env); the rest belongs to train.py and test.py.
ENV_FIELDS = "data_dir classes train_list out_dir seed shots val_per_class workers".split()


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, common=False)
    ap.add_argument(
        "--shot-list",
        help="use this <path> <label> (or <path>,<label>) list as the training shots "
        "[the settings' shot_list]",
    )
    ap.add_argument("--settings", help="YAML settings file, for shot_list [$SETTINGS]")
    ap.add_argument(
        "--allow-fewer",
        action="store_true",
        help="train classes with fewer than --shots images on all they have instead of failing",
    )
    ap.add_argument(
        "--no-check",
        action="store_true",
        help="do not decode the chosen shots (by default an undecodable shot is replaced)",
    )
    add_env_arguments(ap, ENV_FIELDS)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        env = Env.from_env(vars(args))
        preflight.check_process(env)
        if env.is_demo:
            from pipeline.synthetic import ensure_demo

            log.info("DATA_DIR not set: using the generated demo dataset in %s", env.data_dir)
            ensure_demo(env.data_dir)
            env = Env.from_env(vars(args))  # class list / test folder defaults now exist
        log.info("%s", env.describe())
        classes = read_class_list(env.classes)
        pool = read_labeled_list(env.train_list, classes, env.data_dir)
        if len(pool) == 0:
            raise ListError(f"{env.train_list}: no images listed")
        sizes = dict(shots=env.shots, seed=env.seed, val_per_class=env.val_per_class)
        shot_list = args.shot_list or Settings.load(args.settings).shot_list
        if shot_list:
            shots = read_labeled_list(shot_list, classes, env.data_dir)
            split = split_from_shot_list(shots, pool, classes, **sizes)
            source = shot_list
        else:
            check = None if args.no_check else make_checker(env.data_dir, env.workers)
            split = select_shots(pool, classes, allow_fewer=args.allow_fewer, check=check, **sizes)
            source = f"seeded selection (seed {env.seed})"
        # split_record: what train.py compares with the current run
        info = {"source": source, **preflight.split_record(env)}
        write_split(split, env.lists_dir, classes, info)
    except (ConfigError, ListError, SettingsError, SplitError, FileExistsError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
