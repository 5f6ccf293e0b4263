"""Judge protocol logic: retries at rising temperature, failures counted by reason, never
silently scored. A scripted backend replays fixed judge outputs (the real model runs in the
pipeline tests); the retry/count logic under test is the production code."""

import math
import sys
import types

import pytest

from personal_nlf.config import JudgeConfig, RoleConfig
from personal_nlf.io import Journal
from personal_nlf.judge import (
    LABEL_MASS_THRESHOLD,
    JudgeItem,
    _logprob,
    judge_items,
    label_mass_summary,
    outcome_counts,
)
from personal_nlf.llm.base import Backend, Generation
from personal_nlf.llm.hf import expected_score, label_mass, label_token_ids


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
    p = [math.exp(x) for x in (-2.0, -1.0, -0.5)]
    assert abs(res["a"]["score"] - (p[1] + 2 * p[2]) / sum(p)) < 1e-9
    j.close()
    # Resumed: nothing is judged again.
    class Boom(Scripted):
        def choice_logprobs(self, *a):
            raise AssertionError("re-judged a finished item")
    again = judge_items([item("a"), item("b")], Boom({}), cfg, RoleConfig(), Journal(tmp_path / "j.partial", "fp"))
    assert again == res


# ---------------------------------------------------------------- label mass (logprob judge)
# A toy vocabulary where " 1" is one token but " 0" and " 2" are two (" " + digit), and a
# next-token distribution over it: label "0" = 0.1, "1" = "1" + " 1" = 0.2 + 0.1, "2" = 0.3.
VOCAB = {"0": 0, "1": 1, "2": 2, " 1": 3, " ": 4, "x": 5}
PROBS = [0.1, 0.2, 0.3, 0.1, 0.05, 0.25]


def toy_encode(s):
    if s in VOCAB:
        return [VOCAB[s]]
    return [VOCAB[" "], VOCAB[s[1:]]] if s.startswith(" ") else [VOCAB[ch] for ch in s]


def test_label_token_rule():
    assert label_token_ids(toy_encode, "1") == [1, 3]  # both spellings are one token
    assert label_token_ids(toy_encode, "0") == [0]  # " 0" is two tokens: not a label token
    with pytest.raises(Exception, match="not a single token"):
        label_token_ids(lambda s: [1, 2], "10")


def test_logprob_rows_carry_label_mass_and_summary():
    backend = Scripted({})  # raw log-probs -2, -1, -0.5
    rows = _logprob([item("a")], backend)
    p = [math.exp(x) for x in (-2.0, -1.0, -0.5)]
    assert rows[0]["label_mass"] == pytest.approx(sum(p), abs=1e-6)  # 0.1353 + 0.3679 + 0.6065
    # Hand example: masses 0.9, 0.3, 0.6 -> mean 0.6, min 0.3, one of three below 0.5.
    rs = [{"outcome": "logprob", "label_mass": m} for m in (0.9, 0.3, 0.6)]
    assert LABEL_MASS_THRESHOLD == 0.5
    assert label_mass_summary(rs) == {"mean": 0.6, "min": 0.3, "share_below_threshold": 0.3333,
                                      "threshold": 0.5, "n": 3}
    # A row written before label_mass was stored: recomputed from its raw log-probs.
    old = {"outcome": "logprob", "probs": {"0": math.log(0.1), "1": math.log(0.2), "2": math.log(0.1)}}
    assert label_mass_summary([old])["mean"] == 0.4
    assert label_mass_summary([{"outcome": "ok", "score": 2.0}]) is None
    assert label_mass_summary([]) is None


def _hf_backend():
    import torch

    from personal_nlf.llm.hf import HFBackend

    be = HFBackend.__new__(HFBackend)  # no model load: a fixed next-token distribution
    be.role, be.tok = RoleConfig(batch_size=2), types.SimpleNamespace(encode=lambda s, add_special_tokens: toy_encode(s))
    be.render = lambda p, prefix="": "prompt"
    be._token_ids = lambda texts: ([[1]] * len(texts), [False] * len(texts))  # one token: no shared prefix
    be._pad = lambda seqs, side="left": (torch.zeros((len(seqs), 1), dtype=torch.long), torch.ones((len(seqs), 1)))
    logits = torch.log(torch.tensor(PROBS))
    be.model = lambda input_ids, attention_mask, **_: types.SimpleNamespace(logits=logits.repeat(len(input_ids), 1, 1))
    return be


def _vllm_backend(monkeypatch, exact_fallback):
    from personal_nlf.llm.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    def lp(tid):
        return types.SimpleNamespace(logprob=math.log(PROBS[tid]))

    class FakeLLM:  # top-3 log-probs per decode step; exact prompt log-probs for appended tokens
        def generate(self, reqs, params, lora_request=None, use_tqdm=False):
            if "prompt_logprobs" in params:
                return [types.SimpleNamespace(prompt_logprobs=[None, {r["prompt_token_ids"][-1]: lp(r["prompt_token_ids"][-1])}])
                        for r in reqs]
            top = sorted(range(len(PROBS)), key=lambda t: -PROBS[t])[:3]  # tokens 2, 5, 1
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[{t: lp(t) for t in top}])])
                    for _ in reqs]

    be = VLLMBackend.__new__(VLLMBackend)
    be.role, be.seed, be.exact_fallback, be.lora_request, be.llm = RoleConfig(), 0, exact_fallback, None, FakeLLM()
    be.tokenizer = types.SimpleNamespace(encode=lambda s, add_special_tokens: toy_encode(s))
    be._prompt_ids = lambda p, n, prefix="": ([9], 0)
    return be


def test_hf_and_vllm_count_the_same_label_tokens(monkeypatch):
    hf_rows = _hf_backend().choice_logprobs([[], []], "", ["0", "1", "2"])
    vl_rows = _vllm_backend(monkeypatch, exact_fallback=True).choice_logprobs([[], []], "", ["0", "1", "2"])
    for rows in (hf_rows, vl_rows):
        for r in rows:
            assert {c: math.exp(v) for c, v in r.items()} == pytest.approx({"0": 0.1, "1": 0.3, "2": 0.3})
            assert label_mass(r) == pytest.approx(0.7)
            assert expected_score(r) == pytest.approx((0.3 + 2 * 0.3) / 0.7)
    # Without the exact fallback, tokens outside the top 3 count as probability 0: "0" is missing
    # entirely, "1" keeps only its bare token (0.2); the mass is a lower bound (0.5).
    top_only = _vllm_backend(monkeypatch, exact_fallback=False).choice_logprobs([[]], "", ["0", "1", "2"])[0]
    assert top_only["0"] == -1e9
    assert label_mass(top_only) == pytest.approx(0.5)
