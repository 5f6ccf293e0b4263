"""The rubric judge: one call per (question, aspect), score in {0, 1, 2}.

- generate: the reference protocol. The judge writes JSON {"match_score": n}; unparseable output
  is retried at the next (higher) temperature; what still fails is scored 0 *and counted by
  reason* in the metrics, never silently.
- logprob: expected score from the judge's next-token probabilities of "0", "1", "2" right after
  '{"match_score": ' in the assistant turn. One forward pass per aspect, cannot fail to parse.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import prompts
from .config import JudgeConfig, RoleConfig
from .io import Journal
from .llm import sampling_for
from .llm.base import Backend
from .llm.hf import expected_score


@dataclass(frozen=True)
class JudgeItem:
    key: str  # unique: record key + candidate + aspect index
    question: str
    narrative: str
    aspect: str
    reason: str
    evidence: str
    response: str

    def messages(self):
        return prompts.judge(self.question, self.narrative, self.aspect, self.reason, self.evidence, self.response)


def fingerprint_fields(cfg: JudgeConfig, role: RoleConfig, backend: Backend) -> dict[str, Any]:
    return {"judge": cfg.model_dump(), "role": role.model_dump(), "backend": backend.describe(),
            "template": prompts.template_hash("judge")}


def judge_items(items: list[JudgeItem], backend: Backend, cfg: JudgeConfig, role: RoleConfig, journal: Journal,
                seed: int = 0, chunk_size: int = 32) -> dict[str, dict[str, Any]]:
    """Score every item not yet in the journal; returns key -> {score, outcome, attempts, ...}."""
    todo = [it for it in items if it.key not in journal]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        results = _logprob(chunk, backend) if cfg.method == "logprob" else _generate(chunk, backend, cfg, role, seed)
        for it, res in zip(chunk, results):
            journal.add(it.key, res)
    return {it.key: journal.done[it.key] for it in items}


def score_items(items: list[JudgeItem], backend: Backend, cfg: JudgeConfig, role: RoleConfig, seed: int = 0,
                chunk_size: int = 32) -> list[dict[str, Any]]:
    """Score items without a journal (GRPO rewards: a resumed training run restarts its step)."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(items), chunk_size):
        chunk = items[start:start + chunk_size]
        out.extend(_logprob(chunk, backend) if cfg.method == "logprob" else _generate(chunk, backend, cfg, role, seed))
    return out


def _logprob(chunk: list[JudgeItem], backend: Backend) -> list[dict[str, Any]]:
    lps = backend.choice_logprobs([it.messages() for it in chunk], prompts.JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
    return [{"score": expected_score(lp), "outcome": "logprob", "attempts": 1,
             "probs": {c: round(v, 6) for c, v in lp.items()}} for lp in lps]


def _generate(chunk: list[JudgeItem], backend: Backend, cfg: JudgeConfig, role: RoleConfig, seed: int):
    results: list[dict[str, Any] | None] = [None] * len(chunk)
    history: list[list[str]] = [[] for _ in chunk]
    pending = list(range(len(chunk)))
    for attempt, temp in enumerate(cfg.retry_temperatures, 1):
        if not pending:
            break
        sampling = sampling_for(role, seed=seed + attempt, temperature=temp)
        gens = backend.generate([chunk[i].messages() for i in pending], sampling)
        still = []
        for i, g in zip(pending, gens):
            score, outcome = prompts.parse_judge(g[0].text)
            history[i].append(outcome)
            if score is None:
                still.append(i)
            else:
                results[i] = {"score": float(score), "outcome": outcome, "attempts": attempt, "raw": g[0].text[:500],
                              "failed_attempts": history[i][:-1]}
        pending = still
    for i in pending:
        # Counted by its last failure reason and scored 0: reported in metrics as judge failures.
        results[i] = {"score": 0.0, "outcome": f"failed:{history[i][-1]}", "attempts": len(history[i]),
                      "raw": None, "failed_attempts": history[i]}
    return results


def outcome_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many aspects ended in each outcome (ok, ok_with_prose, logprob, failed:<reason>)."""
    return dict(sorted(Counter(r["outcome"] for r in results).items()))
