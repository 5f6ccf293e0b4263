"""What every stage script shares: argument parsing, params loading, seeding, logging, and
turning known input errors into one-line messages with a non-zero exit (never a traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Callable

from .config import ConfigError, Params, load_params
from .data import DataError
from .models import ModelError

log = logging.getLogger("personal_nlf")

# Errors that mean "your input or configuration is wrong": reported in one line, exit 2.
USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError, PermissionError)


class StageError(RuntimeError):
    """A stage cannot continue for a reason the message explains (endpoint down, disk full...)."""


def setup_logging(quiet: bool = False, logfile: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        os.makedirs(os.path.dirname(logfile) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(logfile, encoding="utf-8"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--quiet", action="store_true", help="warnings only, no progress bars (CI)")
    return p


def is_quiet(args) -> bool:
    return bool(getattr(args, "quiet", False)) or os.environ.get("PERSONAL_NLF_QUIET") == "1"


def run(main: Callable[[argparse.Namespace, Params], None], p: argparse.ArgumentParser) -> None:
    """Parse args, load and validate params, seed, run `main`; known errors -> one line, exit 2."""
    args = p.parse_args()
    quiet = is_quiet(args)
    setup_logging(quiet)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1" if quiet else "0")
    try:
        params = load_params(args.params)
        seed_everything(params.seed)
        main(args, params)
    except USER_ERRORS + (StageError,) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
