"""LoRA SFT on CPU: TRL's fused LM head over labelled positions only vs over every position.

TRL's SFT, DPO and GRPO compute per-token log-probs through its fused LM head. Off Triton it
projects every position, prompt and padding included, onto the vocabulary; the project makes it
take TRL's own labelled-positions-only branch on CPU (`training.score_label_positions_only_on_cpu`).
Both run interleaved through `training.train` as the loops call it, on the rows the loops train
the policy on (offline RL, VAC): the RAG prompt of a train user of data/persona (k retrieved
history items) and that user's persona-fitting answer in the JSON answer format, with the `train`
settings of params.yaml. Median of --repeats runs each; the loss curves of the two must agree.

    python benchmarks/bench_training.py [--records 2] [--repeats 3] [--out benchmarks/RESULTS_training.md]

Needs models/embedded (`dvc repro base_model`). About 4 minutes on an idle 2-core CPU with the
defaults. Run it on an idle machine: on 2 shared cores, timings under load mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import provenance_head  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def policy_rows(params, n_records: int) -> list[dict]:
    from personal_nlf import prompts, training
    from personal_nlf.data import load_split

    rows = []
    for domain in params.data.domains:
        recs, _ = load_split(str(REPO / "data" / "persona"), domain, "train", max_records=n_records)
        for r in recs:
            own = [p.text for p in r.profile][:params.retrieval.k]
            answer = json.dumps({"personalized_answer": r.pairs[0].chosen}, ensure_ascii=False)
            rows.append(training.sft_row(prompts.rag(r.question, own), answer))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2, help="train records per domain of data/persona")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models-dir", default="models/embedded")
    ap.add_argument("--params", default="params.yaml", help="the policy role, train settings, retrieval.k, domains")
    ap.add_argument("--out", default="benchmarks/RESULTS_training.md")
    args = ap.parse_args(argv)

    from trl.trainer import utils as trl_utils

    from personal_nlf import training
    from personal_nlf.config import load_params

    params = load_params(args.params)
    rows = policy_rows(params, args.records)
    training.score_label_positions_only_on_cpu()
    label_only = trl_utils._use_triton
    paths = {"labelled positions (project)": label_only, "every position (TRL's CPU default)": label_only.trl_decision}
    times: dict[str, list[float]] = {k: [] for k in paths}
    losses: dict[str, list[float]] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, decide in paths.items():
                work = Path(tmp) / "work"
                shutil.rmtree(work, ignore_errors=True)
                # Each path's decision stays in place for the whole training (train() would re-apply the patch).
                with mock.patch.object(trl_utils, "_use_triton", decide), \
                        mock.patch.object(training, "score_label_positions_only_on_cpu", lambda: None):
                    t = time.perf_counter()
                    stats = training.train("sft", rows, params.models.policy, args.models_dir, params.train, work,
                                           seed=params.seed)
                    times[name].append(time.perf_counter() - t)
                losses[name] = stats["loss_curve"]
                print(f"{name}: {times[name][-1]:.1f} s, losses {losses[name]}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    (a, la), (b, lb) = losses.items()
    diff = max(abs(x - y) for x, y in zip(la, lb))
    ratio = med[a] / med[b]
    from transformers import AutoTokenizer

    from personal_nlf.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve(params.models.policy.model, args.models_dir))
    prompt_tok = [len(tok(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]) for r in rows]
    answer_tok = [len(tok(r["completion"][0]["content"], add_special_tokens=False)["input_ids"]) for r in rows]
    tc = params.train
    title = "Benchmark: LoRA SFT on CPU, fused LM head over labelled positions vs every position"
    L = provenance_head(title, REPO, argv=argv) + [
         f"- Training: {params.models.policy.model}, LoRA r {tc.lora_r}, {tc.max_steps} steps of batch "
         f"{tc.per_device_batch_size}, {len(rows)} rows of data/persona's train split (RAG prompt, k = "
         f"{params.retrieval.k}): prompt tokens mean {statistics.mean(prompt_tok):.0f}, answer tokens mean "
         f"{statistics.mean(answer_tok):.0f}",
         f"- Load average at start {load_start[0]:.2f}", "",
         "| fused LM head scores | runs (s) | median s | s/step |", "|---|---|---:|---:|"]
    L += [f"| {k} | {', '.join(f'{t:.1f}' for t in v)} | {med[k]:.1f} | {med[k] / tc.max_steps:.2f} |"
          for k, v in times.items()]
    L += ["", f"Labelled / every position time (whole `training.train`, model load included): **{ratio:.2f}**. "
              f"Loss per step agrees within {diff:.1e} ({', '.join(f'{x:.4f}' for x in la)}).", ""]
    text = "\n".join(L)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
