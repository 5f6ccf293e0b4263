"""GRPO rewards for the summarizer (summary mode). TRL's GRPOTrainer calls a reward with
`prompts`, `completions`, `completion_ids` and every dataset column as keyword arguments, one
entry per sampled summary; it returns one float per summary.

- JudgeReward: the generator answers the record's question given the summary; the judge scores
  the answer on the record's rubric (the judge sees narrative and rubric; the summarizer and the
  generator never do). reward = score / 2 averaged over aspects, in [0, 1], minus the length cost.
- PreferenceReward (POPI): no judge call. margin = how much the summary raises the generator's
  log-likelihood of the preferred over the dispreferred answer, relative to no summary:
      margin = [ll(y+ | x, s) - ll(y- | x, s)] - [ll(y+ | x, -) - ll(y- | x, -)]
  reward = log sigmoid(beta * margin) minus the length cost. A summary that tells the generator
  nothing has margin 0 (reward -log 2).

Both charge `length_cost * (tokens - budget) / budget` for tokens above the summary budget.
Failures are counted, never hidden: an empty summary is answered as "(no summary available)" and
scored like any other; judge outputs that fail to parse score 0 and are counted by reason.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from .summaries import scrub


def length_penalty(n_tokens: int, budget: int, cost: float) -> float:
    return cost * max(0, n_tokens - budget) / budget


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion or "")


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


class _SummaryReward:
    __name__ = "summary_reward"  # TRL names the reward's metrics after it

    def __init__(self, budget: int, length_cost: float, count_tokens: Callable[[str], int] | None = None):
        self.budget, self.length_cost, self.count_tokens = budget, length_cost, count_tokens
        self.counts: Counter = Counter()
        self.history: list[dict[str, float]] = []  # one entry per call: the curve the stage writes

    def _prepare(self, completions, completion_ids, profile) -> tuple[list[str], list[int], list[float]]:
        summaries, tokens, penalties = [], [], []
        for i, c in enumerate(completions):
            raw = completion_text(c)
            n = len(completion_ids[i]) if completion_ids is not None else self.count_tokens(raw)
            text, spans = scrub(raw.strip(), json.loads(profile[i]) if profile is not None else [])
            self.counts["summaries"] += 1
            self.counts["empty_summary"] += not text.strip()
            self.counts["scrubbed_spans"] += spans
            self.counts["over_budget"] += n > self.budget
            summaries.append(text)
            tokens.append(n)
            penalties.append(length_penalty(n, self.budget, self.length_cost))
        return summaries, tokens, penalties

    def _log(self, log_metric, rewards: list[float], base: list[float], penalties: list[float], tokens: list[int],
             base_name: str) -> None:
        k = len(rewards)
        entry = {"reward": sum(rewards) / k, base_name: sum(base) / k, "length_penalty": sum(penalties) / k,
                 "summary_tokens": sum(tokens) / k}
        self.history.append(entry)
        if log_metric is not None:
            for name, v in entry.items():
                if name != "reward":
                    log_metric(f"summary/{name}", v)


class JudgeReward(_SummaryReward):
    __name__ = "judge_reward"

    def __init__(self, answer_fn: Callable[[list[tuple[str, str]]], list[str]],
                 judge_fn: Callable[[list[tuple[str, str, list[dict], str]]], list[tuple[float, list[str]]]],
                 budget: int, length_cost: float, count_tokens: Callable[[str], int] | None = None):
        """answer_fn: [(question, summary)] -> answers. judge_fn: [(question, narrative, rubric
        aspects, answer)] -> [(score in [0, 1], per-aspect outcomes)]."""
        super().__init__(budget, length_cost, count_tokens)
        self.answer_fn, self.judge_fn = answer_fn, judge_fn

    def __call__(self, prompts=None, completions=None, completion_ids=None, question=None, narrative=None,
                 rubric=None, profile=None, log_metric=None, **_: Any) -> list[float]:
        summaries, tokens, penalties = self._prepare(completions, completion_ids, profile)
        answers = self.answer_fn(list(zip(question, summaries)))
        self.counts["empty_answer"] += sum(1 for a in answers if not a.strip())
        judged = self.judge_fn([(q, n, json.loads(r), a) for q, n, r, a in zip(question, narrative, rubric, answers)])
        scores = []
        for score, outcomes in judged:
            self.counts.update(f"judge:{o}" for o in outcomes)
            scores.append(score)
        rewards = [s - p for s, p in zip(scores, penalties)]
        self._log(log_metric, rewards, scores, penalties, tokens, "judge_score")
        return rewards


class PreferenceReward(_SummaryReward):
    __name__ = "preference_reward"

    def __init__(self, loglik_fn: Callable[[list[tuple[str, str | None, str]]], list[float]], beta: float,
                 budget: int, length_cost: float, count_tokens: Callable[[str], int] | None = None):
        """loglik_fn: [(question, summary or None for no summary, answer)] -> the generator's
        log-likelihood of the answer (summed over its tokens)."""
        super().__init__(budget, length_cost, count_tokens)
        self.loglik_fn, self.beta = loglik_fn, beta
        self._reference: dict[tuple[str, str, str], float] = {}  # no-summary margins, per pair

    def reference_margin(self, question: str, preferred: str, dispreferred: str) -> float:
        k = (question, preferred, dispreferred)
        if k not in self._reference:
            lp, ld = self.loglik_fn([(question, None, preferred), (question, None, dispreferred)])
            self._reference[k] = lp - ld
        return self._reference[k]

    def __call__(self, prompts=None, completions=None, completion_ids=None, question=None, preferred=None,
                 dispreferred=None, profile=None, log_metric=None, **_: Any) -> list[float]:
        summaries, tokens, penalties = self._prepare(completions, completion_ids, profile)
        queries = []
        for q, s, p, d in zip(question, summaries, preferred, dispreferred):
            queries += [(q, s, p), (q, s, d)]
        ll = self.loglik_fn(queries)
        margins = [ll[2 * i] - ll[2 * i + 1] - self.reference_margin(q, p, d)
                   for i, (q, p, d) in enumerate(zip(question, preferred, dispreferred))]
        base = [log_sigmoid(self.beta * m) for m in margins]
        rewards = [b - p for b, p in zip(base, penalties)]
        self._log(log_metric, rewards, margins, penalties, tokens, "margin")
        return rewards


def record_pairs(value: Any) -> list[tuple[str, str]]:
    """The dataset column `pairs`: JSON text of [[chosen, rejected], ...] (the user's own pairs)."""
    pairs = json.loads(value) if isinstance(value, str) else value
    return [(c, r) for c, r in pairs]


class PopiReward(PreferenceReward):
    """POPI's objective on the user's own preference pairs, a frozen generator pi and the same
    generator without the summary as the reference:
        reward = log sigmoid(beta * [(log pi(c | s, q) - log pi_ref(c | q)) - (log pi(r | s, q) - log pi_ref(r | q))])
    (minus the DPO loss), averaged over the record's pairs, minus the length cost. loglik_fn(
    (question, None, answer)) is the reference side: the question alone. An empty summary is
    scored as no summary (margin 0, reward -log 2)."""

    __name__ = "popi_reward"

    def __call__(self, prompts=None, completions=None, completion_ids=None, question=None, pairs=None,
                 profile=None, log_metric=None, **_: Any) -> list[float]:
        summaries, tokens, penalties = self._prepare(completions, completion_ids, profile)
        per = [record_pairs(p) for p in pairs]
        queries = []
        for q, s, ps in zip(question, summaries, per):
            for c, r in ps:
                queries += [(q, s if s.strip() else None, c), (q, s if s.strip() else None, r)]
        ll = iter(self.loglik_fn(queries)) if queries else iter(())
        base, margins = [], []
        for q, ps in zip(question, per):
            ms = [next(ll) - next(ll) - self.reference_margin(q, c, r) for c, r in ps]
            self.counts["pairs_scored"] += len(ms)
            margins.append(sum(ms) / len(ms))
            base.append(sum(log_sigmoid(self.beta * m) for m in ms) / len(ms))
        rewards = [b - p for b, p in zip(base, penalties)]
        self._log(log_metric, rewards, margins, penalties, tokens, "margin")
        return rewards


class PlusReward(_SummaryReward):
    """PLUS: a summary-conditioned reward model R scores the user's chosen and rejected responses
    given the sampled summary z; reward = log sigmoid(R(c | z, q) - R(r | z, q)), averaged over the
    record's pairs, minus the length cost."""

    __name__ = "plus_reward"

    def __init__(self, score_fn: Callable[[list[tuple[str, str, str]]], list[float]], budget: int,
                 length_cost: float, count_tokens: Callable[[str], int] | None = None):
        """score_fn: [(question, summary, response)] -> R."""
        super().__init__(budget, length_cost, count_tokens)
        self.score_fn = score_fn

    def __call__(self, prompts=None, completions=None, completion_ids=None, question=None, pairs=None,
                 profile=None, log_metric=None, **_: Any) -> list[float]:
        summaries, tokens, penalties = self._prepare(completions, completion_ids, profile)
        per = [record_pairs(p) for p in pairs]
        items = [it for q, s, ps in zip(question, summaries, per) for c, r in ps for it in ((q, s, c), (q, s, r))]
        sc = iter(self.score_fn(items)) if items else iter(())
        base, margins = [], []
        for ps in per:
            ms = [next(sc) - next(sc) for _ in ps]
            self.counts["pairs_scored"] += len(ms)
            margins.append(sum(ms) / len(ms))
            base.append(sum(log_sigmoid(m) for m in ms) / len(ms))
        rewards = [b - p for b, p in zip(base, penalties)]
        self._log(log_metric, rewards, margins, penalties, tokens, "rm_margin")
        return rewards
