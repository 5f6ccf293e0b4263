"""Generation and judge benchmark on the embedded default (SmolLM2-135M-Instruct, hf backend).

Measured in one run, on the same RAG prompts of the prepared sample's test split (all domains):

1. hf backend throughput: batch_size=1 (one prompt at a time) vs batched, generated tokens/s.
2. stage overhead: the journaled stage path (generate_journaled + a real Journal + the evaluate
   stage's record builder) and HFBackend.generate vs a bare `model.generate` on the same batch.
3. judge: logprob vs generate method (judge_items, real Journal) on every rubric aspect with the
   RAG answers from 1-2 as responses: time per aspect, agreement, generate-method parse outcomes.

    python benchmarks/bench_generation.py [--n-prompts 18] [--max-new-tokens 48] \
        [--models-dir models/embedded] [--prepared outputs/prepared] [--index outputs/index] \
        [--out benchmarks/RESULTS.md]

Progress goes to stderr; the markdown table to stdout and --out (overwritten).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

T0 = time.perf_counter()
RATIOS: dict[str, float] = {}  # headline ratios of the last main() run, for benchmarks/run_all.py


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- helpers


def git_rev(repo: Path) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True,
                               text=True).stdout.strip()
        return rev + (" (src/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    mem = ""
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f", {round(kb / 2**20)} GiB"
    except (OSError, StopIteration):
        pass
    try:
        import torch

        gpu = "GPU: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001
        gpu = "no GPU"
    return f"{os.cpu_count()}-core CPU{mem}, {gpu}"


def provenance_head(title: str, repo: Path, python: str = "python", argv: list[str] | None = None) -> list[str]:
    """A results file's first lines: title, date, machine, the command as run, git revision.
    argv: the arguments main() was given, when not the command line's."""
    args = sys.argv[1:] if argv is None else argv
    cmd = " ".join(shlex.quote(a) for a in [python, Path(sys.argv[0]).as_posix(), *args])
    return [f"# {title}", "", f"- Date: {dt.date.today().isoformat()}", f"- Machine: {machine()}",
            f"- Command: `{cmd}`", f"- Git revision: {git_rev(repo)}"]


def median_time(fn, repeats: int, label: str):
    """Run fn() `repeats` times; return (median seconds, all seconds, last result)."""
    times, res = [], None
    for r in range(repeats):
        t = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t)
        log(f"  {label} run {r + 1}/{repeats}: {times[-1]:.2f}s")
    return statistics.median(times), times, res


def interleaved(fns: dict, repeats: int):
    """Time several variants round-robin (A B C, A B C, ...) so drift hits all alike."""
    times = {k: [] for k in fns}
    results = {}
    for r in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
            log(f"  {name} run {r + 1}/{repeats}: {times[name][-1]:.2f}s")
    return {k: statistics.median(v) for k, v in times.items()}, times, results


def fmt_times(ts: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in ts)


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def spearman(a: list[float], b: list[float]) -> str:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return "n/a (constant input)" if len(a) >= 3 else f"n/a ({len(a)} items)"
    rho, p = spearmanr(a, b)
    if rho is None or (isinstance(rho, float) and math.isnan(rho)):
        return "n/a"
    return f"{rho:.3f} (p={p:.2g}, n={len(a)})"


# ---------------------------------------------------------------------------------------- bare loop


def bare_generate(model, tok, messages: list, max_new_tokens: int):
    """The minimal loop the stage path is compared with: chat template, left padding, one
    greedy model.generate, decode up to the first eos. Returns (texts, generated token count)."""
    import torch

    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    tok.padding_side = "left"
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tok.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    outs, n_tok = [], 0
    for row in new:
        eos = (row == tok.eos_token_id).nonzero()
        n = int(eos[0]) + 1 if len(eos) else int((row != tok.pad_token_id).sum())
        n_tok += n
        outs.append(tok.decode(row[:n], skip_special_tokens=True).strip())
    return outs, n_tok


# ---------------------------------------------------------------------------------------- main


def gen_texts(backend, messages: list, sampling) -> tuple[list[str], int]:
    """One batched generation: the texts and the generated tokens."""
    gens = backend.generate(messages, sampling)
    return [g[0].text for g in gens], sum(g[0].completion_tokens for g in gens)


def pick_records(recs, n: int):
    """Round-robin over domains so any n covers all of them."""
    by_dom: dict[str, list] = {}
    for er in recs:
        by_dom.setdefault(er.domain, []).append(er)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by_dom.values()):
        for v in by_dom.values():
            if i < len(v) and len(out) < n:
                out.append(v[i])
        i += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=18, help="RAG prompts from the test split (all domains)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", default="1,8",
                    help="hf backend batch sizes to compare, besides batch_size = n-prompts (comma list)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per batched measurement (median)")
    ap.add_argument("--seq-repeats", type=int, default=2,
                    help="timed runs of the batch_size=1 pass (each already averages n-prompts calls)")
    ap.add_argument("--judge-repeats", type=int, default=1, help="timed runs of each judge method")
    ap.add_argument("--judge-records", type=int, default=None,
                    help="judge every rubric aspect of only the first N of the prompts' records (round-robin "
                         "over domains; default: all of them). The generate method retries up to 4 times")
    ap.add_argument("--skip-judge", action="store_true")
    ap.add_argument("--models-dir", default="models/embedded")
    ap.add_argument("--prepared", default="outputs/prepared")
    ap.add_argument("--index", default="outputs/index")
    ap.add_argument("--params", default="params.yaml", help="seed, judge role and retry temperatures come from here")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    import torch
    import transformers

    from personal_nlf import prompts
    from personal_nlf.config import JudgeConfig, load_params
    from personal_nlf.evaluate import _gen_record, load_eval_records, policy_prompt
    from personal_nlf.generation import generate_journaled
    from personal_nlf.io import Journal, stable_hash
    from personal_nlf.judge import JudgeItem, judge_items, outcome_counts
    from personal_nlf.llm.base import Sampling
    from personal_nlf.llm import hf as hf_backend
    from personal_nlf.llm.hf import HFBackend

    repo = Path(__file__).resolve().parent.parent
    rev = git_rev(repo)  # at start: the code that is imported now is the code measured
    load_start = os.getloadavg()
    if load_start[0] > 0.8:
        log(f"warning: 1-min load average {load_start[0]:.2f} before start; other processes skew the timings")
    params = load_params(args.params)
    recs_all = load_eval_records(args.prepared, args.index, params.data.domains, args.split)
    recs = pick_records(recs_all, args.n_prompts)
    if len(recs) < args.n_prompts:
        log(f"only {len(recs)} {args.split} records available; using all of them")
    n = len(recs)
    items = [(er.key, policy_prompt("rag", er)) for er in recs]
    messages = [m for _, m in items]
    by_key = {er.key: er for er in recs}
    msg_by_key = dict(items)
    domains = Counter(er.domain for er in recs)
    log(f"{n} RAG prompts ({dict(domains)}), max_new_tokens={args.max_new_tokens}")

    # ------------------------------------------------------------------ load the policy backend
    policy = params.models.policy.model_copy(update={"max_new_tokens": args.max_new_tokens, "temperature": 0.0,
                                                     "batch_size": n})
    t = time.perf_counter()
    backend = HFBackend(policy, args.models_dir, seed=params.seed)
    load_s = time.perf_counter() - t
    log(f"policy backend loaded in {load_s:.1f}s (device {backend.device}, chat={backend.chat})")
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens, seed=params.seed)
    prompt_lens = [len(backend.tok(backend.render(m), add_special_tokens=False)["input_ids"]) for m in messages]
    truncated = sum(1 for x in prompt_lens if x > policy.max_input_tokens)

    def with_bs(bs: int):
        backend.role = policy.model_copy(update={"batch_size": bs})

    def backend_gen(bs: int):
        def run():
            with_bs(bs)
            return gen_texts(backend, messages, sampling)
        return run

    journals: list[Journal] = []
    tmp = tempfile.TemporaryDirectory(prefix="bench_gen_")

    def journaled():
        with_bs(n)
        fp = stable_hash({"method": "rag", "role": policy.model_dump(), "sampling": sampling.to_dict(),
                          "prompts": messages, "run": len(journals)})
        j = Journal(Path(tmp.name) / f"generations_{len(journals)}.jsonl.partial", fp, log=lambda *_: None)
        journals.append(j)
        out = generate_journaled(
            backend, items, sampling, j,
            lambda key, gens: _gen_record(by_key[key], policy, backend, sampling, "rag", msg_by_key[key], gens[0]),
            chunk_size=n, desc="rag")
        j.close()
        return [out[k]["text"] for k, _ in items], sum(out[k]["completion_tokens"] for k, _ in items), out

    def bare():
        return bare_generate(backend.model, backend.tok, messages, args.max_new_tokens)

    # ------------------------------------------------------------------ warm-up
    log("warm-up (one batched pass)")
    t = time.perf_counter()
    backend_gen(n)()
    warm_s = time.perf_counter() - t
    log(f"warm-up {warm_s:.1f}s")

    # ------------------------------------------------------------------ 2. stage overhead (same batch)
    log(f"[2] stage path vs bare model.generate, batch of {n}, {args.repeats} interleaved runs")
    med, times, res = interleaved({"bare": bare, "backend": backend_gen(n), "journaled": journaled}, args.repeats)
    bare_texts, bare_tok = res["bare"]
    be_texts, be_tok = res["backend"]
    j_texts, j_tok, answers = res["journaled"]
    same_be = sum(a == b for a, b in zip(bare_texts, be_texts))
    same_j = sum(a == b for a, b in zip(bare_texts, j_texts))

    # ------------------------------------------------------------------ 1. batched vs one at a time
    extra_bs = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    extra_bs = [b for b in dict.fromkeys(extra_bs) if b != n]
    gen_rows = {n: (med["backend"], times["backend"], be_tok)}
    seq_same = None
    for bs in sorted(extra_bs, reverse=True):
        reps = args.seq_repeats if bs == 1 else args.repeats
        log(f"[1] hf backend batch_size={bs}, {reps} run(s)")
        m, ts, (texts, tok_n) = median_time(backend_gen(bs), reps, f"batch_size={bs}")
        gen_rows[bs] = (m, ts, tok_n)
        if bs == 1:
            seq_same = sum(a == b for a, b in zip(texts, be_texts))

    # ------------------------------------------------------------------ 1b. dtype auto vs float32
    dtype_row = None
    auto_dtype = str(next(backend.model.parameters()).dtype).replace("torch.", "")
    if auto_dtype != "float32":  # dtype auto chose bf16 (CUDA, or a CPU with native bf16): time fp32 beside it
        log(f"[1b] hf backend in float32 vs {auto_dtype}, batch of {n}, {args.repeats} run(s)")
        b32 = HFBackend(policy.model_copy(update={"dtype": "float32"}), args.models_dir, seed=params.seed)
        b32.generate(messages[:1], sampling)  # warm-up
        m32, ts32, (texts32, tok32) = median_time(lambda: gen_texts(b32, messages, sampling), args.repeats, "float32")
        b32.close()
        dtype_row = (auto_dtype, m32, ts32, tok32, sum(a == b for a, b in zip(texts32, be_texts)))

    # ------------------------------------------------------------------ provenance cost (stage setup)
    t = time.perf_counter()
    backend.describe()
    describe_s = time.perf_counter() - t
    log(f"backend.describe() {describe_s:.2f}s")

    # ------------------------------------------------------------------ 3. judge methods
    judge_res = None
    if not args.skip_judge:
        jrole = params.models.judge
        t = time.perf_counter()
        jb = HFBackend(jrole, args.models_dir, seed=params.seed)
        log(f"judge backend loaded in {time.perf_counter() - t:.1f}s (batch_size={jrole.batch_size}, "
            f"max_new_tokens={jrole.max_new_tokens})")
        jitems = []
        jrecs = recs[:args.judge_records]
        for er in jrecs:
            for a_idx, a in enumerate(er.record.rubric_aspects):
                jitems.append(JudgeItem(f"{er.key}#{a_idx}", er.record.question, er.record.narrative, a.aspect,
                                        a.reason, a.evidence, answers[er.key]["answer"]))
        chunk = max(16, jrole.batch_size)  # as evaluate.judge_answers
        jb.choice_logprobs([jitems[0].messages()], prompts.JUDGE_ANSWER_PREFIX, ["0", "1", "2"])  # warm-up
        jlens = [len(jb.tok(jb.render(it.messages()), add_special_tokens=False)["input_ids"]) for it in jitems]
        scored, jtimes = {}, {}
        shared_min = hf_backend.MIN_SHARED_PREFIX
        judge_dtype = str(next(jb.model.parameters()).dtype).replace("torch.", "")
        # "logprob (full)", the code before this turn: every aspect's prompt computed in full (no
        # shared KV cache per answer), in float32 (dtype auto's choice on CPU then). "logprob
        # float32" isolates the shared prefix when dtype auto now picks bf16.
        own32 = judge_dtype != "float32"  # a second, float32 judge backend for the before rows
        jb32 = HFBackend(jrole.model_copy(update={"dtype": "float32"}), args.models_dir, seed=params.seed) if own32 else jb
        methods = {"logprob": jb, "logprob (full)": jb32, "generate": jb}
        if own32:
            jb32.choice_logprobs([jitems[0].messages()], prompts.JUDGE_ANSWER_PREFIX, ["0", "1", "2"])  # warm-up
            methods["logprob float32"] = jb32
        for method, judge_backend in methods.items():
            hf_backend.MIN_SHARED_PREFIX = 10**9 if method == "logprob (full)" else shared_min
            cfg = JudgeConfig(method=method.split()[0], retry_temperatures=params.judge.retry_temperatures)
            log(f"[3] judge method={method}: {len(jitems)} aspects, {args.judge_repeats} run(s)")
            runs = []
            for r in range(args.judge_repeats):
                jj = Journal(Path(tmp.name) / f"judge_{method}_{r}.jsonl.partial", f"{method}-{r}", log=lambda *_: None)
                t = time.perf_counter()
                scored[method] = judge_items(jitems, judge_backend, cfg, jrole, jj, seed=params.seed, chunk_size=chunk)
                runs.append(time.perf_counter() - t)
                jj.close()
                log(f"  {method} run {r + 1}/{args.judge_repeats}: {runs[-1]:.2f}s")
            jtimes[method] = runs
        hf_backend.MIN_SHARED_PREFIX = shared_min
        keys = [it.key for it in jitems]
        same_dtype = "logprob float32" if own32 else "logprob"  # the shared path at the before's dtype
        full_same = max(abs(scored[same_dtype][k]["score"] - scored["logprob (full)"][k]["score"]) for k in keys)
        dtype_diff = (max(abs(scored["logprob"][k]["score"] - scored["logprob float32"][k]["score"]) for k in keys)
                      if own32 else None)
        lp = [scored["logprob"][k]["score"] for k in keys]
        gen = [scored["generate"][k]["score"] for k in keys]
        ok = [i for i, k in enumerate(keys) if not scored["generate"][k]["outcome"].startswith("failed")]
        attempts = Counter(scored["generate"][k]["attempts"] for k in keys)
        judge_res = dict(
            n=len(keys), n_records=len(jrecs), chunk=chunk, role=jrole, times=jtimes, full_same=full_same, outcomes=outcome_counts(list(scored["generate"].values())),
            attempts=dict(sorted(attempts.items())), lp=lp, gen=gen, ok=ok, prompt_tokens=statistics.mean(jlens),
            gen_calls=sum(scored["generate"][k]["attempts"] for k in keys),
            dist_gen=dict(sorted(Counter(int(g) for g in gen).items())),
            dist_lp=dict(sorted(Counter(round_half_up(x) for x in lp).items())), dtype=judge_dtype,
            dtype_diff=dtype_diff)
        jb.close()
        if own32:
            jb32.close()
    for j in journals:
        j.close()
    tmp.cleanup()
    total_s = time.perf_counter() - T0
    load_end = os.getloadavg()

    # ------------------------------------------------------------------ report
    L: list[str] = []
    L += ["# Benchmark: generation and judge on the embedded default", ""]
    L += [f"- Date: {dt.date.today().isoformat()}",
          f"- Machine: {machine()} (torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.python_version()})",
          f"- Command: `{command}`",
          f"- Git revision: {rev}",
          f"- Model: {policy.model} ({next(backend.model.parameters()).dtype}, "
          f"device {backend.device}), greedy, max_new_tokens={args.max_new_tokens}",
          f"- Prompts: {n} RAG prompts of the `{args.split}` split "
          f"({', '.join(f'{d} {c}' for d, c in domains.items())}); prompt tokens mean {statistics.mean(prompt_lens):.0f}, "
          f"min {min(prompt_lens)}, max {max(prompt_lens)}; truncated {truncated}",
          f"- Total benchmark runtime: {total_s:.0f} s (policy load {load_s:.1f} s, warm-up {warm_s:.1f} s)",
          f"- Load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, at end "
          f"{'/'.join(f'{x:.2f}' for x in load_end)} (this benchmark itself keeps ~2 cores busy)", ""]

    L += ["## 1. hf backend: batched vs one prompt at a time", "",
          "Same prompts, same max_new_tokens; tokens = generated tokens up to and including eos.", "",
          "| batch_size | runs (s) | median s | generated tokens | tokens/s | s/prompt | speed-up vs batch_size=1 |",
          "|---:|---|---:|---:|---:|---:|---:|"]
    base_tps = gen_rows[1][2] / gen_rows[1][0] if 1 in gen_rows else None
    for bs in sorted(gen_rows):
        m, ts, tok_n = gen_rows[bs]
        tps = tok_n / m
        sp = f"{tps / base_tps:.2f}x" if base_tps else "n/a"
        L.append(f"| {bs}{' (= n)' if bs == n else ''} | {fmt_times(ts)} | {m:.2f} | {tok_n} | {tps:.1f} | {m / n:.2f} | {sp} |")
    if seq_same is not None:
        L += ["", f"batch_size=1 outputs identical to batch_size={n}: {seq_same}/{n} "
                  "(greedy; batched matmuls can flip near-ties)."]
    if dtype_row:
        auto_dtype, m32, ts32, tok32, same32 = dtype_row
        tps_auto, tps32 = gen_rows[n][2] / gen_rows[n][0], tok32 / m32
        L += ["", f"dtype `auto` loaded {auto_dtype} (bf16 on CUDA and on CPUs with native bf16, `llm/hf.pick_dtype`). "
                  f"The same batch of {n} in float32: runs {fmt_times(ts32)} s, median {m32:.2f} s, {tok32} tokens, "
                  f"{tps32:.1f} tokens/s; {auto_dtype} / float32 tokens/s: {tps_auto / tps32:.2f}x; "
                  f"outputs identical: {same32}/{n} (greedy; bf16 rounding changes some continuations)."]
        RATIOS[f"hf {auto_dtype} / float32, batch of {n} (tokens/s)"] = tps_auto / tps32
    L.append("")

    L += [f"## 2. Stage overhead on the same batch of {n} (chunk = batch = {n})", "",
          f"Median of {args.repeats} interleaved runs after one warm-up.", "",
          "| path | runs (s) | median s | generated tokens | tokens/s | vs bare |",
          "|---|---|---:|---:|---:|---:|"]
    rows2 = [("bare `model.generate` loop (inline)", "bare", bare_tok),
             ("`HFBackend.generate`", "backend", be_tok),
             ("`generate_journaled` + Journal (fsync) + `_gen_record`", "journaled", j_tok)]
    for label, key, tok_n in rows2:
        ratio = med[key] / med["bare"]
        L.append(f"| {label} | {fmt_times(times[key])} | {med[key]:.2f} | {tok_n} | {tok_n / med[key]:.1f} | "
                 f"{ratio:.3f} ({(ratio - 1) * 100:+.1f}%) |")
    over = med["journaled"] / med["bare"] - 1
    RATIOS["stage path / bare model.generate (time; goal <= 1.10)"] = med["journaled"] / med["bare"]
    if base_tps:
        RATIOS[f"hf batch_size={n} / batch_size=1 (tokens/s)"] = (gen_rows[n][2] / gen_rows[n][0]) / base_tps
    L += ["", f"Stage-path overhead vs bare: {over * 100:+.1f}% (goal: within 10%: "
              f"{'met' if over <= 0.10 else 'NOT met'}). Outputs identical to bare: backend {same_be}/{n}, "
              f"journaled {same_j}/{n}.",
          f"Outside the timed path, once per stage setup: `HFBackend.describe()` (provenance; hashes the model "
          f"folder) took {describe_s:.2f} s.", ""]

    if judge_res:
        jr = judge_res
        nj = jr["n"]
        L += ["## 3. Judge: logprob vs generate (JSON match_score, retries)", "",
              f"{nj} (question, aspect, response) items = every rubric aspect of "
              f"{'all ' if jr['n_records'] == n else ''}{jr['n_records']} records above; responses = "
              f"the RAG answers above. `judge_items` with a temp Journal, judge role from params.yaml "
              f"(batch_size={jr['role'].batch_size}, max_new_tokens={jr['role'].max_new_tokens}, chunk {jr['chunk']}), "
              f"retry temperatures {list(params.judge.retry_temperatures)}; judge prompt tokens mean "
              f"{jr['prompt_tokens']:.0f}.", "",
              "| method | runs (s) | median s | s/aspect | model calls | mean score (0-2) | score distribution |",
              "|---|---|---:|---:|---:|---:|---|"]
        mlp, mg = statistics.median(jr["times"]["logprob"]), statistics.median(jr["times"]["generate"])
        L.append(f"| logprob ({jr['dtype']}, shared prefix: after) | {fmt_times(jr['times']['logprob'])} | {mlp:.2f} | "
                 f"{mlp / nj:.3f} | {nj} forward passes | {statistics.mean(jr['lp']):.3f} | rounded: {jr['dist_lp']} |")
        L.append(f"| generate ({jr['dtype']}) | {fmt_times(jr['times']['generate'])} | {mg:.2f} | {mg / nj:.3f} | "
                 f"{jr['gen_calls']} generations | {statistics.mean(jr['gen']):.3f} | {jr['dist_gen']} |")
        if "logprob float32" in jr["times"]:
            m32 = statistics.median(jr["times"]["logprob float32"])
            L.append(f"| logprob (float32, shared prefix) | {fmt_times(jr['times']['logprob float32'])} | {m32:.2f} | "
                     f"{m32 / nj:.3f} | {nj} forward passes | max |score difference| vs {jr['dtype']} "
                     f"{jr['dtype_diff']:.1e} | |")
        mfull = statistics.median(jr["times"]["logprob (full)"])
        L.append(f"| logprob (float32, no shared prefix: before) | {fmt_times(jr['times']['logprob (full)'])} | "
                 f"{mfull:.2f} | {mfull / nj:.3f} | {nj} full forward passes | max |score difference| vs shared "
                 f"float32 {jr['full_same']:.1e} | |")
        L += ["", f"generate / logprob time per aspect: {mg / mlp:.1f}x; logprob after (shared prefix per answer, "
              f"dtype auto: {jr['dtype']}) / before (every prompt in full, float32): {mlp / mfull:.2f}x"
              + (f"; the shared prefix alone (both float32): {m32 / mfull:.2f}x"
                 if "logprob float32" in jr["times"] else ""), ""]
        RATIOS["judge generate / logprob (time per aspect)"] = mg / mlp
        RATIOS["judge logprob after / before (time per aspect; goal <= 0.5)"] = mlp / mfull
        ok = jr["ok"]
        fails = nj - len(ok)
        exact_all = sum(round_half_up(a) == int(b) for a, b in zip(jr["lp"], jr["gen"]))
        exact_ok = sum(round_half_up(jr["lp"][i]) == int(jr["gen"][i]) for i in ok)
        L += ["| agreement (logprob expected score vs generate score) | all items (failures scored 0) | "
              "parsed items only |", "|---|---|---|",
              f"| Spearman rho | {spearman(jr['lp'], jr['gen'])} | "
              f"{spearman([jr['lp'][i] for i in ok], [jr['gen'][i] for i in ok])} |",
              f"| exact match, round(expected) == score | {exact_all}/{nj} = {exact_all / nj:.1%} | "
              + (f"{exact_ok}/{len(ok)} = {exact_ok / len(ok):.1%} |" if ok else "n/a (0 parsed) |"), "",
              f"generate method: parse-failure rate {fails}/{nj} = {fails / nj:.1%}; outcomes {jr['outcomes']}; "
              f"attempts needed {jr['attempts']}.", ""]

    L += ["Rows are explained in benchmarks/README.md.", ""]
    text = "\n".join(L)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    log(f"wrote {args.out}; total {total_s:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
