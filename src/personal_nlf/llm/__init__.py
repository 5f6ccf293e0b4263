"""LLM backends behind one interface (base.Backend). Heavy engines are imported lazily."""

from __future__ import annotations

from ..config import RoleConfig
from .base import Backend, BackendError, Generation, Messages, Sampling, render_plain

__all__ = ["Backend", "BackendError", "Generation", "Messages", "Sampling", "load_backend", "render_plain",
           "submission_size"]

# Prompts handed to a vLLM engine at once: enough for its scheduler to keep every batch slot
# busy (continuous batching), small enough that a killed stage loses at most one submission of
# work where a backend cannot journal per finished request.
VLLM_SUBMISSION = 4096
# openai: a submission holds this many times `batch_size` requests (the requests in flight), so
# the thread pool stays full except at the tail of each submission.
OPENAI_SUBMISSIONS_PER_SLOT = 16


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


def submission_size(role: RoleConfig) -> int:
    """How many prompts a stage hands its backend in one call (generation and judging).

    - hf: `batch_size` (the backend batches internally; one submission = one forward batch).
    - vllm: VLLM_SUBMISSION (thousands): the engine schedules them itself; records are still
      journaled one by one as they finish (generation.generate_journaled streams them).
    - openai: OPENAI_SUBMISSIONS_PER_SLOT x `batch_size`: `batch_size` requests stay in flight,
      each record journaled as its request finishes.
    """
    if role.backend == "vllm":
        return VLLM_SUBMISSION
    if role.backend == "openai":
        return OPENAI_SUBMISSIONS_PER_SLOT * max(1, role.batch_size)
    return max(1, role.batch_size)
