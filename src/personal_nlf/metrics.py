"""LaMP-QA scoring: per question sum(aspect scores) / (2 x #aspects); per domain the mean; the
headline is the macro mean over domains. Bootstrap CIs and paired tests resample questions."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

# (domain, record id) -> score in [0, 1]
QuestionScores = dict[tuple[str, str], float]


def question_scores(aspect_rows: list[dict[str, Any]]) -> QuestionScores:
    """aspect_rows: dicts with domain, id, aspect_index, score (0..2)."""
    by_q: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in aspect_rows:
        by_q[(r["domain"], r["id"])].append(float(r["score"]))
    return {k: sum(v) / (2 * len(v)) for k, v in by_q.items()}


def _by_domain(qs: QuestionScores) -> dict[str, np.ndarray]:
    d: dict[str, list[float]] = defaultdict(list)
    for (dom, _), s in sorted(qs.items()):
        d[dom].append(s)
    return {k: np.asarray(v) for k, v in d.items()}


def summarize(qs: QuestionScores, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-domain score and n, macro score, and 95% bootstrap CIs (questions resampled within
    each domain, the macro recomputed per replicate)."""
    doms = _by_domain(qs)
    if not doms:
        raise ValueError("no scored questions")
    rng = np.random.default_rng(seed)
    boots = {d: np.array([rng.choice(v, size=len(v)).mean() for _ in range(n_boot)]) for d, v in doms.items()}
    macro_boot = np.mean(np.stack(list(boots.values())), axis=0)
    out: dict[str, Any] = {"domains": {}}
    for d, v in doms.items():
        lo, hi = np.percentile(boots[d], [2.5, 97.5])
        out["domains"][d] = {"score": round(float(v.mean()), 4), "n": int(len(v)),
                             "ci95": [round(float(lo), 4), round(float(hi), 4)]}
    lo, hi = np.percentile(macro_boot, [2.5, 97.5])
    out["macro"] = round(float(np.mean([v.mean() for v in doms.values()])), 4)
    out["macro_ci95"] = [round(float(lo), 4), round(float(hi), 4)]
    out["n"] = int(sum(len(v) for v in doms.values()))
    return out


def paired_test(a: QuestionScores, b: QuestionScores, n_perm: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Paired sign-flip permutation test of macro(a) - macro(b) on the questions both scored.
    Two-sided p-value; the statistic is the macro mean of per-domain mean differences."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return {"n": 0, "diff": None, "p_value": None}
    doms = sorted({d for d, _ in keys})
    diffs = {d: np.array([a[k] - b[k] for k in keys if k[0] == d]) for d in doms}
    observed = float(np.mean([v.mean() for v in diffs.values()]))
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_perm)
    for d, v in diffs.items():
        signs = rng.choice([-1.0, 1.0], size=(n_perm, len(v)))
        stats += (signs * v).mean(axis=1)
    stats /= len(doms)
    p = float((np.sum(np.abs(stats) >= abs(observed) - 1e-12) + 1) / (n_perm + 1))
    return {"n": len(keys), "diff": round(observed, 4), "p_value": round(p, 4)}
