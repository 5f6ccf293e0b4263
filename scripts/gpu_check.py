"""GPU check: this project's own hf inference, judge and training paths on a tiny random model.

Run through scripts/gpu_check.sh (which installs carried wheels first). Everything is built here,
nothing is downloaded: a byte-level BPE tokenizer trained on a few sentences (with a chat
template, pad and eos tokens) and a random-initialised Llama-architecture model from a config.
Then, through personal_nlf's code paths:

  build     tokenizer + model written to a temporary folder
  generate  llm.hf.HFBackend.generate (greedy, and n=2 sampled)
  judge     judge.judge_answers, logprob method (HFBackend.choice_logprobs)
  sft       training.fit_and_export("sft")  -> LoRA adapter
  dpo       training.fit_and_export("dpo"), continuing the SFT adapter (trainable reload)
  grpo      training.fit_and_export("grpo"), one step, a python reward
  reload    HFBackend with `adapter:` (the DPO adapter): generate + judge through it

Device: CUDA when available (weights bf16 where the GPU has it, the project's `auto` rule), else
CPU in fp32; DEVICE=cpu forces CPU (the shell script also hides the GPUs then). Prints one row
per step: step, device, dtype, seconds, peak GPU MiB (torch.cuda.max_memory_allocated, reset
before each step; "-" on CPU), ok. Exits 1 on any failure with one line `gpu_check: FAIL ...`
(the traceback goes to stderr); 2 if the whole check ran past GPU_CHECK_BUDGET_S seconds
(default 480 on CUDA, none on CPU).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

SENTENCES = [
    "The user prefers short answers with a bulleted list of concrete steps.",
    "Answer the question in one sentence and mention the budget.",
    "How do I start running if I have never exercised before?",
    "Which camera should a beginner buy for travel photography?",
    "Start slowly, walk and run in short intervals, and rest between days.",
    "A light mirrorless camera with a zoom lens is a good first choice.",
    "Rate how well the response covers the aspect: 0, 1 or 2.",
    '{"match_score": 0} {"match_score": 1} {"match_score": 2}',
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def build_tiny_model(out: Path) -> Path:
    """A byte-level BPE tokenizer trained on SENTENCES and the project's prompt templates, and a
    random LlamaForCausalLM sized for it, saved as a normal HF folder (fp32 on disk)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    from personal_nlf import prompts

    specials = ["<|pad|>", "<|end|>", "<|bos|>", "<|user|>", "<|assistant|>", "<|system|>"]
    corpus = SENTENCES + [m["content"] for m in prompts.judge("How do I start running?", "A beginner who likes lists.",
                                                              "Concrete steps", "The user wants a plan.",
                                                              "I like lists.", "Walk first, then run.")]
    corpus += [m["content"] for m in prompts.no_pers("Which camera should I buy?")]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=800, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|end|>",
                                  pad_token="<|pad|>", model_max_length=4096)
    tok.chat_template = CHAT_TEMPLATE
    for label in ("0", "1", "2"):
        if len(tok.encode(label, add_special_tokens=False)) != 1:
            raise RuntimeError(f"tokenizer: label {label!r} is not one token")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=int(os.environ.get("GPU_CHECK_HIDDEN", "128")),
                      intermediate_size=2 * int(os.environ.get("GPU_CHECK_HIDDEN", "128")),
                      num_hidden_layers=int(os.environ.get("GPU_CHECK_LAYERS", "2")), num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    log(f"model: Llama {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, {n} parameters")
    return out


class _Hidden:
    """A sys.meta_path finder wrapper that does not find the hidden top-level packages, so that
    find_spec() says None and `import` raises ModuleNotFoundError, as where they are not installed."""

    def __init__(self, inner, names: set[str]):
        self.inner, self.names = inner, names

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def hide_packages(names: set[str]) -> None:
    """GPU_CHECK_HIDE=mlflow,dvc: rehearse, here, a machine where these are not installed (the
    device machine has no mlflow, dvc, vllm; polars is stubbed by the shell script)."""
    if names:
        sys.meta_path[:] = [_Hidden(f, names) if hasattr(f, "find_spec") else f for f in sys.meta_path]
        log(f"hidden packages: {', '.join(sorted(names))}")


def main() -> int:
    hide_packages({n.strip() for n in os.environ.get("GPU_CHECK_HIDE", "").split(",") if n.strip()})
    import torch

    force_cpu = os.environ.get("DEVICE", "").lower() == "cpu"
    cuda = torch.cuda.is_available() and not force_cpu
    device = "cuda" if cuda else "cpu"
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S") or (480 if cuda else 0))
    torch.set_num_threads(int(os.environ.get("GPU_CHECK_THREADS") or min(4, os.cpu_count() or 1)))

    from personal_nlf import training
    from personal_nlf.config import Params, RoleConfig, TrainConfig
    from personal_nlf.judge import Answer, judge_answers
    from personal_nlf.llm.base import Sampling
    from personal_nlf.llm.hf import HFBackend, pick_dtype, train_dtype
    from personal_nlf.rewards import completion_text

    infer_dtype = str(pick_dtype("auto", device)).replace("torch.", "")  # bf16 on CUDA and on CPUs with native bf16
    fit_dtype = train_dtype("auto", cuda, cuda and torch.cuda.is_bf16_supported())
    keep = os.environ.get("GPU_CHECK_KEEP")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    role = RoleConfig(model=str(model_dir), device=device, max_new_tokens=16, max_input_tokens=1024, batch_size=4)
    judge_role = role.model_copy(update={"max_new_tokens": 8, "batch_size": 16})
    base = Params()
    params = base.model_copy(update={"seed": 0, "judge": base.judge.model_copy(update={"method": "logprob"}),
                                     "models": base.models.model_copy(update={"judge": judge_role})})
    tcfg = TrainConfig(max_steps=int(os.environ.get("GPU_CHECK_STEPS", "2")), per_device_batch_size=2,
                       gradient_accumulation_steps=1, learning_rate=5e-3, lora_r=8, lora_alpha=16, max_length=256,
                       save_steps=1000, warmup_ratio=0.0, select_on_validation=False)

    questions = ["How do I start running?", "Which camera should a beginner buy?",
                 "How can I save money on travel?", "What should I cook for a quick dinner?"]
    chats = [[{"role": "user", "content": q}] for q in questions]
    answers = ["- Walk first\n- Then run short intervals", "A light mirrorless camera.",
               "- Book early\n- Travel off season", "Pasta with vegetables."]
    aspects = [{"aspect": "Concrete steps", "reason": "The user likes plans.", "evidence": "I like lists."},
               {"aspect": "Brevity", "reason": "The user reads on a phone.", "evidence": "Keep it short."}]

    def judge_through(backend):
        rows, scores = judge_answers([Answer(f"q{i}", q, "The user prefers short bulleted answers.", aspects, a)
                                      for i, (q, a) in enumerate(zip(questions, answers))], backend, params)
        if len(rows) != len(questions) * len(aspects):
            raise RuntimeError(f"judge: {len(rows)} rows for {len(questions) * len(aspects)} aspects")
        bad = [r for r in rows if not 0.0 <= r["score"] <= 2.0 or r["outcome"] != "logprob"]
        if bad:
            raise RuntimeError(f"judge: row out of range or not logprob: {bad[0]}")
        mass = sum(r["label_mass"] for r in rows) / len(rows)
        return f"{len(rows)} aspects, mean score {sum(scores.values()) / len(scores):.3f}, label mass {mass:.2e}"

    def generate_through(backend):
        greedy = backend.generate(chats, Sampling(temperature=0.0, max_new_tokens=16, seed=0))
        sampled = backend.generate(chats[:2], Sampling(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=0, n=2))
        if [len(g) for g in greedy] != [1] * len(chats) or [len(g) for g in sampled] != [2, 2]:
            raise RuntimeError("generate: wrong number of generations")
        toks = sum(g.completion_tokens for gs in greedy + sampled for g in gs)
        if toks == 0:
            raise RuntimeError("generate: no tokens generated")
        return f"{toks} tokens, e.g. {greedy[0][0].text[:30]!r}"

    def reward_len(completions, **_):  # one GRPO reward: prefer ~6 words
        return [-abs(len(completion_text(c).split()) - 6) / 6 for c in completions]

    state: dict = {}

    def step_build():
        build_tiny_model(model_dir)
        return f"{model_dir}"

    def step_generate():
        b = HFBackend(role, None, seed=0)
        state["dtype_seen"] = b.describe()["dtype"].replace("torch.", "")
        if b.device != device:
            raise RuntimeError(f"backend placed the model on {b.device}, expected {device}")
        try:
            return generate_through(b)
        finally:
            state["backend"] = b  # the judge step reuses the loaded weights (as BackendPool would)

    def step_judge():
        b = state.pop("backend", None) or HFBackend(judge_role, None, seed=0)
        return judge_through(b.for_role(judge_role))

    def fit(objective, rows, name, init_adapter=None, grpo=None):
        out = root / name
        res = training.fit_and_export(objective, rows, role, None, tcfg, out, root / f"{name}.work", seed=0,
                                      init_adapter=init_adapter, report_to=[], grpo=grpo)
        if not (out / "adapter" / "adapter_model.safetensors").exists():
            raise RuntimeError(f"{objective}: no adapter exported under {out}")
        if res.get("steps") != (tcfg.max_steps if grpo is None else 1):
            raise RuntimeError(f"{objective}: ran {res.get('steps')} steps")
        state[name] = str(out / "adapter")
        return f"{res['steps']} steps, loss {res['train_loss']}"

    def step_sft():
        rows = [training.sft_row(c, a) for c, a in zip(chats, answers)]
        return fit("sft", rows, "sft")

    def step_dpo():
        rows = [training.dpo_row(c, a, "I do not know.") for c, a in zip(chats, answers)]
        return fit("dpo", rows, "dpo", init_adapter=state["sft"])

    def step_grpo():
        nonlocal tcfg
        rows = [{"prompt": c} for c in chats]
        saved, tcfg = tcfg, tcfg.model_copy(update={"max_steps": 1})
        try:
            return fit("grpo", rows, "grpo", grpo=training.GRPOSettings(
                reward_funcs=[reward_len], num_generations=2, beta=0.04, max_completion_length=12, temperature=1.0))
        finally:
            tcfg = saved

    def step_reload():
        # The adapter trained (some lora_B weight left its zero init), and the backend serves it
        # merged into the weights (hf.load_model_and_tokenizer): they differ from the base model's.
        from safetensors.torch import load_file

        saved = load_file(str(Path(state["dpo"], "adapter_model.safetensors")))
        moved = sum(float(t.abs().sum()) for n, t in saved.items() if "lora_B" in n)
        if moved == 0.0:
            raise RuntimeError("adapter: every lora_B weight is zero (training changed nothing)")
        b = HFBackend(role.model_copy(update={"adapter": state["dpo"]}), None, seed=0)
        base = HFBackend(role, None, seed=0)
        changed = sum(not torch.equal(p, q) for p, q in zip(b.model.parameters(), base.model.parameters()))
        del base
        if changed == 0:
            raise RuntimeError("adapter: the served weights equal the base model's (the adapter was not applied)")
        g = generate_through(b)
        j = judge_through(b.for_role(judge_role.model_copy(update={"adapter": state["dpo"]})))
        return f"|lora_B| {moved:.3g}, {changed} merged tensors; {g.split(',')[0]}; {j.split(',')[0]}"

    steps = [("build", step_build, [], "float32"), ("generate", step_generate, ["build"], infer_dtype),
             ("judge", step_judge, ["build"], infer_dtype), ("sft", step_sft, ["build"], fit_dtype),
             ("dpo", step_dpo, ["sft"], fit_dtype), ("grpo", step_grpo, ["build"], fit_dtype),
             ("reload", step_reload, ["dpo"], infer_dtype)]
    if cuda:
        log(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        log(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    log(f"work folder {root}")

    results: dict[str, tuple] = {}
    failures: list[str] = []
    t_all = time.perf_counter()
    for name, fn, needs, dtype in steps:
        missing = [n for n in needs if results.get(n, (None,))[0] != "ok"]
        if missing:
            results[name] = ("skip", 0.0, None, dtype, f"needs {', '.join(missing)}")
            continue
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs: keep stdout for the table
                detail = fn()
            status = "ok"
        except Exception as e:  # noqa: BLE001 - each step reports its own failure
            traceback.print_exc(file=sys.stderr)
            detail = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            status = "FAIL"
            failures.append(f"{name}: {detail}")
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        if name == "generate" and status == "ok" and state.get("dtype_seen") != dtype:
            status, detail = "FAIL", f"weights are {state.get('dtype_seen')}, expected {dtype}"
            failures.append(f"{name}: {detail}")
        results[name] = (status, secs, peak, dtype, detail)
        log(f"{name}: {status} in {secs:.1f}s: {detail}")
    total = time.perf_counter() - t_all

    print(f"{'step':<9} {'device':<6} {'dtype':<9} {'seconds':>8} {'peak GPU MiB':>12}  ok")
    for name, _, _, _ in steps:
        status, secs, peak, dtype, detail = results[name]
        print(f"{name:<9} {device:<6} {dtype:<9} {secs:>8.1f} {('-' if peak is None else f'{peak:.1f}'):>12}  {status}")
    print(f"{'total':<9} {device:<6} {'':<9} {total:>8.1f} {'':>12}  {'ok' if not failures else 'FAIL'}")
    for name, _, _, _ in steps:
        print(f"  {name}: {results[name][4]}")
    sys.stdout.flush()
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    if failures:
        skipped = [n for n, r in results.items() if r[0] == "skip"]
        print(f"gpu_check: FAIL {failures[0]}" + (f" (also {len(failures) - 1} more)" if len(failures) > 1 else "")
              + (f"; skipped {', '.join(skipped)}" if skipped else ""))
        return 1
    if budget and total > budget:
        print(f"gpu_check: FAIL took {total:.0f}s, over the {budget:.0f}s budget")
        return 2
    print(f"gpu_check: ok, {len(steps)} steps on {device} in {total:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - an import or setup failure: one line, traceback on stderr
        traceback.print_exc(file=sys.stderr)
        print(f"gpu_check: FAIL setup: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
        sys.exit(1)
