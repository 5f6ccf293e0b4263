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
from collections import Counter
from typing import Any

from .. import evaluate, prompts, training
from ..generation import generate_journaled
from ..io import Journal, read_jsonl, stable_hash, write_json_atomic, write_jsonl_atomic
from ..judge import JudgeItem, fingerprint_fields, judge_items, outcome_counts
from ..llm import sampling_for
from . import IterationContext

log = logging.getLogger("personal_nlf")


# ---------------------------------------------------------------- helpers


def train_records(ctx: IterationContext) -> list[evaluate.EvalRecord]:
    recs = evaluate.load_eval_records(ctx.prepared, ctx.index, ctx.params.data.domains, "train")
    cap = ctx.params.nlf.max_train_records_per_domain
    if cap is None:
        return recs
    kept, seen = [], Counter()
    for er in recs:
        if seen[er.domain] < cap:
            kept.append(er)
            seen[er.domain] += 1
    return kept


def run_role(ctx: IterationContext, pool: evaluate.BackendPool, role_name: str, adapter: str | None,
             items: list[tuple[str, list]], step: str, name: str, n: int = 1) -> dict[str, dict]:
    """Generate (journaled) for one role; key -> {"texts": [...], tokens, latency}."""
    role = ctx.role(role_name, adapter)
    backend = pool.get(role)
    sampling = sampling_for(role, seed=ctx.params.seed + int(ctx.t), n=n)
    fp = stable_hash({"role": role.model_dump(), "backend": backend.describe(), "sampling": sampling.to_dict(),
                      "prompts": [m for _, m in items]})
    j = Journal(ctx.journal(step, name), fp, log=log.info)

    def to_record(key, gens):
        return {"texts": [g.text for g in gens], "prompt_tokens": gens[0].prompt_tokens,
                "completion_tokens": sum(g.completion_tokens for g in gens),
                "latency_s": round(sum(g.latency_s for g in gens), 4)}

    out = generate_journaled(backend, items, sampling, j, to_record, chunk_size=role.batch_size, desc=f"{step}:{name}")
    j.close(remove=True)
    return out


def _by_key(rows: list[dict], key: str = "key") -> dict[str, dict]:
    return {r[key]: r for r in rows}


def select_best(initial: float, revision_scores: list[float]) -> dict[str, Any]:
    """The feedback whose revision scores highest. Ties go to the lowest index (the first
    sampled), so selection is deterministic; all-equal picks feedback 0. Failed judge outputs
    arrive already scored 0 and counted by the judge."""
    best = max(range(len(revision_scores)), key=lambda j: (revision_scores[j], -j))
    return {"best_j": best, "best_score": revision_scores[best], "initial_score": initial,
            "improved": revision_scores[best] > initial, "all_equal": len(set(revision_scores)) == 1}


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
    answers = _by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
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
    answers = _by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    fb = read_jsonl(ctx.dir("signal") / "feedback.jsonl")
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    rows = _revise(ctx, pool, recs, answers, fb, "refine", ctx.adapter("policy"))
    pool.close()
    write_jsonl_atomic(ctx.dir("refine") / "revisions.jsonl", rows)
    return {"revisions": len(rows)}


def judge(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = _by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    revisions = read_jsonl(ctx.dir("refine") / "revisions.jsonl")
    candidates = [(er, "initial", answers[er.key]["answer"]) for er in recs]
    by_rec = {er.key: er for er in recs}
    candidates += [(by_rec[r["key"]], f"rev{r['j']}", r["answer"]) for r in revisions]
    items, meta = [], {}
    for er, cand, text in candidates:
        for a_idx, a in enumerate(er.record.rubric_aspects):
            key = f"{er.key}|{cand}#{a_idx}"
            items.append(JudgeItem(key, er.record.question, er.record.narrative, a.aspect, a.reason, a.evidence, text))
            meta[key] = {"key": er.key, "domain": er.domain, "id": er.record.id, "candidate": cand, "aspect_index": a_idx}
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    role = ctx.params.models.judge
    backend = pool.get(role)
    fp = stable_hash({**fingerprint_fields(ctx.params.judge, role, backend), "items": [it.messages() for it in items]})
    j = Journal(ctx.journal("judge", "scores"), fp, log=log.info)
    scored = judge_items(items, backend, ctx.params.judge, role, j, seed=ctx.params.seed,
                         chunk_size=max(16, role.batch_size))
    pool.close()
    rows = [{**meta[it.key], **scored[it.key]} for it in items]
    write_jsonl_atomic(ctx.dir("judge") / "judge_scores.jsonl", rows)
    j.close(remove=True)
    # Per candidate: sum / (2 x #aspects), as for evaluation.
    sums: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        sums.setdefault((r["key"], r["candidate"]), []).append(r["score"])
    cand_score = {k: sum(v) / (2 * len(v)) for k, v in sums.items()}
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
    answers = _by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    rows = []
    for s in read_jsonl(ctx.dir("judge") / "selection.jsonl"):
        er = recs[s["key"]]
        if s["feedback"]:
            rows.append(training.sft_row(prompts.feedback(er.record.question, er.own, er.record.narrative,
                                                          answers[er.key]["answer"]), s["feedback"]))
    cfg = ctx.train_config()
    work = ctx.journal("train_feedback", "work")
    stats = training.train("sft", rows, ctx.role("feedback", None), ctx.models_dir, cfg, work,
                           seed=ctx.params.seed + int(ctx.t), init_adapter=ctx.adapter("feedback"),
                           report_to=ctx.extra.get("report_to"))
    last = training.checkpoints(work)[-1]
    adapter = training.export_adapter(last, out / "adapter")
    write_json_atomic(out / "state.json", {"adapter": str(adapter), "iteration": ctx.t, "checkpoint": last.name})
    write_json_atomic(out / "train_stats.json", {**stats, "examples": len(rows)})
    _cleanup(work)
    return {"examples": len(rows), "train_loss": stats["train_loss"], "steps": stats["steps"]}


def train_policy(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    answers = _by_key(read_jsonl(ctx.dir("rollout") / "answers.jsonl"))
    out = ctx.dir("train_policy")
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    # Policy data: phi(t) writes one feedback per answer; pi(t-1) revises once.
    phi_t = json.loads((ctx.dir("train_feedback") / "state.json").read_text())["adapter"]
    items = [(er.key, prompts.feedback(er.record.question, er.own, er.record.narrative, answers[er.key]["answer"]))
             for er in recs]
    fb = run_role(ctx, pool, "feedback", phi_t, items, "train_policy", "feedback")
    fb_rows = [{"key": er.key, "j": 0, "feedback": fb[er.key]["texts"][0].strip()} for er in recs]
    revised = _by_key(_revise(ctx, pool, recs, answers, fb_rows, "train_policy", ctx.adapter("policy")))
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
    cfg = ctx.train_config()
    if cfg.objective == "sft":
        rows = [training.sft_row(d["prompt"], d["revised"]) for d in data]
    else:
        rows = [training.dpo_row(d["prompt"], d["revised"], d["initial"]) for d in data if d["revised"] != d["initial"]]
    work = ctx.journal("train_policy", "work")
    stats = training.train(cfg.objective, rows, ctx.role("policy", None), ctx.models_dir, cfg, work,
                           seed=ctx.params.seed + int(ctx.t), init_adapter=ctx.adapter("policy"),
                           report_to=ctx.extra.get("report_to"))
    best, selection = _select_checkpoint(ctx, work, cfg)
    adapter = training.export_adapter(best, out / "adapter")
    write_json_atomic(out / "state.json", {"adapter": str(adapter), "iteration": ctx.t, "checkpoint": best.name,
                                           "validation": selection})
    write_json_atomic(out / "train_stats.json", {**stats, "examples": len(rows), "objective": cfg.objective})
    _cleanup(work)
    return {"examples": len(rows), "train_loss": stats["train_loss"], "steps": stats["steps"],
            "best_checkpoint_step": int(best.name.split("-")[1])}


def _select_checkpoint(ctx: IterationContext, work, cfg):
    cps = training.checkpoints(work)
    if not cfg.select_on_validation or len(cps) == 1:
        return cps[-1], {"selected_by": "last"}
    scores = {}
    for cp in cps:
        vdir = work / f"validation-{cp.name}"
        m = evaluate.evaluate_method("rag", ctx.params, ctx.prepared, ctx.index, ctx.models_dir, vdir,
                                     vdir / "metrics.json", policy=ctx.role("policy", str(cp)), split="validation")
        scores[cp.name] = m["macro"]
        log.info("validation %s: macro %.4f", cp.name, m["macro"])
    # Highest validation macro; ties go to the later checkpoint (more training on the same score).
    best = max(cps, key=lambda cp: (scores[cp.name], int(cp.name.split("-")[1])))
    return best, {"selected_by": "validation_macro", "scores": scores}


def _cleanup(work) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)


def evaluate_step(ctx: IterationContext) -> dict:
    policy = ctx.role("policy", ctx.adapter("policy", ctx.t))
    m = evaluate.evaluate_method("rag", ctx.params, ctx.prepared, ctx.index, ctx.models_dir, ctx.dir("evaluate"),
                                 ctx.metrics, policy=policy,
                                 extra={"mode": "nlf", "iteration": int(ctx.t), "method_label": f"vac_iter_{ctx.t}"})
    return {"macro": m["macro"], **{f"score.{d}": v["score"] for d, v in m["domains"].items()}}


STEPS = {"rollout": rollout, "signal": signal, "refine": refine, "judge": judge, "train_feedback": train_feedback,
         "train_policy": train_policy, "evaluate": evaluate_step}
