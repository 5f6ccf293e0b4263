import math

import pytest

from personal_nlf import metrics
from personal_nlf.llm.hf import expected_score


def rows(domain, rid, scores):
    return [{"domain": domain, "id": rid, "aspect_index": i, "score": s} for i, s in enumerate(scores)]


def test_question_score_is_sum_over_twice_aspects():
    qs = metrics.question_scores(rows("A", "q1", [2, 1, 0]) + rows("A", "q2", [2, 2]))
    assert qs[("A", "q1")] == pytest.approx(3 / 6)
    assert qs[("A", "q2")] == 1.0


def test_macro_is_mean_of_domain_means():
    qs = {("A", "1"): 1.0, ("A", "2"): 0.0, ("A", "3"): 0.5, ("B", "1"): 1.0}
    s = metrics.summarize(qs, n_boot=200)
    assert s["domains"]["A"]["score"] == 0.5 and s["domains"]["B"]["score"] == 1.0
    assert s["macro"] == 0.75 and s["n"] == 4
    lo, hi = s["macro_ci95"]
    assert lo <= 0.75 <= hi


def test_summarize_is_deterministic_for_a_seed():
    qs = {("A", str(i)): (i % 3) / 2 for i in range(20)}
    assert metrics.summarize(qs, seed=1) == metrics.summarize(qs, seed=1)


def test_paired_test_detects_consistent_difference_and_not_noise():
    a = {("A", str(i)): 0.8 for i in range(30)}
    b = {("A", str(i)): 0.2 for i in range(30)}
    t = metrics.paired_test(a, b, n_perm=2000)
    assert t["diff"] == pytest.approx(0.6) and t["p_value"] < 0.01
    same = metrics.paired_test(a, dict(a), n_perm=2000)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_paired_test_uses_only_common_questions():
    t = metrics.paired_test({("A", "1"): 1.0, ("A", "2"): 0.0}, {("A", "1"): 0.0}, n_perm=100)
    assert t["n"] == 1


def test_expected_score_from_logprobs():
    lp = {"0": math.log(0.2), "1": math.log(0.3), "2": math.log(0.5)}
    assert expected_score(lp) == pytest.approx(0.3 + 1.0)
    # renormalized over the three labels
    lp2 = {k: v + math.log(0.1) for k, v in lp.items()}
    assert expected_score(lp2) == pytest.approx(1.3)


def test_output_sample_masks_quoted_profile_items_and_interleaves_domains():
    from personal_nlf.data import Aspect, ProfileItem, Record
    from personal_nlf.evaluate import EvalRecord, output_sample

    quoted = "Which amp should I buy for a small flat?"
    recs = [EvalRecord(d, "test", Record(f"u{i}", "Q?", "N", (Aspect("a", "r", "e"),), (ProfileItem("p", quoted),)),
                       [quoted], []) for i, d in enumerate(["A", "A", "B"])]
    answers = {er.key: {"answer": f"As you asked: {quoted} Get a small one.", "parse_outcome": "json"} for er in recs}
    rows = [{"domain": er.domain, "id": er.record.id, "aspect_index": 0, "score": 1.0} for er in recs]
    sample = output_sample(recs, answers, rows, n=2)
    assert [(s["domain"], s["id"]) for s in sample] == [("A", "u0"), ("B", "u2")]
    assert all(quoted not in s["answer"] and "[profile item]" in s["answer"] for s in sample)
    assert sample[0]["question_score"] == 0.5
