"""Mode `nlf`: VAC (Algorithm 1 of "Learning from Natural Language Feedback for Personalized QA").

Per iteration t (starting from iteration prev = t-1):
  rollout         policy pi(t-1) answers each train question with the RAG prompt
  signal          feedback model phi(t-1) samples N feedbacks per answer; it sees the user's
                  narrative (a training signal; never at evaluation)
  refine          pi(t-1) revises its answer once per feedback
  judge           the judge scores the initial answer and every revision on the record's rubric;
                  the feedback whose revision scores highest is phi(t)'s target
  train_feedback  LoRA SFT of phi on (feedback prompt -> chosen feedback)   [nlf.train_feedback]
  train_policy    phi(t) writes one feedback per answer, pi(t-1) revises; LoRA SFT on
                  (RAG prompt -> revision) or DPO (revision > initial); the checkpoint with the
                  best validation judge score becomes pi(t)
  evaluate        pi(t) answers alone (RAG prompt, no feedback) on the test split; judged
"""

from __future__ import annotations

import json
import logging

from .. import evaluate, prompts, training
from ..io import read_jsonl, write_json_atomic, write_jsonl_atomic
from ..judge import outcome_counts
from . import IterationContext
from .loop import (by_key, evaluate_policy, fit_last, fit_policy, judge_candidates, run_role, select_best,
                   train_records)

log = logging.getLogger("personal_nlf")


# ---------------------------------------------------------------- steps


def init(ctx: IterationContext) -> dict:
    for which in ("policy", "feedback"):
        write_json_atomic(ctx.dir(f"train_{which}") / "state.json", {"adapter": None, "iteration": "0"})
    return {}


def rollout(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    items = [(er.key, prompts.rag(er.record.question, er.own)) for er in recs]
    out = run_role(ctx, pool, "policy", ctx.adapter("policy"), items, "rollout", "answers")
    pool.close()
    rows = []
    for er in recs:
        text = out[er.key]["texts"][0]
        answer, outcome = prompts.parse_answer(text)
        rows.append({"key": er.key, "domain": er.domain, "id": er.record.id, "text": text, "answer": answer,
                     "parse_outcome": outcome, "latency_s": out[er.key]["latency_s"]})
    write_jsonl_atomic(ctx.dir("rollout") / "answers.jsonl", rows)
    return {"records": len(rows)}


def signal(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    n = ctx.params.nlf.n_feedback
    items = [(er.key, prompts.feedback(er.record.question, er.own, er.record.narrative, answers[er.key]["answer"]))
             for er in recs]
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    out = run_role(ctx, pool, "feedback", ctx.adapter("feedback"), items, "signal", "feedback", n=n)
    pool.close()
    rows = [{"key": er.key, "j": j, "feedback": fb.strip()} for er in recs for j, fb in enumerate(out[er.key]["texts"])]
    write_jsonl_atomic(ctx.dir("signal") / "feedback.jsonl", rows)
    return {"feedbacks": len(rows), "empty_feedbacks": sum(1 for r in rows if not r["feedback"])}


def _revise(ctx, pool, recs, answers, feedback_rows, step, adapter) -> list[dict]:
    by_rec = {er.key: er for er in recs}
    items = [(f"{r['key']}#{r['j']}", prompts.refine(by_rec[r["key"]].record.question, by_rec[r["key"]].own,
                                                     answers[r["key"]]["answer"], r["feedback"]))
             for r in feedback_rows]
    out = run_role(ctx, pool, "policy", adapter, items, step, "revisions")
    rows = []
    for r in feedback_rows:
        text = out[f"{r['key']}#{r['j']}"]["texts"][0]
        answer, outcome = prompts.parse_answer(text)
        rows.append({"key": r["key"], "j": r["j"], "feedback": r["feedback"], "text": text, "answer": answer,
                     "parse_outcome": outcome})
    return rows


def refine(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    fb = read_jsonl(ctx.dir("signal") / "feedback.jsonl")
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    rows = _revise(ctx, pool, recs, answers, fb, "refine", ctx.adapter("policy"))
    pool.close()
    write_jsonl_atomic(ctx.dir("refine") / "revisions.jsonl", rows)
    return {"revisions": len(rows)}


def judge(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    revisions = read_jsonl(ctx.dir("refine") / "revisions.jsonl")
    candidates = [(er, "initial", answers[er.key]["answer"]) for er in recs]
    by_rec = {er.key: er for er in recs}
    candidates += [(by_rec[r["key"]], f"rev{r['j']}", r["answer"]) for r in revisions]
    rows, cand_score = judge_candidates(ctx, candidates, ctx.dir("judge"))
    n = ctx.params.nlf.n_feedback
    feedback = {(r["key"], r["j"]): r["feedback"] for r in read_jsonl(ctx.dir("signal") / "feedback.jsonl")}
    selection = []
    for er in recs:
        sel = select_best(cand_score[(er.key, "initial")], [cand_score[(er.key, f"rev{j}")] for j in range(n)])
        selection.append({"key": er.key, **sel, "feedback": feedback[(er.key, sel["best_j"])]})
    write_jsonl_atomic(ctx.dir("judge") / "selection.jsonl", selection)
    summary = {
        "records": len(selection),
        "share_best_beats_initial": round(sum(s["improved"] for s in selection) / len(selection), 4),
        "share_all_equal": round(sum(s["all_equal"] for s in selection) / len(selection), 4),
        "mean_initial": round(sum(s["initial_score"] for s in selection) / len(selection), 4),
        "mean_best_revision": round(sum(s["best_score"] for s in selection) / len(selection), 4),
        "judge_outcomes": outcome_counts(rows),
    }
    write_json_atomic(ctx.dir("judge") / "summary.json", summary)
    return summary


def train_feedback(ctx: IterationContext) -> dict:
    out = ctx.dir("train_feedback")
    if not ctx.params.nlf.train_feedback:
        # Frozen feedback model (ablation): phi(t) = phi(t-1).
        write_json_atomic(out / "state.json", {"adapter": ctx.adapter("feedback"), "iteration": ctx.t, "frozen": True})
        return {"frozen": 1}
    recs = {er.key: er for er in train_records(ctx)}
    answers = by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    rows = []
    for s in read_jsonl(ctx.dir("judge") / "selection.jsonl"):
        er = recs[s["key"]]
        if s["feedback"]:
            rows.append(training.sft_row(prompts.feedback(er.record.question, er.own, er.record.narrative,
                                                          answers[er.key]["answer"]), s["feedback"]))
    return fit_last(ctx, "train_feedback", "sft", rows, "feedback", ctx.adapter("feedback"), out)


def train_policy(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    out = ctx.dir("train_policy")
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    # Policy data: phi(t) writes one feedback per answer; pi(t-1) revises once.
    phi_t = json.loads((ctx.dir("train_feedback") / "state.json").read_text())["adapter"]
    items = [(er.key, prompts.feedback(er.record.question, er.own, er.record.narrative, answers[er.key]["answer"]))
             for er in recs]
    fb = run_role(ctx, pool, "feedback", phi_t, items, "train_policy", "feedback")
    fb_rows = [{"key": er.key, "j": 0, "feedback": fb[er.key]["texts"][0].strip()} for er in recs]
    revised = by_key(_revise(ctx, pool, recs, answers, fb_rows, "train_policy", ctx.adapter("policy")))
    pool.close()
    data = []
    for er in recs:
        # The policy's training examples: the RAG prompt (question + profile only, no narrative,
        # no rubric) and the revised answer in the answer format the prompt asks for.
        prompt = prompts.rag(er.record.question, er.own)
        target = json.dumps({"personalized_answer": revised[er.key]["answer"]}, ensure_ascii=False)
        initial = json.dumps({"personalized_answer": answers[er.key]["answer"]}, ensure_ascii=False)
        data.append({"key": er.key, "prompt": prompt, "revised": target, "initial": initial,
                     "feedback": revised[er.key]["feedback"]})
    write_jsonl_atomic(out / "policy_data.jsonl", data)
    objective = ctx.train_config().objective
    if objective == "sft":
        rows = [training.sft_row(d["prompt"], d["revised"]) for d in data]
    else:
        rows = [training.dpo_row(d["prompt"], d["revised"], d["initial"]) for d in data if d["revised"] != d["initial"]]
    return fit_policy(ctx, objective, rows, out)


def evaluate_step(ctx: IterationContext) -> dict:
    return evaluate_policy(ctx, "vac")


STEPS = {"rollout": rollout, "signal": signal, "refine": refine, "judge": judge, "train_feedback": train_feedback,
         "train_policy": train_policy, "evaluate": evaluate_step}
