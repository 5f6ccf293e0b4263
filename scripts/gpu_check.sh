#!/usr/bin/env bash
# GPU check: hf generation, the logprob judge, LoRA SFT, DPO, one GRPO step and an adapter reload,
# through this project's own code (scripts/gpu_check.py), on a tiny random-initialised Llama built
# from a config (its tokenizer trained on the spot): nothing is downloaded. On CUDA in bf16 (the
# project's `auto` dtype); prints a table (step, device, dtype, seconds, peak GPU MiB, ok) and
# exits non-zero with one line `gpu_check: FAIL ...` on any failure. Meant to take well under
# 8 minutes on one GPU (GPU_CHECK_BUDGET_S, default 480, fails a slower run).
#
#   bash scripts/gpu_check.sh                        # CUDA if present, else CPU (fp32)
#   DEVICE=cpu bash scripts/gpu_check.sh             # CPU in fp32, GPUs hidden
#   WHEELS=.whl bash scripts/gpu_check.sh            # first install the carried wheels in .whl/
#
# Environment: PYTHON (default python3), WHEELS (a folder of .whl files, installed with
# `pip install --no-deps --no-index --target <tmp>` and put first on PYTHONPATH), DEVICE=cpu,
# GPU_CHECK_BUDGET_S, GPU_CHECK_KEEP=<folder> (keep the model and adapters there),
# GPU_CHECK_STEPS (SFT/DPO steps, default 2), GPU_CHECK_HIDDEN / GPU_CHECK_LAYERS (model size).
#
# The device machine (H200, no network; python3 3.12 with torch 2.11, transformers 5.17, peft,
# accelerate, pyarrow, pandas, pyyaml, jinja2, xxhash, fsspec) lacks what this import closure
# needs: trl, datasets (+ dill, multiprocess), pydantic (+ pydantic-core, annotated-types,
# typing-inspection; typing-extensions>=4.16 for pydantic 2.14) and polars. Fetch the wheels here
# (4.5 MB; `.whl/` is git-ignored, so name it in `carry`):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.3 \
#     pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
#
# and run there:  WHEELS=.whl bash scripts/gpu_check.sh     (device tool: carry [".whl"])
#
# polars is not carried: its runtime wheel is 54 MB (the device tool carries 64 MiB in all), and
# personal_nlf imports it only for io.write_parquet_atomic, which no step here calls. When polars
# cannot be imported, a stub stands in for it (its classes match nothing and cannot be made).
# personal_nlf itself comes from this checkout's src/ unless a personal_nlf wheel is among WHEELS
# (`pip wheel --no-deps -w .whl .` builds one). datasets 5.2 declares pyarrow>=24 and
# huggingface-hub>=1.31 (the machine's versions are not checked yet): the versions found are
# printed first.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_env.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "gpu_check: FAIL $*"; exit 1; }

pp=""
if [ -n "${WHEELS:-}" ]; then
  [ -d "$WHEELS" ] || fail "setup: WHEELS=$WHEELS is not a folder"
  shopt -s nullglob
  whls=("$WHEELS"/*.whl)
  shopt -u nullglob
  [ "${#whls[@]}" -gt 0 ] || fail "setup: no .whl files in $WHEELS"
  "$py" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$tmp/site" "${whls[@]}" >"$tmp/pip.log" 2>&1 \
    || fail "setup: pip install of $WHEELS failed: $(grep -m1 -i error "$tmp/pip.log" || tail -1 "$tmp/pip.log")"
  pp="$tmp/site"
fi
# personal_nlf: a carried wheel wins; else this checkout's src/.
pp="${pp:+$pp:}$repo/src"
# polars stand-in, put on the path only when no real polars is importable, or with
# GPU_CHECK_POLARS_STUB=1 to rehearse the device machine here (then also GPU_CHECK_HIDE=mlflow:
# mlflow, absent there, fails to import against the stub). datasets looks up polars.DataFrame
# and polars.Series in isinstance checks once polars is imported.
mkdir -p "$tmp/stub/polars"
cat >"$tmp/stub/polars/__init__.py" <<'EOF'
"""Stand-in for polars in scripts/gpu_check.sh (polars is not installed): its classes match
nothing in isinstance checks and cannot be made; any other name is missing."""
STUB = True


class _Missing:
    def __init__(self, *args, **kwargs):
        raise ImportError("polars is not installed (gpu_check stub)")


class DataFrame(_Missing):
    pass


class Series(_Missing):
    pass


class LazyFrame(_Missing):
    pass


def __getattr__(name):
    raise AttributeError(f"polars is not installed (gpu_check stub): no polars.{name}")
EOF
if [ "${GPU_CHECK_POLARS_STUB:-}" = 1 ] \
   || ! PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" "$py" -c "import polars" >/dev/null 2>&1; then
  pp="$pp:$tmp/stub"
fi
export PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HF_DATASETS_CACHE="$tmp/hf_datasets" PERSONAL_NLF_CACHE_DIR="$tmp/cache" WANDB_DISABLED=true
if [ "${DEVICE:-}" = "cpu" ]; then export CUDA_VISIBLE_DEVICES=""; fi

"$py" - <<'EOF' || fail "setup: a package is missing (see above); carry its wheel in WHEELS"
import importlib, importlib.metadata as md, sys
names = ["torch", "transformers", "peft", "accelerate", "tokenizers", "trl", "datasets", "pydantic", "pyarrow",
         "huggingface_hub", "polars"]
out, missing = [], []
for n in names:
    try:
        m = importlib.import_module(n)
    except Exception as e:
        missing.append(f"{n} ({type(e).__name__}: {e})")
        continue
    try:
        v = md.version(n.replace("_", "-"))
    except md.PackageNotFoundError:
        v = getattr(m, "__version__", "?")
    out.append(f"{n} {'stub' if getattr(m, 'STUB', False) else v}")
print(f"[gpu_check] python {sys.version.split()[0]}; " + ", ".join(out), file=sys.stderr)
if missing:
    print("[gpu_check] cannot import: " + "; ".join(missing), file=sys.stderr)
    sys.exit(1)
EOF
"$py" "$here/gpu_check.py"
exit $?
