"""The `nlf` loop: VAC (Algorithm 1 of "Learning from Natural Language Feedback for Personalized QA").

Per iteration t (starting from iteration prev = t-1):
  rollout         policy pi(t-1) answers each train question with the RAG prompt
  signal          feedback model phi(t-1) samples N feedbacks per answer; it sees the user's
                  narrative (a training signal; never at evaluation)
  refine          pi(t-1) revises its answer once per feedback
  judge           the judge scores the initial answer and every revision on the record's rubric;
                  the feedback whose revision scores highest is phi(t)'s target
  train_feedback  LoRA SFT of phi on (feedback prompt -> chosen feedback)   [nlf.train_feedback]
                  (which targets count: nlf.feedback_target; all-tied records have none)
  train_policy    phi(t) writes one feedback per answer at the inference temperature, pi(t-1)
                  revises; LoRA SFT on (RAG prompt -> revision) or DPO (revision > initial, as
                  judged); empty or unformatted revisions are dropped; the checkpoint with the
                  best validation judge score becomes pi(t)
  evaluate        pi(t) answers alone (RAG prompt, no feedback) on the test split; judged
"""

from __future__ import annotations

import json
import logging
from collections import Counter

from .. import evaluate, prompts, training
from ..io import read_jsonl, write_json_atomic, write_jsonl_atomic
from ..judge import outcome_counts
from . import IterationContext
from .loop import (
    by_key,
    evaluate_policy,
    fit_last,
    fit_policy,
    judge_candidates,
    run_role,
    select_best,
    train_records,
)

log = logging.getLogger("personal_nlf")

# prompts.parse_answer outcomes a revision may have to become a training target: "raw" (no
# answer JSON: chatter, an echoed prompt) and "empty" would teach the policy to write that.
USABLE_REVISION = ("json", "json_partial")


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
                     "parse_outcome": outcome})  # no wall-clock figure: results must rerun byte-identical
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
    rows, dropped = [], Counter()
    for s in read_jsonl(ctx.dir("judge") / "selection.jsonl"):
        why = feedback_target_dropped(s, ctx.params.nlf.feedback_target, ctx.params.nlf.n_feedback)
        if why:
            dropped[why] += 1
            continue
        er = recs[s["key"]]
        rows.append(training.sft_row(prompts.feedback(er.record.question, er.own, er.record.narrative,
                                                      answers[er.key]["answer"]), s["feedback"]))
    counts = {"rule": ctx.params.nlf.feedback_target, "targets": len(rows),
              **{f"dropped_{k}": v for k, v in sorted(dropped.items())}}
    write_json_atomic(out / "targets.json", counts)
    return {**fit_last(ctx, "train_feedback", "sft", rows, "feedback", ctx.adapter("feedback"), out),
            **{k: v for k, v in counts.items() if k != "rule"}}


def feedback_target_dropped(sel: dict, rule: str, n_feedback: int) -> str | None:
    """Why a judge selection gives phi no target (None: it does). All-tied revisions (N > 1)
    mean the judge preferred no feedback, so the pick would be arbitrary."""
    if n_feedback > 1 and sel["all_equal"]:
        return "all_tied"
    if rule == "improved_only" and not sel["improved"]:
        return "not_improved"
    if not sel["feedback"]:
        return "empty_feedback"
    return None


def train_policy(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    out = ctx.dir("train_policy")
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    # Policy data: phi(t) writes one feedback per answer; pi(t-1) revises once.
    phi_t = json.loads((ctx.dir("train_feedback") / "state.json").read_text())["adapter"]
    items = [(er.key, prompts.feedback(er.record.question, er.own, er.record.narrative, answers[er.key]["answer"]))
             for er in recs]
    # One feedback, written as at inference (the N-sample temperature is for exploring in `signal`).
    temp = ctx.params.nlf.policy_feedback_temperature
    temp = ctx.params.models.policy.temperature if temp is None else temp
    fb = run_role(ctx, pool, "feedback", phi_t, items, "train_policy", "feedback", temperature=temp)
    fb_rows = [{"key": er.key, "j": 0, "feedback": fb[er.key]["texts"][0].strip()} for er in recs]
    pool.keep_only([ctx.role("policy", ctx.adapter("policy"))])  # phi(t) is done: free it before pi revises
    revised = by_key(_revise(ctx, pool, recs, answers, fb_rows, "train_policy", ctx.adapter("policy")))
    pool.close()
    objective = ctx.train_config().objective
    data = []
    for er in recs:
        # The policy's training examples: the RAG prompt (question + profile only, no narrative,
        # no rubric) and the revised answer in the answer format the prompt asks for.
        rev = revised[er.key]
        prompt = prompts.rag(er.record.question, er.own)
        target = json.dumps({"personalized_answer": rev["answer"]}, ensure_ascii=False)
        initial = json.dumps({"personalized_answer": answers[er.key]["answer"]}, ensure_ascii=False)
        dropped = None
        if rev["parse_outcome"] not in USABLE_REVISION:
            dropped = f"revision_{rev['parse_outcome']}"
        elif objective == "dpo" and target == initial:
            dropped = "revision_same_as_initial"
        data.append({"key": er.key, "prompt": prompt, "revised": target, "initial": initial,
                     "feedback": rev["feedback"], "parse_outcome": rev["parse_outcome"], "dropped": dropped})
    if objective == "dpo":
        # DPO's pair says revised > initial: keep it only where the judge agrees.
        _judge_pairs(ctx, recs, [d for d in data if not d["dropped"]], revised, out)
    write_jsonl_atomic(out / "policy_data.jsonl", data)
    kept = [d for d in data if not d["dropped"]]
    counts = {"targets": len(kept), **{f"dropped_{k}": v for k, v in sorted(Counter(
        d["dropped"] for d in data if d["dropped"]).items())}}
    write_json_atomic(out / "targets.json", counts)
    if objective == "sft":
        rows = [training.sft_row(d["prompt"], d["revised"]) for d in kept]
    else:
        rows = [training.dpo_row(d["prompt"], d["revised"], d["initial"]) for d in kept]
    return {**fit_policy(ctx, objective, rows, out), **counts}


def _judge_pairs(ctx, recs, data, revised, out) -> None:
    """Judge each candidate revision; mark `dropped` where it does not score above the initial
    answer (whose score the judge step already has)."""
    if not data:
        return
    initial = {s["key"]: s["initial_score"] for s in read_jsonl(ctx.dir("judge") / "selection.jsonl")}
    by_rec = {er.key: er for er in recs}
    _, score = judge_candidates(ctx, [(by_rec[d["key"]], "revised", revised[d["key"]]["answer"]) for d in data], out)
    for d in data:
        d["revised_score"], d["initial_score"] = score[(d["key"], "revised")], initial[d["key"]]
        if d["revised_score"] <= d["initial_score"]:
            d["dropped"] = "revision_not_better"


def evaluate_step(ctx: IterationContext) -> dict:
    return evaluate_policy(ctx, "vac")


STEPS = {"rollout": rollout, "signal": signal, "refine": refine, "judge": judge, "train_feedback": train_feedback,
         "train_policy": train_policy, "evaluate": evaluate_step}
