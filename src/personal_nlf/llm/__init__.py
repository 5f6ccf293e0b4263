"""LLM backends behind one interface (base.Backend). Heavy engines are imported lazily."""

from __future__ import annotations

from ..config import RoleConfig
from .base import Backend, BackendError, Generation, Messages, Sampling, render_plain

__all__ = ["Backend", "BackendError", "Generation", "Messages", "Sampling", "load_backend", "render_plain"]


def load_backend(role: RoleConfig, models_dir=None, seed: int = 0) -> Backend:
    if role.backend == "hf":
        from .hf import HFBackend

        return HFBackend(role, models_dir, seed=seed)
    if role.backend == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(role, models_dir, seed=seed)
    if role.backend == "openai":
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(role, models_dir, seed=seed)
    raise BackendError(f"unknown backend {role.backend!r}")


def sampling_for(role: RoleConfig, seed: int = 0, n: int = 1, **overrides) -> Sampling:
    s = dict(temperature=role.temperature, top_p=role.top_p, max_new_tokens=role.max_new_tokens, seed=seed, n=n)
    s.update(overrides)
    return Sampling(**s)
