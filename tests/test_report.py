"""The results report: best-baseline pool, paired tests with Holm correction, the label-mass flag.
Synthetic per-question scores with hand-checkable differences; no model runs."""

from personal_nlf import report

DOMS = ("Art_and_Entertainment", "Lifestyle_and_Personal_Development", "Society_and_Culture")


def row(macro, shift=0.0, label_mass=None, noise=0):
    """A report row whose questions score `macro` + shift + a per-question wiggle that differs by
    `noise` (so paired differences have spread) and sums to zero within each domain."""
    qs = {(d, str(i)): macro + shift + 0.01 * (((i + noise * (j + 1)) % 8) - 3.5) for j, d in enumerate(DOMS)
          for i in range(8)}
    m = {"domains": {d: {"score": macro + shift} for d in DOMS}, "macro": macro + shift, "macro_ci95": [0, 1],
         "n": len(qs), "s_per_query": 1.0, "prompt_tokens_per_query": 100.0}
    if label_mass is not None:
        m["judge_label_mass"] = label_mass
    return {"metrics": m, "questions": qs}


def test_offline_rl_final_iteration_is_in_the_best_baseline_pool():
    rows = {"no_pers": row(0.30), "rag": row(0.31), "offline_rl@1": row(0.40), "offline_rl@2": row(0.35),
            "nlf@2": row(0.50)}
    keys = {"offline_rl@2": "offline_rl", "nlf@2": "vac"}  # as stages/report.py marks final iterations
    rep = report.build(rows, reference_key=keys)
    # offline_rl@1 scores higher but is an intermediate iteration: the paper's baseline is the final one.
    assert rep["best_baseline"] == "offline_rl@2"
    assert [(t["a"], t["b"]) for t in rep["paired_tests"]] == [
        ("no_pers", "offline_rl@2"), ("rag", "offline_rl@2"), ("offline_rl@1", "offline_rl@2"),
        ("nlf@2", "offline_rl@2"), ("rag", "no_pers"),
        # each loop row against its untrained start (the rag baseline)
        ("offline_rl@1", "rag"), ("offline_rl@2", "rag"), ("nlf@2", "rag")]
    t = next(t for t in rep["paired_tests"] if t["a"] == "nlf@2")
    assert t["diff"] == 0.15 and t["t_test"]["macro"]["diff"] == 0.15
    assert set(t["t_test"]["domains"]) == set(DOMS)
    # Without the reference key no loop row is a baseline: best of the plain baselines.
    assert report.build(rows)["best_baseline"] == "rag"


def test_holm_is_applied_per_column_over_the_report():
    rows = {"rag": row(0.30), "a": row(0.30, 0.001, noise=1), "b": row(0.30, 0.01, noise=2),
            "c": row(0.30, 0.03, noise=3)}
    tests = report.build(rows)["paired_tests"]
    assert len(tests) == 3
    assert len({t["t_test"]["macro"]["p_value"] for t in tests}) == 3 and 0 < tests[2]["t_test"]["macro"]["p_value"]
    for key in (lambda t: t, lambda t: t["t_test"]["macro"], lambda t: t["t_test"]["domains"][DOMS[0]]):
        raw = [key(t)["p_value"] for t in tests]
        adj = [key(t)["p_value_holm"] for t in tests]
        # Holm: the smallest p times 3, never below the raw p, capped at 1, same order as raw.
        i = raw.index(min(raw))
        assert adj[i] == min(1.0, round(3 * raw[i], 4))
        assert all(a >= r for a, r in zip(adj, raw)) and all(a <= 1 for a in adj)
        assert sorted(range(3), key=lambda j: raw[j]) == sorted(range(3), key=lambda j: (adj[j], raw[j]))


def test_report_flags_a_judge_that_is_not_answering():
    low = {"mean": 0.21, "min": 0.05, "share_below_threshold": 0.9, "threshold": 0.5, "n": 24}
    ok = {"mean": 0.93, "min": 0.61, "share_below_threshold": 0.0, "threshold": 0.5, "n": 24}
    rep = report.build({"rag": row(0.3, label_mass=ok), "nlf@1": row(0.3, 0.01, label_mass=low),
                        "no_pers": row(0.3)})
    flags = {r["method"]: r["judge_not_answering"] for r in rep["table"]}
    assert flags == {"rag": False, "nlf@1": True, "no_pers": False}
    md = report.to_markdown(rep)
    assert "Judge not answering** for `nlf@1`" in md and "mean 0.210, min 0.050, 90% of aspects below" in md
    results = md.split("## Paired tests")[0]
    line = {ln.split(" | ")[0].lstrip("| "): ln for ln in results.splitlines() if ln.startswith("| ")}
    assert "| 0.21 ⚠ |" in line["nlf@1"] and "| 0.93 |" in line["rag"] and "| — |" in line["no_pers"]
    assert "Judge not answering" not in report.to_markdown(report.build({"rag": row(0.3, label_mass=ok)}))


def test_transfer_table_shows_each_generators_pairwise_accuracy_with_the_summary():
    """Data with preference pairs: the transfer section adds, per generator, the summary-prompted
    pairwise accuracy against the same generator without personalization, Holm over generators."""
    def method(macro, pa=None):
        return {"macro": macro, "prompt_tokens_per_query": 50.0, "pairwise_accuracy": pa}

    def pa(acc, none, p):
        return {"condition": "summary", "conditions": {"summary": {"accuracy": acc, "ci95": [acc - 0.1, acc + 0.1],
                                                                    "n_pairs": 40},
                                                        "none": {"accuracy": none, "ci95": [0, 1], "n_pairs": 40}},
                "paired_vs_none": {"summary": {"diff": round(acc - none, 4), "p_value": p}}}

    gens = {"base_policy": {"model": "m1", "backend": "hf", "summary": method(0.5, pa(0.75, 0.5, 0.01)),
                            "no_pers": method(0.4), "rag": method(0.45), "context_reduction_ratio": 3.0},
            "gemma": {"model": "m2", "backend": "hf", "summary": method(0.4, pa(0.55, 0.5, 0.04)),
                      "no_pers": method(0.4), "rag": method(0.42), "context_reduction_ratio": 2.5}}
    md = report.transfer_markdown({"split": "test", "generators": gens})
    assert "| base_policy | 0.750 | [0.650, 0.850] | 40 | 0.500 | 0.250 | 0.0100 (0.0200) |" in md, md
    assert "| gemma | 0.550 | [0.450, 0.650] | 40 | 0.500 | 0.050 | 0.0400 (0.0400) |" in md, md
    # Without pairs (LaMP-QA): the macro table only.
    for g in gens.values():
        g["summary"]["pairwise_accuracy"] = None
    assert "Pairwise" not in report.transfer_markdown({"split": "test", "generators": gens})
