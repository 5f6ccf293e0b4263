"""LaMP-QA scoring: per question sum(aspect scores) / (2 x #aspects); per domain the mean; the
headline is the macro mean over domains. Bootstrap CIs and paired tests resample questions."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

# (domain, record id) -> score in [0, 1]
QuestionScores = dict[tuple[str, str], float]


def question_score(aspect_scores: list[float]) -> float:
    """One answer's score: the sum of its aspect scores (0..2 each) over 2 x #aspects."""
    if not aspect_scores:
        raise ValueError("an answer with no judged rubric aspect has no score")
    # fsum: exactly rounded, so the score does not depend on the order the rows arrive in.
    return math.fsum(aspect_scores) / (2 * len(aspect_scores))


def question_scores(aspect_rows: list[dict[str, Any]]) -> QuestionScores:
    """aspect_rows: dicts with domain, id, aspect_index, score (0..2)."""
    by_q: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in aspect_rows:
        by_q[(r["domain"], r["id"])].append(float(r["score"]))
    return {k: question_score(v) for k, v in by_q.items()}


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


def _t(diff: float, var_of_mean: float, df: float) -> dict[str, Any]:
    """Two-sided t-test of a mean difference, given its squared standard error and df."""
    from scipy import stats

    if var_of_mean <= 1e-18:  # every question moved by the same amount: no spread to test against
        return {"t": None, "df": df, "p_value": 1.0 if diff == 0 else 0.0}
    t = diff / math.sqrt(var_of_mean)
    return {"t": round(t, 4), "df": round(df, 2), "p_value": round(float(2 * stats.t.sf(abs(t), df)), 4)}


def paired_t_test(a: QuestionScores, b: QuestionScores) -> dict[str, Any]:
    """Paired t-test of a - b on the questions both scored, per domain and for the macro score.

    Per domain: the usual paired t-test (scipy.stats.ttest_rel) on per-question scores. Macro: the
    macro difference (mean over D domains of per-domain mean differences) over its standard error
    sqrt(sum_d s_d^2 / n_d) / D, with Welch-Satterthwaite degrees of freedom; the domains are
    independent strata, and with one domain this is the ordinary paired t-test. A domain with
    fewer than 2 questions gets p None (and so does the macro)."""
    keys = sorted(set(a) & set(b))
    doms = sorted({d for d, _ in keys})
    diffs = {d: np.array([a[k] - b[k] for k in keys if k[0] == d]) for d in doms}
    out: dict[str, Any] = {"domains": {}, "macro": None}
    for d, v in diffs.items():
        row = {"n": len(v), "diff": round(float(v.mean()), 4)}
        row.update(_t(float(v.mean()), float(v.var(ddof=1)) / len(v), len(v) - 1) if len(v) > 1
                   else {"t": None, "df": None, "p_value": None})
        out["domains"][d] = row
    if doms:
        macro = float(np.mean([v.mean() for v in diffs.values()]))
        if all(len(v) > 1 for v in diffs.values()):
            se2 = {d: float(v.var(ddof=1)) / len(v) for d, v in diffs.items()}
            total = sum(se2.values())
            denom = sum(se2[d] ** 2 / (len(v) - 1) for d, v in diffs.items())
            df = total ** 2 / denom if denom > 0 else float(sum(len(v) - 1 for v in diffs.values()))
            out["macro"] = {"diff": round(macro, 4), **_t(macro, total / len(doms) ** 2, df)}
        else:
            out["macro"] = {"diff": round(macro, 4), "t": None, "df": None, "p_value": None}
    return out


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family of p-values (None = not tested, left out of the
    count). Controls the family-wise error rate without assuming independence."""
    idx = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: (p_values[i], i))
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * p_values[i]))  # monotone in the p order
        out[i] = round(running, 4)
    return out
