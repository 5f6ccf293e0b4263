"""The verifier judge: deterministic 0/1/2 checks, and judge.method=verifier sending only the
aspects without a check to the LLM judge (counted by outcome)."""

import pytest

from personal_nlf import judge, verifier
from personal_nlf.config import Params
from personal_nlf.data import Aspect
from personal_nlf.llm.base import Backend, Generation

LIST = "- Rinse the leaves\n- Dry them on a towel\n- Keep them in a jar of water"
PROSE = ("Rinse the leaves gently and dry them on a clean towel. Then stand the stems in a jar of water "
         "on the counter, away from the sun, and change the water every day.")


def ev(check, text):
    return verifier.evaluate(check, text)[0]


@pytest.mark.parametrize("check,text,expected", [
    ({"type": "list_form"}, LIST, 2),
    ({"type": "list_form"}, "1. one\n2) two\n* three", 2),
    ({"type": "list_form"}, "- one\n- two", 1),
    ({"type": "list_form"}, PROSE, 0),
    ({"type": "prose_form"}, PROSE, 2),
    ({"type": "prose_form"}, PROSE + "\n\nA second paragraph.", 1),
    ({"type": "prose_form"}, "Intro.\n- one thing", 1),
    ({"type": "prose_form"}, LIST, 0),
    ({"type": "max_words", "value": 10}, "one two three four five six seven eight nine ten", 2),
    ({"type": "max_words", "value": 10}, " ".join(["w"] * 12), 1),   # within 125%
    ({"type": "max_words", "value": 10}, " ".join(["w"] * 13), 0),
    ({"type": "min_words", "value": 20}, " ".join(["w"] * 20), 2),
    ({"type": "min_words", "value": 20}, " ".join(["w"] * 15), 1),   # at least 75%
    ({"type": "min_words", "value": 20}, " ".join(["w"] * 14), 0),
    ({"type": "forbidden_terms", "terms": ["aperture", "ISO"]}, "Hold the camera still.", 2),
    ({"type": "forbidden_terms", "terms": ["aperture", "ISO"]}, "Open the aperture.", 1),
    ({"type": "forbidden_terms", "terms": ["aperture", "ISO"]}, "Wide apertures and high iso.", 0),  # plural, case
    ({"type": "forbidden_terms", "terms": ["ISO"]}, "Isolate the subject.", 2),  # word boundary
    ({"type": "required_any", "terms": ["burst mode", "shutter speed"]}, "Use Burst Mode.", 2),
    ({"type": "required_any", "terms": ["burst mode", "shutter speed"]}, "Take many photos.", 0),
    ({"type": "required_any", "terms": ["a1", "b2", "c3"], "min_count": 2}, "a1 and b2", 2),
    ({"type": "required_any", "terms": ["a1", "b2", "c3"], "min_count": 2}, "only a1", 1),
    ({"type": "max_grade_level", "value": 8}, LIST, 2),
    ({"type": "max_grade_level", "value": 8},
     "The hermeneutic interpretation of postcolonial historiography necessitates epistemological reflexivity.", 0),
])
def test_check_scores(check, text, expected):
    assert verifier.validate_check(check) is None
    assert ev(check, text) == expected


@pytest.mark.parametrize("check", [{"type": "max_words", "value": 40}, {"type": "list_form"}, {"type": "prose_form"},
                                   {"type": "forbidden_terms", "terms": ["x"]}, {"type": "max_grade_level", "value": 8}])
def test_empty_response_never_passes(check):
    assert ev(check, "") == 0 and ev(check, "  \n ") == 0


def test_list_lines_are_sentences_for_the_grade_level():
    # Without a period per line the whole list would read as one very long sentence.
    long_list = "\n".join(f"- Put the cup on the shelf number {i}" for i in range(8))
    assert verifier.grade_level(long_list) < 8


@pytest.mark.parametrize("check,msg", [
    ({"type": "max_words"}, "needs 'value'"),
    ({"type": "max_words", "value": -1}, "positive number"),
    ({"type": "max_words", "value": True}, "positive number"),
    ({"type": "words_max", "value": 3}, "unknown check type"),
    ({"type": "forbidden_terms", "terms": []}, "non-empty list"),
    ({"type": "required_any", "terms": ["a"], "min_count": 0}, "min_count"),
    ({"type": "list_form", "value": 3}, "takes no"),
    ("list_form", "expected an object"),
])
def test_invalid_checks_are_named(check, msg):
    assert msg in verifier.validate_check(check)
    with pytest.raises(ValueError):
        verifier.evaluate(check, "text")


class FakeJudge(Backend):
    """An LLM judge that records what it was asked: logprob answers P(2) high, generate says 1."""

    name = "fake"

    def __init__(self):
        self.seen = []

    def choice_logprobs(self, prompts_, prefix, choices):
        self.seen.extend(prompts_)
        return [{"0": -5.0, "1": -5.0, "2": -0.01} for _ in prompts_]

    def generate(self, prompts_, sampling):
        self.seen.extend(prompts_)
        return [[Generation('{"match_score": 1}', 5, 3, 0.0)] * sampling.n for _ in prompts_]

    def describe(self):
        return {"backend": "fake"}


def answers():
    aspects = [Aspect("Bulleted list", "skims", "bullets please", {"type": "list_form"}),
               Aspect("Short", "busy", "40 words", {"type": "max_words", "value": 40}),
               Aspect("UNCHECKED-CANARY answers the question", "", ""),
               {"aspect": "No jargon", "check": {"type": "forbidden_terms", "terms": ["jar"]}}]
    return [judge.Answer("a", "How do I keep basil fresh?", "narr", aspects, LIST, {"domain": "d", "id": "a"}),
            judge.Answer("b", "How do I keep basil fresh?", "narr", aspects, PROSE, {"domain": "d", "id": "b"})]


@pytest.mark.parametrize("fallback,llm_outcome,llm_score", [("logprob", "logprob", 2.0), ("generate", "ok", 1.0)])
def test_verifier_method_checks_what_it_can_and_sends_the_rest_to_the_llm(fallback, llm_outcome, llm_score, tmp_path):
    params = Params.model_validate({"judge": {"method": "verifier", "fallback_method": fallback}})
    backend = FakeJudge()
    rows, scores = judge.judge_answers(answers(), backend, params, journal_path=tmp_path / "j.partial",
                                       out_path=tmp_path / "rows.jsonl")
    # Only the aspect without a check reached the LLM judge: once per answer.
    assert len(backend.seen) == 2 and all("UNCHECKED-CANARY" in str(p) for p in backend.seen)
    assert judge.outcome_counts(rows) == {"verified": 6, llm_outcome: 2}
    by = {(r["id"], r["aspect_index"]): r for r in rows}
    # "jar" (one forbidden term) is in both answers: partial credit 1.
    assert [by[("a", i)]["score"] for i in range(4)] == pytest.approx([2.0, 2.0, llm_score, 1.0], abs=0.03)
    assert [by[("b", i)]["score"] for i in range(4)] == pytest.approx([0.0, 2.0, llm_score, 1.0], abs=0.03)
    assert by[("a", 0)]["check"] == "list_form" and by[("a", 0)]["detail"] == {"list_lines": 3}
    assert scores["a"] == pytest.approx((5 + llm_score) / 8, abs=0.01)
    assert scores["b"] == pytest.approx((3 + llm_score) / 8, abs=0.01)


def test_other_methods_ignore_checks():
    params = Params.model_validate({"judge": {"method": "logprob"}})
    backend = FakeJudge()
    rows, _ = judge.judge_answers(answers()[:1], backend, params)
    assert len(backend.seen) == 4 and judge.outcome_counts(rows) == {"logprob": 4}


def test_score_items_dispatches_to_the_verifier_too():
    cfg = Params.model_validate({"judge": {"method": "verifier"}}).judge
    item = judge.JudgeItem("k", "q", "n", "a", "r", "e", LIST, {"type": "list_form"})
    (res,) = judge.score_items([item], FakeJudge(), cfg, Params().models.judge)
    assert res["outcome"] == "verified" and res["score"] == 2.0
