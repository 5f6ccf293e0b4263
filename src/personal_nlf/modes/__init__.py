"""Training modes behind one small interface.

A loop is a module with `STEPS: dict[str, Callable[[IterationContext], dict]]`, one function per
per-iteration DVC stage (see dvc.yaml), plus `init(ctx)` for iteration 0. The stage script
`stages/iteration.py` runs the loop of the configured `mode` (`nlf`: VAC; `summary`: POPI-style
summaries trained with GRPO), or `--loop offline_rl`, the scalar-reward baseline that runs beside it; `loop.py` holds what the loops share. Adding a
mode means adding one module here and its name to `config.Params.mode`.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Params, RoleConfig, TrainConfig

log = logging.getLogger("personal_nlf")

STEP_NAMES = ("rollout", "signal", "refine", "judge", "train_feedback", "train_policy", "evaluate")
LOOPS = ("nlf", "offline_rl")


@dataclass
class IterationContext:
    params: Params
    t: str  # this iteration ("0" = the untrained starting point)
    prev: str | None
    root: Path  # outputs/<mode>
    prepared: Path
    index: Path
    models_dir: Path
    metrics: Path | None = None  # evaluate only
    loop: str = "nlf"  # which loop's iteration this is (outputs/<loop>)
    extra: dict[str, Any] = field(default_factory=dict)

    def dir(self, step: str, t: str | None = None) -> Path:
        return self.root / f"iter_{self.t if t is None else t}" / step

    def journal(self, step: str, name: str) -> Path:
        """Resume journals live beside the step's output folder: DVC deletes declared outputs
        before a rerun, not these."""
        return self.root / f"iter_{self.t}" / f".{step}.{name}.partial"

    def adapter(self, which: str, t: str | None = None) -> str | None:
        """Adapter of iteration t for `policy` or `feedback` (None = base model)."""
        state = json.loads((self.dir(f"train_{which}", t if t is not None else self.prev) / "state.json").read_text())
        return state["adapter"]

    def role(self, name: str, adapter: str | None) -> RoleConfig:
        return getattr(self.params.models, name).model_copy(update={"adapter": adapter})

    def train_config(self) -> TrainConfig:
        it = self.params.nlf.iterations[self.t]
        overrides = {k: v for k, v in it.model_dump(exclude={"prev"}).items() if v is not None}
        return self.params.train.model_copy(update=overrides)


def get(mode: str):
    try:
        return importlib.import_module(f"{__name__}.{mode}")
    except ModuleNotFoundError:
        raise ValueError(f"unknown mode {mode!r}") from None
