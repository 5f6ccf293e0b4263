"""MLflow tracking: one run per stage execution, nested under one parent run per pipeline
(the DVC experiment name, or `workspace@<git rev>` for a plain `dvc repro`).

Stages are separate processes, so the parent is found (or created) by tag and children point at
it with `mlflow.parentRunId`. Default store: a local sqlite file, no server; MLFLOW_TRACKING_URI
overrides. DVC stays the source of truth for data and lineage; MLflow is for looking.
Never log raw profile text or API keys: only params (which hold env-var *names*), metrics and
derived artifacts pass through here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from .config import TrackingConfig


def git_revision(cwd: str | Path = ".") -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        # Dirty = uncommitted *code*; params, dvc.lock and metrics change during every run.
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "stages"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def experiment_name() -> str:
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class _NoRun:
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    run_id = None


class _Run:
    def __init__(self, mlflow, run):
        self.mlflow, self.run_id = mlflow, run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # MLflow names allow alphanumerics and _ - . space : / only ("vac@1" -> "vac_1").
        clean = {re.sub(r"[^\w\-. :/]", "_", k): float(v) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).exists():
            self.mlflow.log_artifact(str(path))


def _root() -> Path:
    # Queued/temp experiments run in a temporary copy; DVC_ROOT is the real repository.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{_root() / 'mlflow.db'}"


@contextlib.contextmanager
def stage_run(cfg: TrackingConfig, stage: str, params: dict[str, Any], tags: dict[str, str] | None = None):
    """Context manager yielding an object with log_metrics / log_artifact. The run is named after
    the DVC stage running it (DVC_STAGE, which DVC sets for every stage command, without the
    `path/dvc.yaml:` of a pipeline in a subfolder); `stage` names a script run by hand."""
    stage = os.environ.get("DVC_STAGE", "").rpartition(":")[2] or stage
    if not cfg.enabled:
        yield _NoRun()
        return
    import logging

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no phoning home from stages
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(_tracking_uri())
    if mlflow.get_experiment_by_name(cfg.experiment) is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        # Artifacts beside the local store (fixed when the experiment is first created).
        mlflow.create_experiment(cfg.experiment, artifact_location=(_root() / "mlruns").as_uri())
    mlflow.set_experiment(cfg.experiment)
    rev, exp = git_revision(), experiment_name()
    pipeline = f"{exp}@{rev[:12]}"
    client = mlflow.MlflowClient()
    eid = mlflow.get_experiment_by_name(cfg.experiment).experiment_id
    found = client.search_runs([eid], filter_string=f"tags.`personal_nlf.pipeline` = '{pipeline}'", max_results=1)
    if found:
        parent_id = found[0].info.run_id
    else:
        parent = client.create_run(eid, run_name=pipeline, tags={"personal_nlf.pipeline": pipeline,
                                                                  "git_revision": rev, "dvc_experiment": exp})
        client.set_terminated(parent.info.run_id)
        parent_id = parent.info.run_id
    all_tags = {"mlflow.parentRunId": parent_id, "stage": stage, "git_revision": rev, "dvc_experiment": exp,
                **(tags or {})}
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        flat = flatten(params)
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        yield _Run(mlflow, run)
