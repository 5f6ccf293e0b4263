"""`personal-nlf plan`: the cost model's arithmetic (checked against real stage outputs in
tests/test_pipeline_e2e.py) and the paper-scale figure the README quotes."""

import subprocess
import sys

from personal_nlf import plan
from personal_nlf.config import Params


def rows(p, counts):
    return {r.stage: r for r in plan.estimate(p, counts).rows}


def test_vac_and_offline_rl_judge_calls_follow_the_formula():
    p = Params.model_validate({"nlf": {"n_feedback": 3, "iterations": {"1": {"prev": "0"}}},
                               "train": {"max_steps": 10, "save_steps": 5}})
    counts = {"train": plan.SplitCounts(20, 3.0), "loop_train": plan.SplitCounts(20, 3.0),
              "validation": plan.SplitCounts(4, 5.0), "test": plan.SplitCounts(8, 4.5)}
    r = rows(p, counts)
    assert r["vac@1 judge"].judge_calls == 20 * (3 + 1) * 3
    assert r["vac@1 signal"].generations == 20 * 3 and r["vac@1 refine"].generations == 20 * 3
    assert r["offline_rl@1 judge"].judge_calls == 20 * 3 * 3
    assert r["baseline_rag"].judge_calls == 36 and r["baseline_planpers"].generations == 16
    # 10 steps, a checkpoint every 5: two validation evaluations of 4 records x 5 aspects.
    assert r["vac@1 train_policy"].judge_calls == 2 * 4 * 5 and r["vac@1 train_policy"].train_steps == 10
    assert "summary@1 rollout" not in r and not any(k.startswith("transfer") for k in r)


def test_summary_mode_counts_grpo_reward_calls():
    p = Params.model_validate({"mode": "summary", "nlf": {"iterations": {"1": {"prev": "0"}}},
                               "train": {"max_steps": 2, "gradient_accumulation_steps": 3},
                               "summary": {"num_generations": 4, "n_answers": 2}})
    counts = {k: plan.SplitCounts(10, 2.0) for k in ("train", "loop_train", "validation", "test")}
    r = rows(p, counts)
    grpo = r["summary@1 train_feedback (GRPO)"]
    assert grpo.generations == 2 * (2 * 3 * 4) and grpo.judge_calls == 2 * 3 * 4 * 2
    assert r["summary@1 judge"].judge_calls == 10 * 2 * 2
    assert {"transfer base_policy", "transfer gemma3_270m"} <= set(r)


def test_paper_scale_is_about_a_million_judge_calls_per_iteration():
    p = Params.model_validate({"nlf": {"n_feedback": 16, "iterations": {"1": {"prev": "0"}}}})
    counts = plan.counts_lamp_qa(p)
    assert counts["loop_train"].records == 9349 + 7370 + 7614
    r = rows(p, counts)
    assert r["offline_rl@1 judge"].judge_calls == 24333 * 16 * 3  # train records x aspects x N ~ 1.17M
    assert r["vac@1 judge"].judge_calls == 24333 * 17 * 3


def test_plan_cli_on_the_shipped_sample():
    out = subprocess.run([sys.executable, "-m", "personal_nlf.cli", "plan", "--judge-calls-per-s", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "@1 judge |" in out and "| **total** |" in out and "h of inference" in out
