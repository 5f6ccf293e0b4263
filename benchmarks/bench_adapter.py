"""Serving a LoRA adapter for inference: merged into the weights vs PEFT's unmerged layers.

The hf backend merges an adapter into the weights in fp32 and then casts to the inference dtype
(`llm/hf.load_model_and_tokenizer`, `adapter_serving: merged`). Before, it kept PEFT's LoRA layers
on base weights already in the inference dtype (`adapter_serving: lora`). This measures both on a
trained adapter, in one run:

- *fidelity*: the adapter's effect on its own training targets, log p(target | prompt) with the
  adapter minus without it, for each way of serving it, against the same effect in fp32 (unmerged,
  the reference). Under bf16, a LoRA output added to a bf16 activation is rounded away where it is
  under half an ulp; a merged weight keeps its change where it crosses one, and the rounding of
  single weights averages out over a dot product.
- *speed*: greedy generation of the same prompts, unmerged vs merged, in the inference dtype,
  interleaved, median of --repeats.

    python benchmarks/bench_adapter.py [--adapter outputs/nlf/iter_2/train_policy/adapter]
        [--targets outputs/nlf/iter_2/train_policy/policy_data.jsonl] [--out benchmarks/RESULTS_adapter.md]

The defaults are VAC's policy adapter of iteration 2 and its training rows (prompt, revised
target), which `make repro` writes. About 2 minutes on an idle 2-core CPU.
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


def adapter_args(doc: str, out: str) -> argparse.ArgumentParser:
    """The arguments both adapter benchmarks take (this one and bench_vllm_adapter.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default="outputs/nlf/iter_2/train_policy/adapter")
    ap.add_argument("--targets", default="outputs/nlf/iter_2/train_policy/policy_data.jsonl",
                    help="JSONL rows with `prompt` (messages) and `revised` (the target answer)")
    ap.add_argument("--max-rows", type=int, default=16)
    ap.add_argument("--models-dir", default="models/embedded")
    ap.add_argument("--params", default="params.yaml", help="the policy role (model, max_new_tokens, batch size)")
    ap.add_argument("--out", default=out)
    return ap


def main(argv=None) -> int:
    ap = adapter_args(__doc__, "benchmarks/RESULTS_adapter.md")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from personal_nlf.config import load_params
    from personal_nlf.io import read_jsonl
    from personal_nlf.llm import hf
    from personal_nlf.llm.base import Sampling

    t_start = time.perf_counter()
    load_avg = os.getloadavg()
    role = load_params(args.params).models.policy
    rows = read_jsonl(args.targets)[:args.max_rows]
    prompts_, targets = [r["prompt"] for r in rows], [r["revised"] for r in rows]
    infer = str(hf.pick_dtype(role.dtype, hf.pick_device(role.device))).replace("torch.", "")

    def backend(dtype: str, adapter: str | None, merged: bool) -> hf.HFBackend:
        # Unmerged (adapter_serving: lora): PEFT's LoRA layers on base weights in `dtype`.
        return hf.HFBackend(role.model_copy(update={"dtype": dtype, "adapter": adapter,
                                                    "adapter_serving": "merged" if merged else "lora"}),
                            args.models_dir)

    def logp(b):
        return torch.tensor(b.answer_logprobs(prompts_, targets))

    base32 = logp(backend("float32", None, False))
    ref = logp(backend("float32", args.adapter, False)) - base32
    base = logp(backend(infer, None, False))
    ways = {"unmerged": backend(infer, args.adapter, False), "merged": backend(infer, args.adapter, True)}
    fidelity = {}
    for name, b in ways.items():
        eff = logp(b) - base
        fidelity[name] = (eff, float((eff - ref).abs().mean()), float(eff.sum() / ref.sum()))
    merged32 = logp(backend("float32", args.adapter, True)) - base32

    greedy = Sampling(temperature=0.0, max_new_tokens=role.max_new_tokens, seed=0)
    runs: dict[str, list[float]] = {n: [] for n in ways}
    outs: dict[str, list[str]] = {}
    tokens: dict[str, int] = {}
    ways["unmerged"].generate(prompts_[:2], greedy)  # warm-up
    for _ in range(args.repeats):
        for name, b in ways.items():
            t0 = time.perf_counter()
            gens = b.generate(prompts_, greedy)
            runs[name].append(time.perf_counter() - t0)
            outs[name] = [g[0].text for g in gens]
            tokens[name] = sum(g[0].completion_tokens for g in gens)

    med = {n: statistics.median(v) for n, v in runs.items()}
    same = sum(a == b for a, b in zip(outs["unmerged"], outs["merged"]))
    lines = [
        *provenance_head("Serving a LoRA adapter: merged vs unmerged", REPO),
        f"- Model: {role.model} + adapter `{args.adapter}`; inference dtype {infer} (dtype {role.dtype})",
        f"- Rows: {len(rows)} of `{args.targets}` (prompt, revised target)",
        f"- Total benchmark runtime: {time.perf_counter() - t_start:.0f} s; load average at start "
        f"{load_avg[0]:.2f}/{load_avg[1]:.2f}/{load_avg[2]:.2f}", "",
        "## Fidelity: the adapter's effect on log p(target | prompt)", "",
        "Effect = log p with the adapter − log p without it, per target; reference: fp32, unmerged.", "",
        "| serving | effect per target | mean abs. error vs fp32 | effect kept (sum / fp32 sum) |",
        "|---|---|---:|---:|",
        f"| fp32 unmerged (reference) | {', '.join(f'{x:.2f}' for x in ref.tolist())} | 0 | 1.00 |",
        *[f"| {infer} {name} | {', '.join(f'{x:.2f}' for x in eff.tolist())} | {err:.3f} | {kept:.2f} |"
          for name, (eff, err, kept) in fidelity.items()], "",
        f"fp32 merged vs fp32 unmerged: max |effect difference| {float((merged32 - ref).abs().max()):.1e} "
        "(merging itself is exact to rounding).", "",
        "## Speed: greedy generation of the same prompts", "",
        f"max_new_tokens {role.max_new_tokens}, batch_size {role.batch_size}, median of {args.repeats} interleaved runs.", "",
        "| serving | runs (s) | median s | generated tokens | tokens/s |", "|---|---|---:|---:|---:|",
        *[f"| {infer} {n} | {', '.join(f'{x:.2f}' for x in runs[n])} | {med[n]:.2f} | {tokens[n]} | "
          f"{tokens[n] / med[n]:.1f} |" for n in ways], "",
        f"merged / unmerged time: {med['merged'] / med['unmerged']:.2f}x; outputs identical: {same}/{len(rows)} "
        "(greedy; different rounding changes some continuations).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
