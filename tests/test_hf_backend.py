"""The hf backend's judge and likelihood paths: shared-prefix scoring (the aspects of one answer
reuse one KV cache) must give the same log-probabilities as scoring every prompt in full."""

import subprocess
import sys
from pathlib import Path

import pytest

from personal_nlf import prompts
from personal_nlf.config import RoleConfig
from personal_nlf.llm import hf
from personal_nlf.llm.hf import shared_prefix_groups


def test_shared_prefix_groups_by_hand():
    a = [1, 2, 3, 4, 5, 9]
    b = [1, 2, 3, 4, 5, 8, 8]
    c = [1, 2, 3, 7]          # shares only 3 tokens with a: below the minimum of 4
    d = [1, 2, 3, 7, 6]
    e = [5, 5, 5, 5, 5]
    assert shared_prefix_groups([a, b, c, d, e], 4) == [(5, [0, 1]), (0, [2]), (0, [3]), (0, [4])]
    # c shares 3 tokens with a, but a and b formed a 5-token prefix: c and d start their own group.
    assert shared_prefix_groups([a, b, c, d, e], 3) == [(5, [0, 1]), (3, [2, 3]), (0, [4])]
    # Identical sequences still leave each member its last token to read logits from.
    assert shared_prefix_groups([a, a, a], 2) == [(5, [0, 1, 2])]
    assert shared_prefix_groups([a, b, [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6]], 2) == [(5, [0, 1, 2]), (0, [3])]
    assert shared_prefix_groups([], 2) == []


@pytest.fixture(scope="module")
def judge_backend(embedded_models):
    # fp32: these tests hold the shared-prefix paths to the full computation at 1e-3, tighter than
    # bf16 rounding (dtype auto is bf16 on a CPU with native bf16).
    return hf.HFBackend(RoleConfig(batch_size=3, dtype="float32"), embedded_models)


def _judge_prompts():
    out = []
    for answer in ("Practise ten minutes a day with a small sketchbook.", "Buy the most expensive paints."):
        for aspect in ("daily routine", "low cost materials", "beginner friendly steps", "motivation"):
            out.append(prompts.judge("How do I start drawing?", "I am a beginner with little money and time.",
                                     aspect, "the person said so", "their post", answer))
    return out


def test_shared_prefix_scoring_equals_full_scoring(judge_backend, monkeypatch):
    msgs = _judge_prompts()
    shared = judge_backend.choice_logprobs(msgs, prompts.JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
    seqs, _ = judge_backend._token_ids([judge_backend.render(m, prompts.JUDGE_ANSWER_PREFIX) for m in msgs])
    groups = shared_prefix_groups(seqs, hf.MIN_SHARED_PREFIX)
    assert [idx for _, idx in groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # one group per answer: the path ran
    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)  # every prompt scored in full
    full = judge_backend.choice_logprobs(msgs, prompts.JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
    for s, f in zip(shared, full):
        for c in "012":
            assert s[c] == pytest.approx(f[c], abs=1e-3)
    # The aspects differ, so their scores do: the suffixes were really read.
    assert len({round(s["0"], 4) for s in shared}) > 2


def test_answer_logprobs_equal_an_unbatched_forward_pass(judge_backend):
    import torch

    msgs = [prompts.no_pers("How do I start drawing?"), prompts.no_pers("Which paints last longest?")]
    answers = ["Start small.", "Acrylics, kept sealed, last for years."]
    got = judge_backend.answer_logprobs(msgs, answers)
    for m, a, g in zip(msgs, answers, got):
        ids_p = judge_backend.tok(judge_backend.render(m), add_special_tokens=False)["input_ids"]
        ids_a = judge_backend.tok(a, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(judge_backend.model(torch.tensor([ids_p + ids_a])).logits[0].float(), -1)
        want = sum(float(logp[len(ids_p) - 1 + j, t]) for j, t in enumerate(ids_a))
        assert g == pytest.approx(want, abs=1e-3)


def test_answers_to_one_prompt_share_its_forward_pass_and_score_as_in_full(judge_backend, monkeypatch):
    """A preference pair's chosen and rejected (and a user's other pairs) follow one prompt: the
    prompt, and the JSON start the answers share, are computed once. Scores equal the full path."""
    from personal_nlf.preferences import answer_json

    q = prompts.rag("How do I start drawing?", ["I sketch on the train.", "I have little money for art supplies."])
    answers = [answer_json(a) for a in ("Practise ten minutes a day with a small sketchbook.",
                                        "Buy the most expensive paints.", "Copy a master drawing once a week.",
                                        "Try it.")]
    msgs = [q] * len(answers) + [prompts.no_pers("Which paints last longest?")]
    answers.append("Acrylics.")
    seqs = [judge_backend.tok(judge_backend.render(m), add_special_tokens=False)["input_ids"]
            + judge_backend.tok(a, add_special_tokens=False)["input_ids"] for m, a in zip(msgs, answers)]
    assert [idx for _, idx in shared_prefix_groups(seqs, hf.MIN_SHARED_PREFIX)][0] == [0, 1, 2, 3]  # the path ran
    shared = judge_backend.answer_logprobs(msgs, answers)
    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)
    full = judge_backend.answer_logprobs(msgs, answers)
    assert shared == pytest.approx(full, abs=1e-3)
    assert len({round(x, 3) for x in shared}) == len(shared)  # each answer's own tokens were read


def test_pairwise_benchmark_runs_and_both_paths_agree(embedded_models, tmp_path):
    """benchmarks/bench_pairwise.py at its smallest: it must keep working, and its two paths must
    give every pair the same sign (its table reports it)."""
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "pairwise.md"
    r = subprocess.run([sys.executable, "benchmarks/bench_pairwise.py", "--records", "1", "--repeats", "1",
                        "--models-dir", str(embedded_models), "--out", str(out)], cwd=repo, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "| shared prompt |" in text and "| full sequences |" in text
    assert "pairs whose sign differs: 0 of 2" in text


def test_a_repeated_prompt_and_answer_is_scored_once(judge_backend, monkeypatch):
    """Users who share a question are scored on the same responses without personalization: each
    distinct (prompt, answer) is computed once and every copy gets its score."""
    msgs = [prompts.no_pers("How do I start drawing?")] * 4 + [prompts.no_pers("Which paints last longest?")]
    answers = ["Start small.", "Buy paints.", "Start small.", "Buy paints.", "Start small."]
    computed = []
    unique = judge_backend._unique_answer_logprobs
    monkeypatch.setattr(judge_backend, "_unique_answer_logprobs",
                        lambda seqs, starts: computed.append(len(seqs)) or unique(seqs, starts))
    got = judge_backend.answer_logprobs(msgs, answers)
    assert computed == [3]
    assert got[0] == got[2] and got[1] == got[3] and got[0] != got[4] and got[0] != got[1]
    alone = judge_backend.answer_logprobs(msgs[4:], answers[4:])
    assert got[4] == pytest.approx(alone[0], abs=1e-3)


@pytest.fixture(scope="module")
def random_adapter(embedded_models, tmp_path_factory) -> Path:
    """A LoRA adapter on the embedded policy with random lora_B (init_lora_weights=False: not zero),
    so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _, _, _ = hf.load_model_and_tokenizer(RoleConfig().model, embedded_models, "cpu", "float32")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("random_adapter")
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False)).save_pretrained(out)
    return out


def test_an_adapter_is_served_merged_and_scores_as_the_peft_model(embedded_models, random_adapter):
    """For inference the hf backend merges a LoRA adapter into the weights (in fp32, then casts):
    no PEFT layers are left, and in fp32 it scores answers as the unmerged PeftModel
    (adapter_serving: lora) does."""
    from peft import PeftModel

    base_role = RoleConfig(batch_size=3, dtype="float32")
    served = hf.HFBackend(base_role.model_copy(update={"adapter": str(random_adapter)}), embedded_models)
    assert not isinstance(served.model, PeftModel)
    assert not any("lora_" in n for n, _ in served.model.named_parameters())
    assert served.describe()["adapter_merged"] is True

    msgs = [prompts.no_pers("How do I start drawing?"), prompts.no_pers("Which paints last longest?")]
    answers = ["Start small.", "Acrylics, kept sealed, last for years."]
    unmerged = hf.HFBackend(base_role.model_copy(update={"adapter": str(random_adapter), "adapter_serving": "lora"}),
                            embedded_models)
    assert isinstance(unmerged.model, PeftModel) and unmerged.describe()["adapter_merged"] is False
    base = hf.HFBackend(base_role, embedded_models).answer_logprobs(msgs, answers)
    got, want = served.answer_logprobs(msgs, answers), unmerged.answer_logprobs(msgs, answers)
    assert got == pytest.approx(want, abs=1e-3)
    assert all(abs(g - b) > 1e-2 for g, b in zip(got, base))  # the adapter was applied


def test_greedy_generation_answers_a_repeated_prompt_once(judge_backend, monkeypatch):
    """Users who share a question get the same no-personalization prompt: greedy decoding answers
    it once and every copy gets that answer, with the latency split so time sums stay true.
    Sampled generation keeps every copy (independent samples)."""
    from personal_nlf.llm.base import Sampling

    a, b = prompts.no_pers("How do I start drawing?"), prompts.no_pers("Which paints last longest?")
    generated = []
    inner = judge_backend._generate
    monkeypatch.setattr(judge_backend, "_generate", lambda texts, s: generated.append(len(texts)) or inner(texts, s))
    greedy = Sampling(temperature=0.0, max_new_tokens=6, seed=0)
    out = judge_backend.generate([a, b, a, a], greedy)
    assert generated == [2]
    assert out[0][0].text == out[2][0].text == out[3][0].text and out[0][0].text
    alone = judge_backend.generate([a], greedy)[0][0]
    assert out[0][0].text == alone.text and out[0][0].completion_tokens == alone.completion_tokens
    # a and b were one batch (batch_size 3), each charged half of it; a's half is split over 3 copies.
    assert out[0][0].latency_s == pytest.approx(out[2][0].latency_s) == pytest.approx(out[1][0].latency_s / 3)
    judge_backend.generate([a, a], Sampling(temperature=1.0, max_new_tokens=6, seed=0))
    assert generated[-1] == 2


def test_adapter_benchmark_runs(embedded_models, random_adapter, tmp_path):
    """benchmarks/bench_adapter.py at its smallest, on a random adapter: it must keep working, and
    merging in fp32 must reproduce the unmerged fp32 effect (its table reports it)."""
    import json
    import re

    rows = [{"prompt": prompts.no_pers(q), "revised": a} for q, a in
            (("How do I start drawing?", "Start small."), ("Which paints last longest?", "Acrylics."))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "adapter.md"
    r = subprocess.run([sys.executable, "benchmarks/bench_adapter.py", "--adapter", str(random_adapter),
                        "--targets", str(tmp_path / "rows.jsonl"), "--repeats", "1", "--models-dir",
                        str(embedded_models), "--out", str(out)], cwd=repo, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "| fp32 unmerged (reference) |" in text and " merged | " in text and "merged / unmerged time" in text
    assert float(re.search(r"max \|effect difference\| (\S+)", text).group(1)) < 1e-2


def test_n_samples_of_a_prompt_share_its_prefill_and_sample_as_num_return_sequences(judge_backend, monkeypatch):
    """N samples per prompt (offline RL's rollout, VAC's feedbacks) compute each prompt once and
    copy its KV cache N times. With the same seed they sample what generate() samples with
    num_return_sequences=N, which computes the prompt N times (fp32; left-padded prompts of
    different lengths in one batch)."""
    import torch

    from personal_nlf.llm.base import Sampling

    msgs = [prompts.no_pers("How do I start drawing?"),
            prompts.rag("Which paints last longest on canvas outdoors?", ["I paint murals.", "I live by the sea."])]
    s = Sampling(temperature=1.0, max_new_tokens=8, seed=3, n=3)
    calls = []
    prefill = judge_backend._prefill
    monkeypatch.setattr(judge_backend, "_prefill", lambda ids, mask: calls.append(ids.shape) or prefill(ids, mask))
    shared = judge_backend.generate(msgs, s)
    assert len(calls) == 1 and calls[0][0] == 2  # one prefill of the two prompts, not of six rows

    texts = [judge_backend.render(m) for m in msgs]
    order = sorted(range(2), key=lambda i: len(texts[i]))
    input_ids, mask, _, _ = judge_backend._encode([texts[i] for i in order])
    torch.manual_seed(s.seed)
    with torch.inference_mode():
        out = judge_backend.model.generate(input_ids=input_ids, attention_mask=mask, num_return_sequences=3,
                                           max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0,
                                           pad_token_id=judge_backend.tok.pad_token_id)
    new = out[:, input_ids.shape[1]:]
    for j, i in enumerate(order):
        want = [judge_backend.tok.decode(new[j * 3 + k], skip_special_tokens=True).strip() for k in range(3)]
        assert [g.text for g in shared[i]] == want
    assert len({g.text for g in shared[1]}) > 1  # sampled, not one answer copied
