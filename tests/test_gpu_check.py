"""scripts/gpu_check.sh, rehearsed on CPU: every step (tiny model built from a config, hf
generation, logprob judge, LoRA SFT, DPO, one GRPO step, adapter reload) runs through the
project's code and prints ok; a setup failure is one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from personal_nlf.llm.hf import pick_dtype

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STEPS = ["build", "generate", "judge", "sft", "dpo", "grpo", "reload"]


def _run(env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", **env})


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    # As on the device machine: no polars (the script's stub stands in), no mlflow, dvc or vllm.
    r = _run({"GPU_CHECK_POLARS_STUB": "1", "GPU_CHECK_HIDE": "mlflow,dvc,vllm",
              "GPU_CHECK_KEEP": str(tmp_path / "work")}, timeout=900)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-4000:]}"
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["step", "device", "dtype", "seconds", "peak", "GPU", "MiB", "ok"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:] if ln and not ln.startswith(" ") and ln.split()[0] in STEPS}
    assert list(rows) == STEPS, r.stdout
    infer = str(pick_dtype("auto", "cpu")).replace("torch.", "")  # bf16 where the CPU has it natively
    for name, cols in rows.items():
        assert cols[1:3] == ["cpu", infer if name in ("generate", "judge", "reload") else "float32"], cols
        assert float(cols[3]) >= 0 and cols[4] == "-", cols
        assert cols[5] == "ok", f"{name}: {r.stdout}"
    assert lines[-1].startswith("gpu_check: ok, 7 steps on cpu"), lines[-1]
    assert "polars stub" in r.stderr and "hidden packages: dvc, mlflow, vllm" in r.stderr
    # The adapters went where fit_and_export puts them, in standard PEFT layout.
    for name in ("sft", "dpo", "grpo"):
        assert (tmp_path / "work" / name / "adapter" / "adapter_model.safetensors").exists()
        assert (tmp_path / "work" / name / "state.json").exists()


def test_gpu_check_setup_failure_is_one_line(tmp_path):
    r = _run({"WHEELS": str(tmp_path / "absent")}, timeout=60)
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == [f"gpu_check: FAIL setup: WHEELS={tmp_path / 'absent'} is not a folder"]
    (tmp_path / "empty").mkdir()
    r = _run({"WHEELS": str(tmp_path / "empty")}, timeout=60)
    assert r.returncode == 1 and r.stdout.strip().startswith("gpu_check: FAIL setup: no .whl files")
