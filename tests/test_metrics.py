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


def test_question_scores_do_not_depend_on_row_order():
    # 0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in plain float sums; exact sums do not.
    r = rows("A", "q", [0.1, 0.2, 0.3])
    assert metrics.question_scores(r) == metrics.question_scores(r[::-1])
    assert metrics.question_scores(r)[("A", "q")] == 0.6 / 6


def test_paired_test_is_deterministic_for_identical_inputs_in_any_order():
    import random

    a = {(d, str(i)): ((i * 7 + len(d)) % 5) / 4 for d in ("A", "B", "C") for i in range(12)}
    b = {k: ((int(k[1]) * 3) % 5) / 4 for k in a}
    ref = metrics.paired_test(a, b, n_perm=2000, seed=3)
    items = list(a.items())
    random.Random(0).shuffle(items)
    assert metrics.paired_test(dict(items), dict(reversed(list(b.items()))), n_perm=2000, seed=3) == ref
    assert metrics.paired_t_test(dict(items), b) == metrics.paired_t_test(a, b)


def test_paired_t_test_hand_computed():
    # Domain A differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3,
    # df 2; for df 2 the t tail is closed-form: P(T > t) = 1/2 - t / (2 sqrt(2 + t^2)).
    # Domain B differences 0, 0.2, 0.4: mean 0.2, sd 0.2, t = sqrt 3.
    # Macro: diff 0.2, var = (0.01/3 + 0.04/3) / 2^2, t = 0.4 / sqrt(0.05/3) = 3.0984,
    # Welch-Satterthwaite df = (0.05/3)^2 / ((0.01/3)^2/2 + (0.04/3)^2/2) = 50/17.
    a = {("A", "1"): 0.1, ("A", "2"): 0.2, ("A", "3"): 0.3, ("B", "1"): 0.0, ("B", "2"): 0.2, ("B", "3"): 0.4}
    b = {k: 0.0 for k in a}
    t = metrics.paired_t_test(a, b)
    ta = 2 * math.sqrt(3)
    assert t["domains"]["A"]["t"] == pytest.approx(ta, abs=1e-4) and t["domains"]["A"]["df"] == 2
    assert t["domains"]["A"]["p_value"] == pytest.approx(2 * (0.5 - ta / (2 * math.sqrt(2 + ta ** 2))), abs=1e-4)
    tb = math.sqrt(3)
    assert t["domains"]["B"]["p_value"] == pytest.approx(2 * (0.5 - tb / (2 * math.sqrt(2 + tb ** 2))), abs=1e-4)
    assert t["macro"]["diff"] == 0.2 and t["macro"]["t"] == pytest.approx(0.4 / math.sqrt(0.05 / 3), abs=1e-4)
    assert t["macro"]["df"] == pytest.approx(50 / 17, abs=0.01)
    assert 0.05 < t["macro"]["p_value"] < t["domains"]["B"]["p_value"]


def test_paired_t_test_matches_scipy_and_degenerate_cases():
    from scipy import stats

    a = {("A", str(i)): v for i, v in enumerate([0.5, 0.7, 0.2, 0.9, 0.4])}
    b = {("A", str(i)): v for i, v in enumerate([0.4, 0.3, 0.3, 0.6, 0.1])}
    ref = stats.ttest_rel([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])
    t = metrics.paired_t_test(a, b)
    # One domain: the macro test is the ordinary paired t-test.
    assert t["macro"]["p_value"] == t["domains"]["A"]["p_value"] == round(float(ref.pvalue), 4)
    assert t["macro"]["df"] == 4
    same = metrics.paired_t_test(a, dict(a))
    assert same["macro"]["p_value"] == 1.0 and same["macro"]["t"] is None
    one = metrics.paired_t_test({("A", "1"): 1.0}, {("A", "1"): 0.0})
    assert one["domains"]["A"]["p_value"] is None and one["macro"]["p_value"] is None
    assert metrics.paired_t_test({}, {}) == {"domains": {}, "macro": None}


def test_holm_by_hand():
    # Sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept monotone at 0.06.
    assert metrics.holm([0.01, 0.04, 0.03, None]) == [0.03, 0.06, 0.06, None]
    assert metrics.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert metrics.holm([0.2]) == [0.2] and metrics.holm([]) == []
