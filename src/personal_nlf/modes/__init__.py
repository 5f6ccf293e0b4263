"""Training loops behind one small interface.

A loop is a module with `STEPS: dict[str, Callable[[IterationContext], dict]]`, its own steps, one
per per-iteration DVC stage, plus `init(ctx)` for iteration 0. `stages/iteration.py --loop L
--step S` runs one step: `nlf` (VAC) and `offline_rl` (the scalar-reward baseline beside it) in
dvc.yaml, `summary` (POPI-style summaries trained with GRPO) in pipelines/summary/dvc.yaml.
`loop.py` holds what the loops share. Adding a loop means adding one module here, its name to
LOOPS, and its stages to a pipeline.
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

LOOPS = ("nlf", "offline_rl", "summary")


@dataclass
class IterationContext:
    params: Params
    t: str  # this iteration ("0" = the untrained starting point)
    prev: str | None
    root: Path  # outputs/<loop>
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
        """Adapter of iteration t (default: prev) for the model train_<which> trains (None = base model)."""
        state = json.loads((self.dir(f"train_{which}", t if t is not None else self.prev) / "state.json").read_text())
        return state["adapter"]

    def role(self, name: str, adapter: str | None) -> RoleConfig:
        return getattr(self.params.models, name).model_copy(update={"adapter": adapter})

    def train_config(self) -> TrainConfig:
        it = self.params.nlf.iterations[self.t]
        overrides = {k: v for k, v in it.model_dump(exclude={"prev"}).items() if v is not None}
        return self.params.train.model_copy(update=overrides)


def get(loop: str):
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r} (loops: {', '.join(LOOPS)})")
    return importlib.import_module(f"{__name__}.{loop}")
