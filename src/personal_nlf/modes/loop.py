"""Building blocks the training loops share (VAC in `nlf.py`, the offline-RL baseline in
`offline_rl.py`, summary mode in `summary.py`): the train records, a journaled generation for one role, judging candidate
answers on the rubric, picking the best candidate, training the policy with validation checkpoint
selection, and the test-split evaluation."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from .. import evaluate, judge, prompts, training
from ..generation import generate_journaled
from ..io import Journal, stable_hash
from ..llm import sampling_for, submission_size
from . import IterationContext

log = logging.getLogger("personal_nlf")


def train_records(ctx: IterationContext) -> list[evaluate.EvalRecord]:
    """The train split, capped per domain by nlf.max_train_records_per_domain (both loops use
    the same records, so their budgets match)."""
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


def by_key(rows: list[dict], key: str = "key") -> dict[str, dict]:
    return {r[key]: r for r in rows}


def run_role(ctx: IterationContext, pool: evaluate.BackendPool, role_name: str, adapter: str | None,
             items: list[tuple[str, list]], step: str, name: str, n: int = 1,
             temperature: float | None = None) -> dict[str, dict]:
    """Generate (journaled) for one role; key -> {"texts": [...], tokens, latency}."""
    role = ctx.role(role_name, adapter)
    if temperature is not None:
        role = role.model_copy(update={"temperature": temperature})
    backend = pool.get(role)
    sampling = sampling_for(role, seed=ctx.params.seed + int(ctx.t), n=n)
    fp = stable_hash({"role": role.model_dump(), "backend": backend.describe(), "sampling": sampling.to_dict(),
                      "prompts": [m for _, m in items]})
    j = Journal(ctx.journal(step, name), fp, log=log.info)

    def to_record(key, gens):
        return {"texts": [g.text for g in gens], "prompt_tokens": gens[0].prompt_tokens,
                "completion_tokens": sum(g.completion_tokens for g in gens),
                "latency_s": round(sum(g.latency_s for g in gens), 4)}

    out = generate_journaled(backend, items, sampling, j, to_record, chunk_size=submission_size(role), desc=f"{step}:{name}")
    j.close(remove=True)
    return out


def sample_answers(ctx: IterationContext, recs: list[evaluate.EvalRecord], role_name: str, adapter: str | None,
                   items: list[tuple[str, list]], step: str, n: int, temperature: float) -> list[dict]:
    """N sampled answers per record from one role (journaled), parsed: rows with key, j, text,
    answer, parse_outcome (offline RL's rollout, summary mode's answer)."""
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    try:
        out = run_role(ctx, pool, role_name, adapter, items, step, "samples", n=n, temperature=temperature)
    finally:
        pool.close()
    rows = []
    for er in recs:
        for j, text in enumerate(out[er.key]["texts"]):
            answer, outcome = prompts.parse_answer(text)
            rows.append({"key": er.key, "domain": er.domain, "id": er.record.id, "j": j, "text": text,
                         "answer": answer, "parse_outcome": outcome})
    return rows


def select_best(initial: float | None, scores: list[float]) -> dict[str, Any]:
    """The candidate that scores highest. Ties go to the lowest index (the first sampled), so
    selection is deterministic; all-equal picks candidate 0. Failed judge outputs arrive already
    scored 0 and counted by the judge. `initial` (VAC's unrevised answer) may be None."""
    best = max(range(len(scores)), key=lambda j: (scores[j], -j))
    out = {"best_j": best, "best_score": scores[best], "all_equal": len(set(scores)) == 1}
    if initial is not None:
        out.update(initial_score=initial, improved=scores[best] > initial)
    return out


def best_and_worst(scores: list[float]) -> dict:
    """The best sample (ties: the first sampled, as VAC's selection) is the SFT target; the worst
    (ties: the last sampled) is the rejected side for DPO. All-equal records give DPO no pair."""
    worst = min(range(len(scores)), key=lambda j: (scores[j], -j))
    return {**select_best(None, scores), "worst_j": worst, "worst_score": scores[worst],
            "mean_score": sum(scores) / len(scores)}


def judge_candidates(ctx: IterationContext, candidates: list[tuple[evaluate.EvalRecord, str, str]],
                     out_dir: Path) -> tuple[list[dict], dict[tuple[str, str], float]]:
    """Judge (record, candidate name, answer) triples on every rubric aspect (journaled); writes
    out_dir/judge_scores.jsonl. Returns the per-aspect rows and (record key, candidate) -> score."""
    to_judge = [judge.Answer(f"{er.key}|{cand}", er.record.question, er.record.narrative, er.record.rubric_aspects,
                             text, {"key": er.key, "domain": er.domain, "id": er.record.id, "candidate": cand})
                for er, cand, text in candidates]
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    try:
        rows, scores = judge.judge_answers(to_judge, pool.get(ctx.params.models.judge), ctx.params,
                                           journal_path=ctx.journal("judge", "scores"),
                                           out_path=out_dir / "judge_scores.jsonl")
    finally:
        pool.close()
    return rows, {(er.key, cand): scores[f"{er.key}|{cand}"] for er, cand, _ in candidates}


def rank_samples(ctx: IterationContext, recs: list[evaluate.EvalRecord], samples: list[dict], n: int,
                 out_dir: Path) -> tuple[list[dict], list[tuple[evaluate.EvalRecord, dict, str, str]]]:
    """Judge N sampled answers per record (rows with key, j, answer) and rank them: per record
    best_and_worst of its samples, with the best and worst texts. Offline RL trains on the best
    (or best > worst); summary mode makes best > worst the generator's preference pair."""
    by_rec = {er.key: er for er in recs}
    rows, score = judge_candidates(ctx, [(by_rec[s["key"]], f"s{s['j']}", s["answer"]) for s in samples], out_dir)
    text = {(s["key"], s["j"]): s["answer"] for s in samples}
    ranked = []
    for er in recs:
        sel = best_and_worst([score[(er.key, f"s{j}")] for j in range(n)])
        ranked.append((er, sel, text[(er.key, sel["best_j"])], text[(er.key, sel["worst_j"])]))
    return rows, ranked


def fit_policy(ctx: IterationContext, objective: str, rows: list[dict], out: Path) -> dict:
    """LoRA-train the policy from iteration prev's adapter; the checkpoint with the best
    validation judge score becomes iteration t's adapter (out/adapter, out/state.json)."""
    return fit(ctx, "train_policy", objective, rows, "policy", ctx.adapter("policy"), out,
               select=lambda work: select_checkpoint(ctx, work, ctx.train_config()))


def fit_last(ctx: IterationContext, step: str, objective: str, rows: list[dict], role_name: str,
             init_adapter: str | None, out: Path, grpo: training.GRPOSettings | None = None) -> dict:
    """LoRA-train `role_name` from init_adapter; the last checkpoint becomes iteration t's adapter.
    For models whose checkpoints are not selected on validation (VAC's feedback model, the
    summary mode's summarizer and generator)."""
    return fit(ctx, step, objective, rows, role_name, init_adapter, out, grpo=grpo)


def fit(ctx: IterationContext, step: str, objective: str, rows: list[dict], role_name: str,
        init_adapter: str | None, out: Path, grpo: training.GRPOSettings | None = None, select=None) -> dict:
    if not rows:
        # E.g. DPO when every pair is identical: nothing to learn from. The model carries over
        # from iteration prev, recorded in state.json and the stage's metrics, not a failure.
        log.warning("iteration %s: no %s training examples for %s; it carries over from iteration %s",
                    ctx.t, objective, role_name, ctx.prev)
    return training.fit_and_export(
        objective, rows, ctx.role(role_name, None), ctx.models_dir, ctx.train_config(), out,
        work_dir=ctx.journal(step, "work"), seed=ctx.params.seed + int(ctx.t), init_adapter=init_adapter,
        report_to=ctx.extra.get("report_to"), grpo=grpo, select=select, state={"iteration": ctx.t})


def select_checkpoint(ctx: IterationContext, work: Path, cfg) -> tuple[Path, dict]:
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


def evaluate_policy(ctx: IterationContext, label: str) -> dict:
    """pi(t) answers alone (RAG prompt) on the evaluation split; judged; metrics to ctx.metrics."""
    policy = ctx.role("policy", ctx.adapter("policy", ctx.t))
    m = evaluate.evaluate_method("rag", ctx.params, ctx.prepared, ctx.index, ctx.models_dir, ctx.dir("evaluate"),
                                 ctx.metrics, policy=policy,
                                 extra={"mode": ctx.loop, "iteration": int(ctx.t), "method_label": f"{label}_iter_{ctx.t}"})
    return {"macro": m["macro"], **{f"score.{d}": v["score"] for d, v in m["domains"].items()}}

