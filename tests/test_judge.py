"""Judge protocol logic: retries at rising temperature, failures counted by reason, never
silently scored. A scripted backend replays fixed judge outputs (the real model runs in the
pipeline tests); the retry/count logic under test is the production code."""

from personal_nlf.config import JudgeConfig, RoleConfig
from personal_nlf.io import Journal
from personal_nlf.judge import JudgeItem, judge_items, outcome_counts
from personal_nlf.llm.base import Backend, Generation


class Scripted(Backend):
    name = "scripted"

    def __init__(self, script):
        self.script = {k: list(v) for k, v in script.items()}  # question -> outputs per attempt
        self.temps = []

    def generate(self, prompts, sampling):
        self.temps.append(sampling.temperature)
        out = []
        for p in prompts:
            q = p[-1]["content"].split("Question: ")[1].split("\n")[0]
            out.append([Generation(self.script[q].pop(0), 10, 5, 0.01)])
        return out

    def choice_logprobs(self, prompts, answer_prefix, choices):
        return [{"0": -2.0, "1": -1.0, "2": -0.5} for _ in prompts]

    def describe(self):
        return {"backend": "scripted"}


def item(q):
    return JudgeItem(q, q, "narrative", "aspect", "reason", "evidence", "response")


def test_generate_retries_then_counts_failures(tmp_path):
    backend = Scripted({
        "ok": ['{"match_score": 2}'],
        "prose": ['Good. {"match_score": 1}'],
        "retry": ["not json at all", '{"match_score": 0}'],
        "never": ["", "nope", '{"match_score": 7}', '{"score": 1}'],
    })
    cfg = JudgeConfig(method="generate", retry_temperatures=[0.0, 0.3, 0.6, 1.0])
    res = judge_items([item(q) for q in ("ok", "prose", "retry", "never")], backend, cfg, RoleConfig(),
                      Journal(tmp_path / "j.partial", "fp"))
    assert res["ok"]["score"] == 2.0 and res["ok"]["attempts"] == 1
    assert res["prose"]["outcome"] == "ok_with_prose"
    assert res["retry"]["score"] == 0.0 and res["retry"]["attempts"] == 2
    assert res["retry"]["failed_attempts"] == ["not_json"]
    never = res["never"]
    assert never["outcome"] == "failed:missing_key" and never["attempts"] == 4 and never["score"] == 0.0
    assert never["failed_attempts"] == ["empty", "not_json", "out_of_range", "missing_key"]
    assert backend.temps == [0.0, 0.3, 0.6, 1.0]  # rising temperature, only failures retried
    counts = outcome_counts(list(res.values()))
    assert counts == {"failed:missing_key": 1, "ok": 2, "ok_with_prose": 1}


def test_logprob_method_expected_score_and_journal_resume(tmp_path):
    backend = Scripted({})
    cfg = JudgeConfig(method="logprob")
    j = Journal(tmp_path / "j.partial", "fp")
    res = judge_items([item("a"), item("b")], backend, cfg, RoleConfig(), j)
    import math
    p = [math.exp(x) for x in (-2.0, -1.0, -0.5)]
    assert abs(res["a"]["score"] - (p[1] + 2 * p[2]) / sum(p)) < 1e-9
    j.close()
    # Resumed: nothing is judged again.
    class Boom(Scripted):
        def choice_logprobs(self, *a):
            raise AssertionError("re-judged a finished item")
    again = judge_items([item("a"), item("b")], Boom({}), cfg, RoleConfig(), Journal(tmp_path / "j.partial", "fp"))
    assert again == res
