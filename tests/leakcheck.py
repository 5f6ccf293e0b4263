"""The one leakage-check helper of the tests: a backend that records every prompt by role, and the
checks that the judge-only signals (narrative, rubric, persona) never reach a policy, planner,
summarizer or generator prompt."""

from __future__ import annotations

import json

from personal_nlf.llm.base import Backend, Generation

# Plausible outputs per role (a recorded model is named after its role), so the code under test
# goes on as with a real model.
REPLIES = {"judge": '{"match_score": 1}', "planner": '{"aspects": ["cost"]}', "feedback": "Mention practice time."}
DEFAULT_REPLY = '{"personalized_answer": "- a\\n- b\\n- c"}'


class Recorder(Backend):
    """Answers every prompt plausibly and logs (role, prompt)."""

    name = "recorder"

    def __init__(self, who, log):
        self.who, self.log = who, log

    def generate(self, prompts_, sampling):
        self.log.extend((self.who, p) for p in prompts_)
        return [[Generation(REPLIES.get(self.who, DEFAULT_REPLY), 10, 5, 0.0)] * sampling.n for _ in prompts_]

    def describe(self):
        return {"backend": "recorder", "model": self.who}


def recording_pool(log):
    """A BackendPool class whose backends record into `log` (monkeypatch evaluate.BackendPool)."""

    class Pool:
        def __init__(self, *a, **k):
            pass

        def get(self, role):
            return Recorder(role.model, log)

        def keep_only(self, roles):
            pass

        def close(self):
            pass

    return Pool


def seen_by(log, *roles) -> str:
    return json.dumps([p for who, p in log if who in roles])


def leaks(text: str, secrets) -> list[str]:
    """The secrets that occur in `text`."""
    return [s for s in secrets if s and s in text]


def record_secrets(record) -> list[str]:
    """A LaMP-QA record's judge-only text: the narrative and every rubric field."""
    out = [record.narrative]
    for a in record.rubric_aspects:
        out += [a.aspect, a.reason, a.evidence]
    return [s for s in out if s]


def assert_training_prompts_hold_no_signal(policy_data_rows, records_by_id) -> None:
    """The policy's training prompts (policy_data.jsonl rows) never hold the narrative or rubric."""
    for row in policy_data_rows:
        r = records_by_id[row["key"].split("/")[-1]]
        assert leaks(json.dumps(row["prompt"]), record_secrets(r)) == [], row["key"]
