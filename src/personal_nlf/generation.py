"""Journaled generation: prompts are handed to the backend in submissions and each finished record
is appended to a journal, so a killed stage, rerun, resumes where it stopped: every record exactly
once.

Submission size comes from `llm.submission_size(role)` at the call sites: hf = its batch size;
vllm = thousands (the engine's scheduler needs them to keep its batch full); openai = enough to
keep `batch_size` requests in flight. Backends with `generate_stream` (vllm, openai) yield each
prompt's generations as its request finishes, and each is journaled then, not at the end of the
submission."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from .io import Journal
from .llm.base import Backend, Generation, Messages, Sampling

log = logging.getLogger("personal_nlf")


def generate_journaled(
    backend: Backend,
    items: list[tuple[str, Messages]],
    sampling: Sampling,
    journal: Journal,
    to_record: Callable[[str, list[Generation]], dict[str, Any]],
    chunk_size: int = 16,
    desc: str = "generate",
) -> dict[str, dict[str, Any]]:
    """Answer every (key, prompt) not yet in the journal; returns key -> record for all keys.
    `chunk_size` is the submission size (pass `llm.submission_size(role)`)."""
    n_todo = sum(1 for k, _ in items if k not in journal)
    tokens, t0 = 0, time.perf_counter()
    with tqdm(total=len(items), initial=len(items) - n_todo, desc=desc, unit="rec",
              disable=None, mininterval=2) as bar:
        # Chunks are cut from the *full* item list and seeded by chunk number, so a resumed run
        # draws the same seeds as an uninterrupted one (identical outputs for greedy decoding).
        for c, start in enumerate(range(0, len(items), chunk_size)):
            chunk = [(k, m) for k, m in items[start:start + chunk_size] if k not in journal]
            if not chunk:
                continue
            prompts, chunk_sampling = [m for _, m in chunk], replace(sampling, seed=sampling.seed + 1000 * c)
            stream = getattr(backend, "generate_stream", None)
            finished = stream(prompts, chunk_sampling) if stream is not None else \
                enumerate(backend.generate(prompts, chunk_sampling))
            for i, g in finished:
                key = chunk[i][0]
                journal.add(key, to_record(key, g))
                tokens += sum(x.completion_tokens for x in g)
                bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - t0):.1f}")
    elapsed = time.perf_counter() - t0
    log.info("%s: %d records (%d resumed from the journal), %d tokens in %.1f s (%.1f tok/s)", desc, len(items),
             len(items) - n_todo, tokens, elapsed, tokens / max(1e-9, elapsed))
    return {k: journal.done[k] for k, _ in items}
