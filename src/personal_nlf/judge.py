"""The rubric judge: one call per (question, aspect), score in {0, 1, 2}.

- generate: the reference protocol. The judge writes JSON {"match_score": n}; unparseable output
  is retried at the next (higher) temperature; what still fails is scored 0 *and counted by
  reason* in the metrics, never silently.
- logprob: expected score from the judge's next-token probabilities of "0", "1", "2" right after
  '{"match_score": ' in the assistant turn. One forward pass per aspect, cannot fail to parse.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics, prompts
from .config import JudgeConfig, Params, RoleConfig
from .io import Journal, stable_hash, write_jsonl_atomic
from .llm import sampling_for, submission_size
from .llm.base import Backend
from .llm.hf import expected_score

log = logging.getLogger("personal_nlf")


@dataclass(frozen=True)
class JudgeItem:
    key: str  # unique: record key + candidate + aspect index
    question: str
    narrative: str
    aspect: str
    reason: str
    evidence: str
    response: str
    check: dict | None = None  # a machine check (verifier.CHECK_TYPES); the verifier method scores it

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
        results = _score_chunk(chunk, backend, cfg, role, seed)
        for it, res in zip(chunk, results):
            journal.add(it.key, res)
    return {it.key: journal.done[it.key] for it in items}


def score_items(items: list[JudgeItem], backend: Backend, cfg: JudgeConfig, role: RoleConfig, seed: int = 0,
                chunk_size: int = 32) -> list[dict[str, Any]]:
    """Score items without a journal (GRPO rewards: a resumed training run restarts its step)."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(items), chunk_size):
        chunk = items[start:start + chunk_size]
        out.extend(_score_chunk(chunk, backend, cfg, role, seed))
    return out


@dataclass(frozen=True)
class Answer:
    """One answer to judge on its record's rubric. `aspects` are data.Aspect objects or dicts with
    aspect/reason/evidence; `meta` (domain, id, ...) goes into every per-aspect row."""
    key: str  # unique among the answers judged together (record key, plus candidate if several)
    question: str
    narrative: str
    aspects: tuple | list
    response: str
    meta: dict = field(default_factory=dict)


def _aspect_fields(a) -> tuple[str, str, str]:
    if isinstance(a, dict):
        return a["aspect"], a.get("reason", ""), a.get("evidence", "")
    return a.aspect, a.reason, a.evidence


def judge_answers(answers: list[Answer], backend: Backend, params: Params, journal_path: str | Path | None = None,
                  out_path: str | Path | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The one judging path (evaluation, both loops' judge steps, the GRPO judge reward, `apply`).

    Scores every (answer, rubric aspect) pair 0/1/2 with `params.judge`'s method. With
    journal_path, each score is journaled as it is made, so a killed stage resumes; without one
    (GRPO rewards: a resumed training run restarts its step) nothing is kept. Writes the
    per-aspect rows to out_path when given. Returns the rows and each answer's score,
    metrics.question_score of its aspects."""
    items, owner = [], []
    for ans in answers:
        for a_idx, a in enumerate(ans.aspects):
            aspect, reason, evidence = _aspect_fields(a)
            items.append(JudgeItem(f"{ans.key}#{a_idx}", ans.question, ans.narrative, aspect, reason, evidence,
                                   ans.response, _aspect_check(a)))
            owner.append((ans, a_idx, aspect))
    cfg, role = params.judge, params.models.judge
    chunk = max(16, submission_size(role))  # hf: short prompts, >=16 a chunk; vllm: thousands; openai: a full pool
    journal = None
    if journal_path is None:
        scored = dict(zip([it.key for it in items], score_items(items, backend, cfg, role, params.seed, chunk)))
    else:
        fp = stable_hash({**fingerprint_fields(cfg, role, backend), "items": [[it.messages(), it.check] for it in items]})
        journal = Journal(journal_path, fp, log=log.info)
        scored = judge_items(items, backend, cfg, role, journal, seed=params.seed, chunk_size=chunk)
    rows = [{**ans.meta, "aspect_index": a_idx, "aspect": aspect, "judge_method": cfg.method, **scored[it.key]}
            for it, (ans, a_idx, aspect) in zip(items, owner)]
    if out_path is not None:
        write_jsonl_atomic(out_path, rows)
    if journal is not None:
        journal.close(remove=True)
    per_answer: dict[str, list[float]] = {}
    for it, (ans, _, _) in zip(items, owner):
        per_answer.setdefault(ans.key, []).append(scored[it.key]["score"])
    return rows, {ans.key: metrics.question_score(per_answer.get(ans.key, [])) for ans in answers}


def _aspect_check(a) -> dict | None:
    """The aspect's machine check (data.Aspect.check or a dict's "check"), or None."""
    return a.get("check") if isinstance(a, dict) else getattr(a, "check", None)


def _score_chunk(chunk: list[JudgeItem], backend: Backend, cfg: JudgeConfig, role: RoleConfig,
                 seed: int) -> list[dict[str, Any]]:
    if cfg.method == "verifier":
        return _verifier(chunk, backend, cfg, role, seed)
    return _logprob(chunk, backend) if cfg.method == "logprob" else _generate(chunk, backend, cfg, role, seed)


def _verifier(chunk: list[JudgeItem], backend: Backend, cfg: JudgeConfig, role: RoleConfig,
              seed: int) -> list[dict[str, Any]]:
    """Aspects with a check: scored by personal_nlf.verifier (outcome "verified", no model call).
    The rest: cfg.fallback_method's LLM judge, with that method's outcomes (so outcome_counts
    says how many aspects each way scored)."""
    from . import verifier

    results: list[dict[str, Any] | None] = [None] * len(chunk)
    rest = []
    for i, it in enumerate(chunk):
        if it.check:
            results[i] = verifier.score(it.check, it.response)
        else:
            rest.append(i)
    if rest:
        todo = [chunk[i] for i in rest]
        llm = _logprob(todo, backend) if cfg.fallback_method == "logprob" else _generate(todo, backend, cfg, role, seed)
        for i, r in zip(rest, llm):
            results[i] = r
    return results


def _logprob(chunk: list[JudgeItem], backend: Backend) -> list[dict[str, Any]]:
    from .llm.hf import label_mass

    lps = backend.choice_logprobs([it.messages() for it in chunk], prompts.JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
    # "probs" holds the raw log-probs; label_mass is how much probability the judge put on any
    # label before the score renormalized over them (see label_mass_summary).
    return [{"score": expected_score(lp), "outcome": "logprob", "attempts": 1,
             "probs": {c: round(v, 6) for c, v in lp.items()}, "label_mass": round(label_mass(lp), 6)}
            for lp in lps]


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


# A judge whose mean probability on the labels is below one half more often wants to write
# something other than 0/1/2 than a label: its renormalized expected score then says more about
# the renormalization than about the answer, so the report flags it as "not answering".
LABEL_MASS_THRESHOLD = 0.5


def label_mass_summary(rows: list[dict[str, Any]], threshold: float = LABEL_MASS_THRESHOLD) -> dict[str, Any] | None:
    """Probability mass the logprob judge put on the labels, over the per-aspect rows: mean, min,
    share of aspects below `threshold`. None when no row comes from the logprob method. Rows
    written before label_mass was stored get it from their raw log-probs ("probs")."""
    from .llm.hf import label_mass

    masses = [float(r["label_mass"]) if "label_mass" in r else label_mass(r["probs"])
              for r in rows if r.get("outcome") == "logprob"]
    if not masses:
        return None
    return {"mean": round(sum(masses) / len(masses), 4), "min": round(min(masses), 4),
            "share_below_threshold": round(sum(m < threshold for m in masses) / len(masses), 4),
            "threshold": threshold, "n": len(masses)}
