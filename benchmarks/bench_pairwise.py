"""Pairwise preference accuracy's likelihood pass: shared prompt vs every sequence in full.

`preferences.pair_margins` scores each preference pair as two `answer_logprobs` rows (chosen,
rejected) after one prompt, and a user's pairs follow the same prompt. The hf backend computes that
prompt once and continues each answer from a copy of its KV cache (`shared_prefix_groups`, as the
judge's aspects); with the sharing off (`MIN_SHARED_PREFIX` out of reach) every row is a full
sequence in left-padded batches, the code before the sharing. Both paths run interleaved on the same
pairs of the controlled-persona benchmark (data/persona test split, RAG prompt with the user's first
k history items, the evaluate stage's prompt), median of --repeats runs each.

    python benchmarks/bench_pairwise.py [--records 8] [--repeats 3] [--out benchmarks/RESULTS_pairwise.md]

Needs models/embedded (`dvc repro base_model`). About 4 minutes on an idle 2-core CPU with the
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


def pair_cases(params, n_records: int):
    from personal_nlf import prompts
    from personal_nlf.data import load_split
    from personal_nlf.preferences import PairCase

    cases = []
    for domain in params.data.domains:
        recs, _ = load_split(str(REPO / "data" / "persona"), domain, "test", max_records=n_records)
        for r in recs:
            own = [p.text for p in r.profile][:params.retrieval.k]
            cases += [PairCase(domain, r.id, prompts.rag(r.question, own), p.chosen, p.rejected) for p in r.pairs]
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=8, help="test records per domain of data/persona")
    ap.add_argument("--domains", type=int, default=1, help="how many of params.yaml's domains")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models-dir", default="models/embedded")
    ap.add_argument("--params", default="params.yaml", help="the policy role, retrieval.k and the domains")
    ap.add_argument("--out", default="benchmarks/RESULTS_pairwise.md")
    args = ap.parse_args(argv)

    from personal_nlf.config import load_params
    from personal_nlf.llm import hf
    from personal_nlf.preferences import pair_margins

    params = load_params(args.params)
    params = params.model_copy(update={"data": params.data.model_copy(update={"domains": params.data.domains[:args.domains]})})
    cases = pair_cases(params, args.records)
    backend = hf.HFBackend(params.models.policy, args.models_dir, seed=params.seed)
    pair_margins(backend.answer_logprobs, cases[:2])  # warm-up
    shared_min = hf.MIN_SHARED_PREFIX
    paths = {"shared prompt": shared_min, "full sequences": 10**9}
    times: dict[str, list[float]] = {k: [] for k in paths}
    margins = {}
    load_start = os.getloadavg()
    for _ in range(args.repeats):
        for name, min_prefix in paths.items():
            hf.MIN_SHARED_PREFIX = min_prefix
            t = time.perf_counter()
            margins[name] = pair_margins(backend.answer_logprobs, cases)
            times[name].append(time.perf_counter() - t)
            print(f"{name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    hf.MIN_SHARED_PREFIX = shared_min
    med = {k: statistics.median(v) for k, v in times.items()}
    shared, full = margins["shared prompt"], margins["full sequences"]
    diff = max(abs(a - b) for a, b in zip(shared, full))
    flips = sum((a > 0) != (b > 0) for a, b in zip(shared, full))
    tokens = [len(backend.tok(backend.render(c.prompt), add_special_tokens=False)["input_ids"]) for c in cases]
    ratio = med["shared prompt"] / med["full sequences"]
    title = "Benchmark: pairwise preference likelihoods, shared prompt vs full sequences"
    L = provenance_head(title, REPO, argv=argv) + [
         f"- Policy: {params.models.policy.model} (batch_size {params.models.policy.batch_size}), "
         f"{len(cases)} pairs of {len({(c.domain, c.id) for c in cases})} test users of data/persona "
         f"({', '.join(params.data.domains)}), RAG prompt with k = {params.retrieval.k}: "
         f"prompt tokens mean {statistics.mean(tokens):.0f}",
         f"- Load average at start {load_start[0]:.2f}", "",
         "| path | runs (s) | median s | s/pair |", "|---|---|---:|---:|"]
    L += [f"| {k} | {', '.join(f'{t:.1f}' for t in v)} | {med[k]:.1f} | {med[k] / len(cases):.3f} |"
          for k, v in times.items()]
    L += ["", f"Shared / full time: **{ratio:.2f}**. Margins (log p(chosen) - log p(rejected)) agree within "
              f"{diff:.1e}; pairs whose sign differs: {flips} of {len(cases)}.", ""]
    text = "\n".join(L)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
