"""The one interface every LLM backend implements (hf, vllm, openai).

A prompt is a list of chat messages ({"role", "content"}). Backends whose model has no chat
template (base models such as Gemma 3 270M) render it as plain text with `render_plain`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

Messages = list[dict[str, str]]


class BackendError(RuntimeError):
    """The backend cannot serve the request (endpoint down, model missing...): message says why."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    n: int = 1  # completions per prompt (VAC samples N feedbacks; GRPO G summaries)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # wall time of the batch call divided by the prompts in it (a repeated greedy prompt's copies split its share)
    finish_reason: str = "stop"  # "stop" | "length"
    extra: dict[str, Any] = field(default_factory=dict)


def render_plain(messages: Messages, answer_prefix: str = "") -> str:
    """Text prompt for models without a chat template."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"].strip())
        elif m["role"] == "user":
            parts.append(m["content"].strip())
        else:
            parts.append(f"Answer: {m['content'].strip()}")
    return "\n\n".join(parts) + "\n\nAnswer:" + (" " + answer_prefix if answer_prefix else "")


class Backend(abc.ABC):
    """generate() for answers; choice_logprobs() for the judge's logprob method."""

    name: str = "base"

    @abc.abstractmethod
    def generate(self, prompts: list[Messages], sampling: Sampling) -> list[list[Generation]]:
        """For each prompt, `sampling.n` generations (outer list aligned with prompts)."""

    def choice_logprobs(self, prompts: list[Messages], answer_prefix: str, choices: list[str]) -> list[dict[str, float]]:
        """Log-probability of each single-token choice right after `answer_prefix` in the
        assistant turn. Backends that cannot do it raise BackendError naming the alternative."""
        raise BackendError(f"the {self.name} backend cannot return token log-probabilities; "
                           "use judge.method=generate or the hf/vllm backend for the judge")

    def answer_logprobs(self, prompts: list[Messages], answers: list[str]) -> list[float]:
        """Log-likelihood of each answer as the assistant turn after its prompt (summed over the
        answer's tokens): pairwise preference accuracy, summary mode's preference / popi rewards.
        hf and vllm implement it (config.ANSWER_SCORING_BACKENDS)."""
        raise BackendError(f"the {self.name} backend cannot score answers (no prompt log-probs); use the hf or "
                           "vllm backend for the role whose likelihoods are read")

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Provenance: backend, model, adapter (with content hashes where local), device."""

    def for_role(self, role) -> "Backend":
        """This engine used with `role`'s per-call settings (batch size, input budget). Backends
        whose engine fixes those at load time are shared only by equal roles: themselves."""
        return self

    def close(self) -> None:  # release GPU memory / engines
        pass


class StreamingBackend(Backend):
    """A backend that yields each prompt's generations as they finish (vllm, openai: many requests
    in flight); generate() collects them in prompt order. generation.generate_journaled journals
    them as they come."""

    @abc.abstractmethod
    def generate_stream(self, prompts: list[Messages], sampling: Sampling) -> Iterator[tuple[int, list[Generation]]]:
        """(prompt index, its `sampling.n` generations), in the order they finish."""

    def generate(self, prompts: list[Messages], sampling: Sampling) -> list[list[Generation]]:
        out: list[list[Generation] | None] = [None] * len(prompts)
        for i, gens in self.generate_stream(prompts, sampling):
            out[i] = gens
        return out  # type: ignore[return-value]
