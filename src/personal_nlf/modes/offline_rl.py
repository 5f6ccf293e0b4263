"""The offline-RL baseline: expectation-maximization with a scalar reward (the seed paper's
"Offline RL" row). It runs beside VAC with the same budget and settings, so the comparison
isolates natural-language feedback against a scalar reward.

Per iteration t (starting from iteration prev = t-1):
  rollout       policy pi(t-1) samples N RAG answers per train question (N = nlf.n_feedback,
                temperature offline_rl.temperature)
  judge         the judge scores every sample on the record's rubric (the reward); the best
                sample is the target (ties: the first sampled)
  train_policy  LoRA SFT of pi on (RAG prompt -> best sample), or with train.objective=dpo,
                best > worst sample; the checkpoint with the best validation judge score is pi(t)
  evaluate      pi(t) answers alone on the test split; judged

Shared with VAC: the train records (nlf.max_train_records_per_domain), N, the iterations
(nlf.iterations, with their per-iteration overrides), LoRA and trainer settings (train), the judge.
"""

from __future__ import annotations

import json

from .. import prompts, training
from ..io import read_jsonl, write_json_atomic, write_jsonl_atomic
from ..judge import label_mass_summary, outcome_counts
from . import IterationContext
from .loop import by_key, evaluate_policy, fit_policy, rank_samples, sample_answers, train_records


def init(ctx: IterationContext) -> dict:
    write_json_atomic(ctx.dir("train_policy") / "state.json", {"adapter": None, "iteration": "0"})
    return {}


def rollout(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    items = [(er.key, prompts.rag(er.record.question, er.own)) for er in recs]
    rows = sample_answers(ctx, recs, "policy", ctx.adapter("policy"), items, "rollout", ctx.params.nlf.n_feedback,
                          ctx.params.offline_rl.temperature)
    write_jsonl_atomic(ctx.dir("rollout") / "samples.jsonl", rows)
    return {"samples": len(rows), "distinct_share": round(
        len({(r["key"], r["answer"]) for r in rows}) / max(1, len(rows)), 4)}


def judge(ctx: IterationContext) -> dict:
    samples = read_jsonl(ctx.dir("rollout") / "samples.jsonl")
    rows, ranked = rank_samples(ctx, train_records(ctx), samples, ctx.params.nlf.n_feedback, ctx.dir("judge"))
    selection = [{"key": er.key, **sel, "best": best, "worst": worst} for er, sel, best, worst in ranked]
    write_jsonl_atomic(ctx.dir("judge") / "selection.jsonl", selection)
    k = len(selection)
    summary = {
        "records": k,
        "mean_sample_score": round(sum(s["mean_score"] for s in selection) / k, 4),
        "mean_best_score": round(sum(s["best_score"] for s in selection) / k, 4),
        "share_all_equal": round(sum(s["all_equal"] for s in selection) / k, 4),
        "judge_outcomes": outcome_counts(rows),
        "judge_label_mass": label_mass_summary(rows),
    }
    write_json_atomic(ctx.dir("judge") / "summary.json", summary)
    return summary


def train_policy(ctx: IterationContext) -> dict:
    recs = by_key([{"key": er.key, "er": er} for er in train_records(ctx)])
    out = ctx.dir("train_policy")
    data = []
    for s in read_jsonl(ctx.dir("judge") / "selection.jsonl"):
        er = recs[s["key"]]["er"]
        # Question + the user's own profile only: no narrative, no rubric (the judge saw those).
        data.append({"key": er.key, "prompt": prompts.rag(er.record.question, er.own),
                     "best": json.dumps({"personalized_answer": s["best"]}, ensure_ascii=False),
                     "worst": json.dumps({"personalized_answer": s["worst"]}, ensure_ascii=False),
                     "all_equal": s["all_equal"]})
    write_jsonl_atomic(out / "policy_data.jsonl", data)
    objective = ctx.train_config().objective
    if objective == "sft":
        rows = [training.sft_row(d["prompt"], d["best"]) for d in data]
    else:
        rows = [training.dpo_row(d["prompt"], d["best"], d["worst"]) for d in data if not d["all_equal"]]
    return fit_policy(ctx, objective, rows, out)


def evaluate_step(ctx: IterationContext) -> dict:
    return evaluate_policy(ctx, "offline_rl")


STEPS = {"rollout": rollout, "judge": judge, "train_policy": train_policy, "evaluate": evaluate_step}
