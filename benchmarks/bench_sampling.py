"""N sampled answers per prompt: the prompt's prefill shared by its N samples vs computed N times.

Offline RL's rollout samples N answers to each train user's RAG prompt, VAC's signal step N
feedbacks per answer, summary mode's generator N answers per record. The hf backend computes each
prompt once and copies its KV cache N times (`HFBackend._prefill`); with the sharing off
(`hf.SHARE_SAMPLE_PREFILL = False`) generate()'s num_return_sequences computes every prompt N
times, the code before the sharing. Both run interleaved on offline RL's rollout of the default
(data/persona train users, RAG prompt with k retrieved history items, N = nlf.n_feedback,
temperature offline_rl.temperature, the policy role of params.yaml), median of --repeats runs each.

    python benchmarks/bench_sampling.py [--records 2] [--repeats 3] [--out benchmarks/RESULTS_sampling.md]

Needs models/embedded (`dvc repro base_model`). About 2 minutes on an idle 2-core CPU with the
defaults. Run it on an idle machine: on 2 shared cores, timings under load mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import provenance_head  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rollout_prompts(params, n_records: int) -> list:
    from personal_nlf import prompts
    from personal_nlf.data import load_split

    out = []
    for domain in params.data.domains:
        recs, _ = load_split(str(REPO / "data" / "persona"), domain, "train", max_records=n_records)
        out += [prompts.rag(r.question, [p.text for p in r.profile][:params.retrieval.k]) for r in recs]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2, help="train records per domain of data/persona")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models-dir", default="models/embedded")
    ap.add_argument("--params", default="params.yaml", help="the policy role, N, temperature, retrieval.k, domains")
    ap.add_argument("--out", default="benchmarks/RESULTS_sampling.md")
    args = ap.parse_args(argv)

    from personal_nlf.config import load_params
    from personal_nlf.llm import hf
    from personal_nlf.llm.base import Sampling

    params = load_params(args.params)
    msgs = rollout_prompts(params, args.records)
    role = params.models.policy
    n = params.nlf.n_feedback
    sampling = Sampling(temperature=params.offline_rl.temperature, max_new_tokens=role.max_new_tokens,
                        seed=params.seed, n=n)
    backend = hf.HFBackend(role, args.models_dir, seed=params.seed)
    backend.generate(msgs[:1], Sampling(temperature=1.0, max_new_tokens=2, n=2))  # warm-up
    paths = {"shared prefill": True, "num_return_sequences": False}
    times: dict[str, list[float]] = {k: [] for k in paths}
    outs = {}
    load_start = os.getloadavg()
    for _ in range(args.repeats):
        for name, share in paths.items():
            hf.SHARE_SAMPLE_PREFILL = share
            t = time.perf_counter()
            outs[name] = backend.generate(msgs, sampling)
            times[name].append(time.perf_counter() - t)
            print(f"{name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    hf.SHARE_SAMPLE_PREFILL = True
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = outs["shared prefill"], outs["num_return_sequences"]
    same = sum(x.text == y.text for ga, gb in zip(a, b) for x, y in zip(ga, gb))
    tokens = {k: sum(g.completion_tokens for gs in v for g in gs) for k, v in outs.items()}
    prompt_tok = [gs[0].prompt_tokens for gs in a]
    ratio = med["shared prefill"] / med["num_return_sequences"]
    title = "Benchmark: N samples per prompt, shared prefill vs num_return_sequences"
    L = provenance_head(title, REPO, argv=argv) + [
         f"- Sampling: {role.model} (batch_size {role.batch_size}, {backend.describe().get('dtype')}), "
         f"{len(msgs)} RAG prompts of data/persona train users x N = {n} samples at temperature "
         f"{sampling.temperature}, up to {sampling.max_new_tokens} new tokens: prompt tokens mean "
         f"{statistics.mean(prompt_tok):.0f}",
         f"- Load average at start {load_start[0]:.2f}", "",
         "| path | runs (s) | median s | generated tokens | tokens/s |", "|---|---|---:|---:|---:|"]
    L += [f"| {k} | {', '.join(f'{t:.1f}' for t in v)} | {med[k]:.1f} | {tokens[k]} | {tokens[k] / med[k]:.1f} |"
          for k, v in times.items()]
    L += ["", f"Shared / num_return_sequences time: **{ratio:.2f}**. Samples identical in both paths: {same} of "
              f"{len(msgs) * n} (same seed; the prefill's batch shapes differ, so bf16 rounding can change a "
              f"sampled token and what follows).", ""]
    text = "\n".join(L)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
