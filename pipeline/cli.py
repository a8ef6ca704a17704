"""What the scripts share: the argument parser, logging; train.py and test.py also run_main."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable

from models.runtime import DeviceError, requested_device
from models.weights import WeightsError
from pipeline import preflight
from pipeline.env import ConfigError, Env, add_env_arguments
from pipeline.features import FeatureError
from pipeline.images import ImageError
from pipeline.lists import ListError
from pipeline.settings import Settings, SettingsError
from pipeline.split import SplitError

log = logging.getLogger("pipeline")


# Errors that mean bad input or a missing step: reported in one line, no traceback.
USER_ERRORS = (FileNotFoundError, FloatingPointError, ConfigError, DeviceError, FeatureError)
USER_ERRORS += (ImageError, ListError, SettingsError, SplitError, WeightsError)


def parser(doc: str | None, common: bool = True) -> argparse.ArgumentParser:
    """A script's argument parser showing ``doc`` as written; ``common``: train/test's arguments."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if common:
        ap.add_argument("--settings", help="YAML file overriding method settings [$SETTINGS]")
        ap.add_argument("--device", choices=("auto", "cpu", "cuda"), help="[$FEWSHOT_DEVICE]")
        ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        add_env_arguments(ap)
    return ap


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _trained_settings(env: Env) -> Settings | None:
    """The settings train.py ran with (heads/cascade.json), for test.py and the evaluation: so
    test.sh needs no SETTINGS; a SETTINGS file overrides them."""
    from pipeline.heads import read_json_artefact
    from pipeline.scores import CHOICE_FILE

    path = env.out_dir / "heads" / CHOICE_FILE
    if not path.is_file():
        return None  # reported by the preflight
    recorded = read_json_artefact(path).get("settings")
    return Settings.from_dict(recorded, source=str(path)) if recorded else None


def run_main(args: argparse.Namespace, work: Callable[[Env, Settings], Any], script: str) -> int:
    """Resolve configuration and settings, check what ``script`` ("train", "test", "eval")
    needs (pipeline.preflight), run ``work``; bad input exits 2 with one line."""
    setup_logging(args.verbose)
    if args.device:
        os.environ["FEWSHOT_DEVICE"] = args.device
    try:
        requested_device()  # an unknown FEWSHOT_DEVICE is reported before anything runs
        env = Env.from_env(vars(args))
        base = None if script == "train" else _trained_settings(env)
        settings = Settings.load(args.settings, base=base)
        log.info(env.describe())
        with preflight.checked(script, env, settings):
            work(env, settings)
    except KeyboardInterrupt:
        # Only before Jittor is imported (then SIGINT is its quick exit, status 1); either way
        # files are written atomically and the feature cache keeps its completed chunks.
        log.error("interrupted: finished work is kept (feature cache, heads); re-run to resume")
        return 130
    except USER_ERRORS as e:
        if args.verbose:
            raise
        log.error("%s", e)
        return 2
    return 0
