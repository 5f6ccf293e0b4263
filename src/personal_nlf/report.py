"""The results table: methods x domains + macro + cost, paired significance tests, and the seed
paper's numbers beside ours for orientation (their models, not ours)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import metrics, provenance
from .config import DOMAINS
from .io import read_jsonl

# Seed paper, Table 2 (Qwen2.5-7B policy, Qwen2.5-32B judge, LaMP-QA test): macro and s/query.
# RAG-random has no entry: its figures were not available from any source at hand (DESIGN.md
# lists only these five), and a reference number is never typed in unchecked.
REFERENCE = {
    "no_pers": (0.416, 0.78), "rag": (0.428, 1.71), "planpers": (0.453, 3.12),
    "offline_rl": (0.442, 1.67), "vac": (0.469, 1.63),
}
# The best-baseline pool, by the paper's method name (a row's reference key, else its own name):
# Table 2 compares VAC with the best of these, offline RL included. Only a loop's final iteration
# carries the "offline_rl" key, so intermediate offline-RL iterations are not in the pool.
BASELINES = ("no_pers", "rag", "rag_random", "planpers", "offline_rl")
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
    baselines = [n for n in rows if reference_key.get(n, n) in BASELINES]
    best = max(baselines or list(rows), key=lambda n: rows[n]["metrics"]["macro"])
    table = []
    for name, r in rows.items():
        m = r["metrics"]
        ref = REFERENCE.get(reference_key.get(name, name))
        table.append({
            "method": name,
            "domains": {d: m["domains"].get(d, {}).get("score") for d in domains},
            "macro": m["macro"], "macro_ci95": m["macro_ci95"], "n": m["n"],
            "prompt_tokens_per_query": m["prompt_tokens_per_query"],
            "judge_failures": m.get("judge_failures", 0),
            # Logprob judge: probability mass on the labels (judge.label_mass_summary); None otherwise.
            "judge_label_mass": m.get("judge_label_mass"),
            "judge_not_answering": _not_answering(m.get("judge_label_mass")),
            # Summary mode: RAG (k retrieved items) prompt tokens / summary prompt tokens.
            "context_reduction_ratio": m.get("context_reduction_ratio"),
            "answer_json_rate": round(sum(v for k, v in m.get("answer_parse", {}).items() if k.startswith("json"))
                                      / max(1, m["n"]), 3),
            "paper_macro": ref[0] if ref else None, "paper_s_per_query": ref[1] if ref else None,
        })
    pairs = [(name, best) for name in rows if name != best]
    if "rag" in rows and "no_pers" in rows and best not in ("rag", "no_pers"):
        pairs.append(("rag", "no_pers"))
    # A trained loop against its untrained start: iteration 0's policy answering with the RAG
    # prompt is exactly the rag baseline (same model, greedy).
    if "rag" in rows and best != "rag":
        pairs += [(name, "rag") for name in rows if "@" in name and not name.startswith("summary@")]
    tests = []
    for a, b in pairs:
        qa, qb = rows[a]["questions"], rows[b]["questions"]
        tests.append({"a": a, "b": b, **metrics.paired_test(qa, qb, seed=seed), "t_test": metrics.paired_t_test(qa, qb)})
    _holm(tests)
    return {"domains": domains, "best_baseline": best, "table": table, "paired_tests": tests,
            "pairwise": pairwise_rows(rows, seed)}


def pairwise_rows(rows: dict[str, dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Pairwise preference accuracy of each row that measured it (data with preference pairs):
    under the row's own prompt and under no personalization, same generator, paired over users;
    p-values Holm-adjusted over these comparisons."""
    out = []
    for name, r in rows.items():
        pa = r["metrics"].get("pairwise_accuracy")
        if not pa:
            continue
        cond = pa["condition"]
        own, none = pa["conditions"].get(cond), pa["conditions"].get("none")
        test = (pa.get("paired_vs_none") or {}).get(cond)
        out.append({"method": name, "condition": cond, "accuracy": own["accuracy"], "ci95": own["ci95"],
                    "n_pairs": own["n_pairs"], "none_accuracy": none["accuracy"] if none else None,
                    "diff": test["diff"] if test else None, "p_value": test["p_value"] if test else None})
    for row, adj in zip(out, metrics.holm([r["p_value"] for r in out])):
        row["p_value_holm"] = adj
    return out


def _not_answering(lm: dict[str, Any] | None) -> bool:
    return lm is not None and lm["mean"] < lm["threshold"]


def _holm(tests: list[dict[str, Any]]) -> None:
    """Holm-adjust each kind of p-value over all comparisons of this report (one family per
    column: permutation macro, t-test macro, t-test per domain), in place as p_value_holm."""
    domains = sorted({d for t in tests for d in t["t_test"]["domains"]})
    families = [tests, [t["t_test"]["macro"] for t in tests]]
    families += [[t["t_test"]["domains"].get(d) for t in tests] for d in domains]
    for cells in families:  # each cell: a dict with p_value, or None where that test did not run
        adjusted = metrics.holm([c["p_value"] if c else None for c in cells])
        for c, adj in zip(cells, adjusted):
            if c:
                c["p_value_holm"] = adj


def _f(v, nd=3):
    return "—" if v is None else f"{v:.{nd}f}"


def to_markdown(rep: dict[str, Any], title_note: str = "") -> str:
    doms = rep["domains"]
    head = ["method"] + [SHORT.get(d, d) for d in doms] + ["macro", "95% CI", "n", "prompt tok/q",
                                                           "ctx reduction", "judge fails", "label mass", "JSON answers", "paper macro",
                                                           "paper s/q"]
    lines = ["# Results", "", title_note, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["table"]:
        cells = [r["method"]] + [_f(r["domains"][d]) for d in doms] + [
            _f(r["macro"]), f"[{_f(r['macro_ci95'][0])}, {_f(r['macro_ci95'][1])}]", str(r["n"]),
            _f(r["prompt_tokens_per_query"], 0),
            "—" if r.get("context_reduction_ratio") is None else f"{r['context_reduction_ratio']:.2f}×",
            str(r["judge_failures"]), _mass(r),
            f"{100 * r['answer_json_rate']:.0f}%", _f(r["paper_macro"]), _f(r["paper_s_per_query"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "*paper macro / paper s/q*: the seed paper's Table 2 (Qwen2.5-7B policy, Qwen2.5-32B judge, real "
              "LaMP-QA test set, GPU). Shown for orientation only: different models, data and hardware. The paper's "
              "RAG-random figures are not shown: no source for them was at hand.", "",
              "*label mass*: mean probability the logprob judge put on the labels 0/1/2 before its score was "
              "renormalized over them (— for the generate judge, or metrics written before it was recorded)."]
    flagged = [r for r in rep["table"] if r.get("judge_not_answering")]
    if flagged:
        lm = flagged[0]["judge_label_mass"]
        names = ", ".join("`" + r["method"] + "`" for r in flagged)
        lines += ["", f"**⚠ Judge not answering** for {names}: its mean "
                  f"probability on the labels is below {lm['threshold']:.2f}: most of its next-token probability "
                  "goes to something other than 0/1/2, and its scores are that small remainder renormalized. " + "; ".join(
                      f"{r['method']}: mean {r['judge_label_mass']['mean']:.3f}, min {r['judge_label_mass']['min']:.3f}, "
                      f"{100 * r['judge_label_mass']['share_below_threshold']:.0f}% of aspects below"
                      for r in flagged) + "."]
    lines += ["", f"## Paired tests (vs best baseline `{rep['best_baseline']}`)", "",
              "Sign-flip permutation test of the macro difference, and paired t-tests per domain and of the macro "
              "difference (domains as strata), on per-question scores. *Holm*: adjusted over all comparisons "
              "in this table, separately for each column. The best baseline is the highest macro among "
              f"{', '.join(BASELINES)} (the final offline-RL iteration), as in the paper's Table 2.", "",
              "| A | B | n | macro(A) − macro(B) | perm. p | perm. p (Holm) | t p | t p (Holm) | per-domain t p, raw (Holm) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in rep["paired_tests"]:
        tt = t.get("t_test") or {}
        macro = tt.get("macro") or {}
        doms = "; ".join(f"{SHORT.get(d, d)} {_f(v.get('p_value'), 4)} ({_f(v.get('p_value_holm'), 4)})"
                         for d, v in (tt.get("domains") or {}).items()) or "—"
        lines.append(f"| {t['a']} | {t['b']} | {t['n']} | {_f(t['diff'], 4)} | {_f(t['p_value'], 4)} | "
                     f"{_f(t.get('p_value_holm'), 4)} | {_f(macro.get('p_value'), 4)} | "
                     f"{_f(macro.get('p_value_holm'), 4)} | {doms} |")
    return "\n".join(lines) + "\n"


def pairwise_markdown(rep: dict[str, Any]) -> str:
    if not rep.get("pairwise"):
        return ""
    lines = ["", "## Pairwise preference accuracy", "",
             "Share of the users' preference pairs where the generator gives the chosen response a higher "
             "log-likelihood than the rejected one (ties 1/2), under the method's prompt and, with the same "
             "generator, under no personalization; paired sign-flip test over users, Holm over this table.", "",
             "| method | prompt | accuracy | 95% CI | pairs | no personalization | diff | p (Holm) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep["pairwise"]:
        lines.append(f"| {r['method']} | {r['condition']} | {_f(r['accuracy'])} | [{_f(r['ci95'][0])}, "
                     f"{_f(r['ci95'][1])}] | {r['n_pairs']} | {_f(r['none_accuracy'])} | {_f(r['diff'])} | "
                     f"{_f(r['p_value'], 4)} ({_f(r.get('p_value_holm'), 4)}) |")
    return "\n".join(lines) + "\n"


def timings_markdown(spec: dict[str, tuple[str, str]]) -> str:
    """Seconds per query of each row, from the run records beside the metrics files (wall-clock
    figures live there, never in a result: see provenance.write_run_record)."""
    lines = ["# Timings", "", "Wall-clock generation time per query (judging not included) of the run that wrote each "
             "row's metrics; machine-dependent, so kept out of the results.", "",
             "| method | s/query | generation s | queries | git revision | finished |", "|---|---|---|---|---|---|"]
    for name, (mpath, _) in spec.items():
        run_path = provenance.run_record_path(mpath)
        t = json.loads(run_path.read_text()) if run_path.exists() else {}
        lines.append(f"| {name} | {_f(t.get('s_per_query'), 2)} | {_f(t.get('generation_seconds'), 1)} | "
                     f"{t.get('queries', '—')} | {str(t.get('git_revision', '—'))[:12]} | {t.get('finished_at', '—')} |")
    return "\n".join(lines) + "\n"


def _mass(r: dict[str, Any]) -> str:
    lm = r.get("judge_label_mass")
    if lm is None:
        return "—"
    return f"{lm['mean']:.2f}" + (" ⚠" if r.get("judge_not_answering") else "")


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
    # Data with preference pairs: does each generator, given the summary, prefer the user's chosen
    # response more often than without it (the summaries' transfer, as POPI reports it)?
    pairwise = pairwise_rows({name: {"metrics": g["summary"]} for name, g in gens.items()})
    if pairwise:
        lines += ["", "Pairwise preference accuracy of each generator with the summary as its prompt, against the "
                  "same generator without personalization (paired sign-flip test over users, Holm over generators):",
                  "", "| generator | with summary | 95% CI | pairs | no personalization | diff | p (Holm) |",
                  "|---|---|---|---|---|---|---|"]
        for r in pairwise:
            lines.append(f"| {r['method']} | {_f(r['accuracy'])} | [{_f(r['ci95'][0])}, {_f(r['ci95'][1])}] | "
                         f"{r['n_pairs']} | {_f(r['none_accuracy'])} | {_f(r['diff'])} | "
                         f"{_f(r['p_value'], 4)} ({_f(r.get('p_value_holm'), 4)}) |")
    return "\n".join(lines) + "\n"


def domain_plot_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows for the DVC bar plot of per-domain scores per method: one bar per (method,
    domain), labelled by both (DVC's bar template stacks rows that share a label)."""
    return [{"bar": f"{r['method']} · {SHORT.get(d, d)}", "method": r["method"], "domain": SHORT.get(d, d),
             "score": r["domains"][d]}
            for r in rep["table"] for d in rep["domains"] if r["domains"][d] is not None]
