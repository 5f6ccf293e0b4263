"""The results table: methods x domains + macro + cost, paired significance tests, and the seed
paper's numbers beside ours for orientation (their models, not ours)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import metrics
from .config import DOMAINS
from .io import read_jsonl

# Seed paper, Table 2 (Qwen2.5-7B policy, Qwen2.5-32B judge, LaMP-QA test): macro and s/query.
REFERENCE = {
    "no_pers": (0.416, 0.78), "rag": (0.428, 1.71), "planpers": (0.453, 3.12),
    "offline_rl": (0.442, 1.67), "vac": (0.469, 1.63),
}
SHORT = {"Art_and_Entertainment": "A&E", "Lifestyle_and_Personal_Development": "Lifestyle",
         "Society_and_Culture": "Society"}


def load_rows(spec: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """spec: row name -> (metrics json, judge_scores.jsonl)."""
    rows = {}
    for name, (mpath, jpath) in spec.items():
        m = json.loads(Path(mpath).read_text())
        rows[name] = {"metrics": m, "questions": metrics.question_scores(read_jsonl(jpath))}
    return rows


def build(rows: dict[str, dict[str, Any]], seed: int = 0, reference_key: dict[str, str] | None = None) -> dict[str, Any]:
    reference_key = reference_key or {}
    domains = [d for d in DOMAINS if any(d in r["metrics"]["domains"] for r in rows.values())]
    baselines = [n for n in rows if n in ("no_pers", "rag", "rag_random", "planpers")]
    best = max(baselines or list(rows), key=lambda n: rows[n]["metrics"]["macro"])
    table = []
    for name, r in rows.items():
        m = r["metrics"]
        ref = REFERENCE.get(reference_key.get(name, name))
        table.append({
            "method": name,
            "domains": {d: m["domains"].get(d, {}).get("score") for d in domains},
            "macro": m["macro"], "macro_ci95": m["macro_ci95"], "n": m["n"],
            "s_per_query": m["s_per_query"], "prompt_tokens_per_query": m["prompt_tokens_per_query"],
            "judge_failures": m.get("judge_failures", 0),
            # Summary mode: RAG (k retrieved items) prompt tokens / summary prompt tokens.
            "context_reduction_ratio": m.get("context_reduction_ratio"),
            "answer_json_rate": round(sum(v for k, v in m.get("answer_parse", {}).items() if k.startswith("json"))
                                      / max(1, m["n"]), 3),
            "paper_macro": ref[0] if ref else None, "paper_s_per_query": ref[1] if ref else None,
        })
    tests = []
    for name in rows:
        if name != best:
            t = metrics.paired_test(rows[name]["questions"], rows[best]["questions"], seed=seed)
            tests.append({"a": name, "b": best, **t})
    if "rag" in rows and "no_pers" in rows and best not in ("rag", "no_pers"):
        tests.append({"a": "rag", "b": "no_pers", **metrics.paired_test(rows["rag"]["questions"],
                                                                        rows["no_pers"]["questions"], seed=seed)})
    return {"domains": domains, "best_baseline": best, "table": table, "paired_tests": tests}


def _f(v, nd=3):
    return "—" if v is None else f"{v:.{nd}f}"


def to_markdown(rep: dict[str, Any], title_note: str = "") -> str:
    doms = rep["domains"]
    head = ["method"] + [SHORT.get(d, d) for d in doms] + ["macro", "95% CI", "n", "s/query", "prompt tok/q",
                                                           "ctx reduction", "judge fails", "JSON answers", "paper macro", "paper s/q"]
    lines = ["# Results", "", title_note, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["table"]:
        cells = [r["method"]] + [_f(r["domains"][d]) for d in doms] + [
            _f(r["macro"]), f"[{_f(r['macro_ci95'][0])}, {_f(r['macro_ci95'][1])}]", str(r["n"]),
            _f(r["s_per_query"], 2), _f(r["prompt_tokens_per_query"], 0),
            "—" if r.get("context_reduction_ratio") is None else f"{r['context_reduction_ratio']:.2f}×",
            str(r["judge_failures"]),
            f"{100 * r['answer_json_rate']:.0f}%", _f(r["paper_macro"]), _f(r["paper_s_per_query"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "*paper macro / paper s/q*: the seed paper's Table 2 (Qwen2.5-7B policy, Qwen2.5-32B judge, real "
              "LaMP-QA test set, GPU). Shown for orientation only: different models, data and hardware.", "",
              f"## Paired tests (sign-flip permutation on per-question scores, vs best baseline `{rep['best_baseline']}`)",
              "", "| A | B | n | macro(A) − macro(B) | p |", "|---|---|---|---|---|"]
    for t in rep["paired_tests"]:
        lines.append(f"| {t['a']} | {t['b']} | {t['n']} | {_f(t['diff'], 4)} | {_f(t['p_value'], 4)} |")
    return "\n".join(lines) + "\n"


def transfer_markdown(transfer: dict[str, Any]) -> str:
    """The transfer table: exported summaries on generators never trained with them."""
    gens = transfer.get("generators") or {}
    if not gens:
        return ""
    lines = ["", f"## Transfer: exported summaries on other generators ({transfer.get('split', 'test')} split)", "",
             "Each generator answers with the user's summary as its only personal context, without any, and with "
             "RAG; same judge as above.", "",
             "| generator | model | with summary | without (no_pers) | RAG | summary − no_pers | "
             "prompt tok/q summary | prompt tok/q RAG | ctx reduction |", "|---|---|---|---|---|---|---|---|---|"]
    for name, g in gens.items():
        lines.append(f"| {name} | `{g['model']}` ({g['backend']}) | {_f(g['summary']['macro'])} | "
                     f"{_f(g['no_pers']['macro'])} | {_f(g['rag']['macro'])} | "
                     f"{g['summary']['macro'] - g['no_pers']['macro']:+.3f} | "
                     f"{_f(g['summary']['prompt_tokens_per_query'], 0)} | {_f(g['rag']['prompt_tokens_per_query'], 0)} | "
                     f"{g['context_reduction_ratio']:.2f}× |")
    return "\n".join(lines) + "\n"


def domain_plot_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows for the DVC bar plot of per-domain scores per method."""
    return [{"method": r["method"], "domain": SHORT.get(d, d), "score": r["domains"][d]}
            for r in rep["table"] for d in rep["domains"] if r["domains"][d] is not None]
