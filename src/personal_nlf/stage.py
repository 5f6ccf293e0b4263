"""What every stage script shares: argument parsing, params loading, seeding, logging, and
turning known input errors into one-line messages with a non-zero exit (never a traceback)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import stage_params
from .config import ConfigError, Params, load_params
from .data import DataError
from .models import ModelError

log = logging.getLogger("personal_nlf")

# Errors that mean "your input or configuration is wrong": reported in one line, exit 2.
USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError, PermissionError)
# OS errors of the environment rather than the code (disk full, read-only or unwritable output
# folder): one line naming the path; outputs written before are intact (atomic writes).
ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def describe_os_error(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"cannot write{where}: {e.strerror or e} (earlier outputs are intact; free space or fix the folder, then rerun)"


class StageError(RuntimeError):
    """A stage cannot continue for a reason the message explains (endpoint down, disk full...)."""


def setup_logging(quiet: bool = False, logfile: str | None = None) -> logging.Handler | None:
    """stderr gets INFO (WARNING with --quiet) and progress bars; the log file always gets INFO."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    handlers: list[logging.Handler] = [console]
    file_handler = None
    if logfile:
        os.makedirs(os.path.dirname(logfile) or ".", exist_ok=True)
        # Appended, one block per run: the plain record of what a stage did (no progress bars).
        file_handler = logging.FileHandler(logfile, mode="a", encoding="utf-8")
        handlers.append(file_handler)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
    return file_handler


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
    p.add_argument("--log-file", default=None,
                   help="plain log of this stage, appended (default: $PERSONAL_NLF_LOG_DIR or logs/, "
                        "named after the stage, e.g. logs/iteration_nlf_train_policy_1.log)")
    return p


def default_log_file(args) -> str:
    parts = [Path(sys.argv[0]).stem]
    parts += [v for v in (getattr(args, k, None) for k in ("method", "loop", "step", "t")) if isinstance(v, str) and v]
    name = re.sub(r"[^\w@.-]", "_", "_".join(parts))
    return str(Path(os.environ.get("PERSONAL_NLF_LOG_DIR", "logs")) / f"{name}.log")


def is_quiet(args) -> bool:
    return bool(getattr(args, "quiet", False)) or os.environ.get("PERSONAL_NLF_QUIET") == "1"


def run(main: Callable[[argparse.Namespace, Params], None], p: argparse.ArgumentParser) -> None:
    """Parse args, load and validate params, seed, run `main`; known errors -> one line, exit 2."""
    args = p.parse_args()
    quiet = is_quiet(args)
    logfile = args.log_file or default_log_file(args)
    file_handler = setup_logging(quiet, logfile)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1" if quiet else "0")
    log.info("start: %s", " ".join(sys.argv))
    t0 = time.time()
    try:
        params = load_params(args.params)
        seed_everything(params.seed)
        if os.environ.get("PERSONAL_NLF_PARAMS_GUARD") == "1" and stage_params.is_stage(sys.argv):
            # Reading a params key the stage does not declare in dvc.yaml raises (on in the tests).
            params = stage_params.guard(params, stage_params.reads(sys.argv))
        main(args, params)
    except USER_ERRORS + (StageError,) as e:
        if file_handler:  # the one-line error goes to the log too, not twice to the terminal
            file_handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0,
                                               "failed after %.1f s: %s", (time.time() - t0, e), None))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in ENV_ERRNOS:
            raise
        msg = describe_os_error(e)
        if file_handler:
            file_handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "failed: %s", (msg,), None))
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    log.info("done in %.1f s", time.time() - t0)
