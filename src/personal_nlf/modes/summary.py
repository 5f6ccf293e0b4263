"""Summary mode: POPI-style preference summaries trained with GRPO (pipelines/summary/dvc.yaml).

A summarizer reads a user's profile only (no question by default: one summary per user, reusable
for any later question; summary.condition) and writes a short preference summary. A generator
answers the question from that summary alone, no raw profile, so the context shrinks.

Per iteration t (from prev = t-1), one DVC stage per step:
  summarize         summarizer(t-1) writes one summary per train record (greedy)
  answer            generator(t-1) samples N answers per record given the summary
  rank              the judge scores the N answers on the rubric; best > worst is the record's
                    preference pair (ties: first sampled is best, last sampled is worst)
  train_summarizer  GRPO (TRL GRPOTrainer + LoRA) of the summarizer: G summaries per record, reward
                    = judge score of generator(t-1)'s answer given each summary, or POPI's
                    preference reward on the pair (rewards.py), minus a length cost; KL (summary.kl_beta)
                    to the summarizer this iteration starts from (iteration 1: the untrained one)
  train_generator   LoRA DPO of the generator on its pairs given the summary (summary.train_generator)
  evaluate          summarizer(t) writes the evaluation split's summaries; generator(t) answers from
                    them; judged; context reduction against RAG with k = retrieval.k
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import lru_cache

from .. import evaluate, models, preferences, prompts, training
from .. import judge as judge_lib
from ..io import read_jsonl, stable_hash, write_json_atomic, write_jsonl_atomic
from ..judge import label_mass_summary, outcome_counts
from ..llm import render_plain, sampling_for
from ..rewards import JudgeReward, PlusReward, PopiReward, PreferenceReward
from ..summaries import profile_hash, scrub, select_profile
from . import IterationContext
from .loop import by_key, fit_last, rank_samples, run_role, sample_answers, train_records

log = logging.getLogger("personal_nlf")

SUMMARIZER, GENERATOR = "summarizer", "generator"  # iteration t's adapters: train_<role>/state.json


# ---------------------------------------------------------------- helpers


@lru_cache(maxsize=8)
def _tokenizer(model_ref: str, models_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(model_ref, models_dir))


def token_counter(role, models_dir):
    """Counts tokens with the role's tokenizer; a remote model (openai backend) has none here,
    so its profiles are budgeted at 4 characters per token."""
    if role.backend == "openai":
        return lambda text: (len(text) + 3) // 4
    tok = _tokenizer(role.model, str(models_dir))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def prompt_tokens(role, models_dir, messages_list) -> list[int]:
    """Prompt length in tokens as the hf backend renders it (chat template, or plain text)."""
    tok = _tokenizer(role.model, str(models_dir))
    chat = bool(tok.chat_template) if role.prompt_format == "auto" else role.prompt_format == "chat"
    out = []
    for m in messages_list:
        text = tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) if chat else render_plain(m)
        out.append(len(tok(text, add_special_tokens=not chat)["input_ids"]))
    return out


def summarizer_prompt(params, er: evaluate.EvalRecord, count) -> tuple[list, list[str]]:
    """(messages, profile texts shown). Only the question and profile texts reach the summarizer."""
    cfg = params.summary
    texts = list(er.own) if cfg.condition == "retrieved" else [p.text for p in er.record.profile]
    shown = select_profile(texts, count, cfg.max_profile_tokens)
    question = None if cfg.condition == "profile" else er.record.question
    return prompts.summarizer(shown, question), shown


def write_summaries(ctx: IterationContext, recs, adapter, step: str,
                    pool: evaluate.BackendPool | None = None) -> list[dict]:
    """One greedy summary per record from the summarizer with `adapter` (journaled), scrubbed of
    copied profile text. pool: the caller's (it closes it), else one of this call's own."""
    role = ctx.role("summarizer", adapter)
    count = token_counter(role, ctx.models_dir)
    items, shown = [], {}
    for er in recs:
        msgs, shown[er.key] = summarizer_prompt(ctx.params, er, count)
        items.append((er.key, msgs))
    own = evaluate.BackendPool(ctx.models_dir, ctx.params.seed) if pool is None else None
    out = run_role(ctx, pool or own, "summarizer", adapter, items, step, "summaries")
    if own is not None:
        own.close()
    rows = []
    for er in recs:
        profile = [p.text for p in er.record.profile]
        text, spans = scrub(out[er.key]["texts"][0].strip(), profile)
        rows.append({"key": er.key, "domain": er.domain, "split": er.split, "id": er.record.id, "summary": text,
                     "summary_tokens": out[er.key]["completion_tokens"], "scrubbed_spans": spans,
                     "summarizer_prompt_tokens": out[er.key]["prompt_tokens"],
                     "profile_items": len(profile), "profile_items_shown": len(shown[er.key]),
                     "profile_hash": profile_hash(profile), "summarizer_adapter": adapter})
    return rows


def _answer_json(answer: str) -> str:
    """Answers as the generator is asked to write them (training targets and pairs)."""
    return json.dumps({"personalized_answer": answer}, ensure_ascii=False)


# ---------------------------------------------------------------- steps


def init(ctx: IterationContext) -> dict:
    for which in (GENERATOR, SUMMARIZER):
        write_json_atomic(ctx.dir(f"train_{which}") / "state.json", {"adapter": None, "iteration": "0"})
    return {}


def summarize(ctx: IterationContext) -> dict:
    rows = write_summaries(ctx, train_records(ctx), ctx.adapter(SUMMARIZER), "summarize")
    write_jsonl_atomic(ctx.dir("summarize") / "summaries.jsonl", rows)
    return {"summaries": len(rows), "mean_summary_tokens": round(sum(r["summary_tokens"] for r in rows) / len(rows), 1),
            "scrubbed_spans": sum(r["scrubbed_spans"] for r in rows)}


def answer(ctx: IterationContext) -> dict:
    recs = train_records(ctx)
    summaries = by_key(read_jsonl(ctx.dir("summarize") / "summaries.jsonl"))
    items = [(er.key, prompts.summary_answer(er.record.question, summaries[er.key]["summary"])) for er in recs]
    rows = sample_answers(ctx, recs, "generator", ctx.adapter(GENERATOR), items, "answer", ctx.params.summary.n_answers,
                          ctx.params.summary.answer_temperature)
    write_jsonl_atomic(ctx.dir("answer") / "answers.jsonl", rows)
    return {"answers": len(rows), "distinct_share": round(len({(r["key"], r["answer"]) for r in rows}) / len(rows), 4)}


def rank(ctx: IterationContext) -> dict:
    answers = read_jsonl(ctx.dir("answer") / "answers.jsonl")
    rows, ranked = rank_samples(ctx, train_records(ctx), answers, ctx.params.summary.n_answers, ctx.dir("rank"))
    pairs = [{"key": er.key, **sel, "preferred": _answer_json(best), "dispreferred": _answer_json(worst)}
             for er, sel, best, worst in ranked]
    write_jsonl_atomic(ctx.dir("rank") / "pairs.jsonl", pairs)
    summary = {"records": len(pairs),
               "mean_answer_score": round(sum(p["mean_score"] for p in pairs) / len(pairs), 4),
               "mean_best_score": round(sum(p["best_score"] for p in pairs) / len(pairs), 4),
               "share_all_equal": round(sum(p["all_equal"] for p in pairs) / len(pairs), 4),
               "judge_outcomes": outcome_counts(rows), "judge_label_mass": label_mass_summary(rows)}
    write_json_atomic(ctx.dir("rank") / "summary.json", summary)
    return summary


def build_reward(ctx: IterationContext, pool: evaluate.BackendPool, reward_model=None):
    """The configured reward, with generator(t-1) and the judge loaded from the pool (plus: the
    reward model trained this iteration, train_reward_model)."""
    cfg, p = ctx.params.summary, ctx.params
    if cfg.reward == "plus":
        def no_model(items):
            raise ValueError("summary.reward=plus: no reward model was trained this iteration (no record has pairs)")

        return PlusReward(reward_model.score if reward_model is not None else no_model, cfg.budget_tokens,
                          cfg.length_cost)
    gen_role = ctx.role("generator", ctx.adapter(GENERATOR))
    generator = pool.get(gen_role)
    if cfg.reward == "popi":
        def popi_loglik(queries):
            # Policy side: summary + question; reference side (summary None): the question alone.
            msgs = [prompts.summary_answer(q, s) if s is not None else prompts.no_pers(q) for q, s, _ in queries]
            return generator.answer_logprobs(msgs, [preferences.answer_json(a) for _, _, a in queries])

        return PopiReward(popi_loglik, cfg.preference_beta, cfg.budget_tokens, cfg.length_cost)
    if cfg.reward == "preference":
        def loglik(queries):
            return generator.answer_logprobs([prompts.summary_answer(q, s or "") for q, s, _ in queries],
                                             [a for _, _, a in queries])

        return PreferenceReward(loglik, cfg.preference_beta, cfg.budget_tokens, cfg.length_cost)

    judge_backend = pool.get(p.models.judge)
    sampling = sampling_for(gen_role, seed=p.seed + int(ctx.t))

    def answer(pairs):
        gens = generator.generate([prompts.summary_answer(q, s) for q, s in pairs], sampling)
        return [prompts.parse_answer(g[0].text)[0] for g in gens]

    def judge_fn(cases):
        to_judge = [judge_lib.Answer(str(i), q, narrative, aspects, ans, {"key": str(i)})
                    for i, (q, narrative, aspects, ans) in enumerate(cases)]
        rows, scores = judge_lib.judge_answers(to_judge, judge_backend, p)  # no journal: a resumed GRPO step restarts
        outcomes: dict[str, list[str]] = {}
        for r in rows:
            outcomes.setdefault(r["key"], []).append(r["outcome"])
        return [(scores[a.key], outcomes[a.key]) for a in to_judge]

    return JudgeReward(answer, judge_fn, cfg.budget_tokens, cfg.length_cost)


def own_pairs(er: evaluate.EvalRecord) -> list[tuple[str, str]]:
    """The user's own (chosen, rejected) pairs of a record (data.Record.pairs; none on LaMP-QA)."""
    return [(p.chosen, p.rejected) for p in getattr(er.record, "pairs", ()) or ()]


def heldout_users(keys: list[str], share: float, seed: int) -> set[str]:
    """A seeded, order-free choice of round(share * n) users (at least 1 when share > 0 and n >= 2)."""
    if share <= 0 or len(keys) < 2:
        return set()
    k = min(len(keys) - 1, max(1, round(share * len(keys))))
    return set(sorted(keys, key=lambda key: stable_hash([seed, key]))[:k])


def train_reward_model(ctx: IterationContext, recs: list[evaluate.EvalRecord], out):
    """PLUS's reward model for iteration t: trained on the user's pairs given summarize@t's
    summaries (written by summarizer(t-1)), continuing from iteration t-1's reward model
    (iteration 1: a new LoRA and a seeded new score head). So the GRPO reward of summarizer(t) comes
    from a reward model fitted to summarizer(t-1)'s summaries: the two alternate, as in PLUS.
    Held-out users (summary.reward_model_heldout_share) measure it before and after this
    iteration's training. Writes out/reward_model/adapter and out/reward_model.json; returns
    (scorer of the new model, metrics)."""
    from .. import reward_model as rm

    cfg = ctx.params.summary
    summaries = by_key(read_jsonl(ctx.dir("summarize") / "summaries.jsonl"))
    items = {er.key: [(er.record.question, summaries[er.key]["summary"], c, r) for c, r in own_pairs(er)]
             for er in recs if own_pairs(er)}
    seed = ctx.params.seed + int(ctx.t)
    held = heldout_users(sorted(items), cfg.reward_model_heldout_share, ctx.params.seed)
    train_items = [it for k, v in items.items() if k not in held for it in v]
    held_items = [it for k, v in items.items() if k in held for it in v]
    role = ctx.role("generator", None)  # the reward model's body: the generator's base model
    tcfg = ctx.train_config().model_copy(update={
        "max_steps": cfg.reward_model_steps, "learning_rate": cfg.reward_model_learning_rate,
        "per_device_batch_size": cfg.reward_model_batch_size, "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0})  # a few steps per iteration, continuing: no warmup
    prev = ctx.dir("train_summarizer", ctx.prev) / "reward_model" / "adapter"
    init = str(prev) if (prev / "adapter_config.json").exists() else None
    before = rm.RewardModelScorer(role, ctx.models_dir, init, seed)
    acc_before = before.accuracy(held_items)
    before.close()
    adapter = out / "reward_model" / "adapter"
    stats = rm.train([rm.rm_row(*it) for it in train_items], role, ctx.models_dir, tcfg, adapter,
                     ctx.journal("train_summarizer", "rm_work"), seed, init_adapter=init)
    scorer = rm.RewardModelScorer(role, ctx.models_dir, str(adapter), seed)
    acc_held, acc_train = scorer.accuracy(held_items), scorer.accuracy(train_items)
    metrics = {"iteration": int(ctx.t), "init_adapter": init, "adapter": str(adapter),
               "train_users": len(items) - len(held), "heldout_users": len(held),
               "train_pairs": len(train_items), "heldout_pairs": len(held_items),
               "heldout_accuracy_before": acc_before["accuracy"], "heldout_accuracy": acc_held["accuracy"],
               "heldout_mean_margin": acc_held.get("mean_margin"), "train_accuracy": acc_train["accuracy"],
               "steps": stats["steps"], "train_loss": stats["train_loss"], "loss_curve": stats["loss_curve"],
               "settings": {"steps": cfg.reward_model_steps, "learning_rate": cfg.reward_model_learning_rate,
                            "batch_size": cfg.reward_model_batch_size, "heldout_share": cfg.reward_model_heldout_share,
                            "lora_r": tcfg.lora_r, "seed": seed}}
    write_json_atomic(out / "reward_model.json", metrics)
    return scorer, metrics


def train_summarizer(ctx: IterationContext) -> dict:
    """GRPO of the summarizer. popi and plus reward summaries on the records' own pairs; plus first
    trains this iteration's reward model."""
    cfg = ctx.params.summary
    recs = train_records(ctx)
    user_pairs = cfg.reward in ("popi", "plus")
    pairs = {} if user_pairs else by_key(read_jsonl(ctx.dir("rank") / "pairs.jsonl"))
    role = ctx.role("summarizer", None)
    count = token_counter(role, ctx.models_dir)
    rows, without_pairs = [], 0
    for er in recs:
        if user_pairs and not own_pairs(er):
            without_pairs += 1  # nothing of the user's to score a summary on
            continue
        if cfg.reward == "preference" and pairs[er.key]["all_equal"]:
            continue  # no preferred answer: the preference reward is constant for this record
        msgs, _ = summarizer_prompt(ctx.params, er, count)
        row = {"prompt": msgs, "key": er.key, "question": er.record.question, "narrative": er.record.narrative,
               "rubric": json.dumps([{"aspect": a.aspect, "reason": a.reason, "evidence": a.evidence, "check": a.check}
                                     for a in er.record.rubric_aspects]),  # check: the verifier judge's
               "profile": json.dumps([p.text for p in er.record.profile])}
        if user_pairs:
            row["pairs"] = json.dumps(own_pairs(er), ensure_ascii=False)
        else:
            row.update(preferred=pairs[er.key]["preferred"], dispreferred=pairs[er.key]["dispreferred"])
        rows.append(row)
    if without_pairs:
        log.warning("iteration %s: %d of %d train records have no preference pairs; summary.reward=%s skips them",
                    ctx.t, without_pairs, len(recs), cfg.reward)
    out = ctx.dir("train_summarizer")
    scorer, rm_metrics = None, None
    if cfg.reward == "plus" and rows:
        scorer, rm_metrics = train_reward_model(ctx, [er for er in recs if own_pairs(er)], out)
    pool = evaluate.BackendPool(ctx.models_dir, ctx.params.seed)
    try:
        reward = build_reward(ctx, pool, reward_model=scorer)
        grpo = training.GRPOSettings(reward_funcs=[reward], num_generations=cfg.num_generations, beta=cfg.kl_beta,
                                     max_completion_length=ctx.params.models.summarizer.max_new_tokens,
                                     temperature=cfg.temperature, vllm_mode=cfg.grpo_vllm_mode,
                                     vllm_server_host=cfg.grpo_vllm_server_host,
                                     vllm_server_port=cfg.grpo_vllm_server_port)
        result = fit_last(ctx, "train_summarizer", "grpo", rows, "summarizer", ctx.adapter(SUMMARIZER), out, grpo=grpo)
    finally:
        pool.close()
        if scorer is not None:
            scorer.close()
    counts = dict(sorted(Counter(reward.counts).items()))
    write_json_atomic(out / "reward_curve.json", {"reward": cfg.reward, "calls": reward.history, "counts": counts,
                                                  "records_without_pairs": without_pairs})
    curve = reward.history
    if curve:
        result.update(first_reward=round(curve[0]["reward"], 4), last_reward=round(curve[-1]["reward"], 4))
    if user_pairs:
        result["records_without_pairs"] = without_pairs
    if rm_metrics:
        result.update({f"reward_model_{k}": rm_metrics[k] for k in
                       ("heldout_accuracy_before", "heldout_accuracy", "train_accuracy", "heldout_pairs")})
    return {**result, "reward_counts": counts}


def train_generator(ctx: IterationContext) -> dict:
    """LoRA DPO of the generator on its judge-ranked answers given the summary (optional)."""
    out = ctx.dir("train_generator")
    if not ctx.params.summary.train_generator:
        write_json_atomic(out / "state.json", {"adapter": ctx.adapter(GENERATOR), "iteration": ctx.t, "frozen": True})
        return {"frozen": 1}
    recs = {er.key: er for er in train_records(ctx)}
    summaries = by_key(read_jsonl(ctx.dir("summarize") / "summaries.jsonl"))
    rows = []
    for p in read_jsonl(ctx.dir("rank") / "pairs.jsonl"):
        if p["all_equal"]:
            continue
        er = recs[p["key"]]
        rows.append(training.dpo_row(prompts.summary_answer(er.record.question, summaries[p["key"]]["summary"]),
                                     p["preferred"], p["dispreferred"]))
    return fit_last(ctx, "train_generator", "dpo", rows, "generator", ctx.adapter(GENERATOR), out)


def evaluate_step(ctx: IterationContext) -> dict:
    p = ctx.params
    split = p.baselines.eval_split
    recs = evaluate.load_eval_records(ctx.prepared, ctx.index, p.data.domains, split)
    out_dir = ctx.dir("evaluate")
    generator = ctx.role("generator", ctx.adapter(GENERATOR, ctx.t))
    # One pool for the summaries and the answers: on one base model with adapter_serving: lora,
    # the summarizer's engine serves the generator too; otherwise it is released first.
    pool = evaluate.BackendPool(ctx.models_dir, p.seed)
    try:
        rows = write_summaries(ctx, recs, ctx.adapter(SUMMARIZER, ctx.t), "evaluate", pool=pool)
        write_jsonl_atomic(out_dir / "summaries.jsonl", rows)
        pool.keep_only([generator])
        m = evaluate.evaluate_method(
            "summary", p, ctx.prepared, ctx.index, ctx.models_dir, out_dir, ctx.metrics, policy=generator,
            summaries={r["key"]: r["summary"] for r in rows}, pool=pool,
            extra={"mode": "summary", "iteration": int(ctx.t), "method_label": f"summary_iter_{ctx.t}",
                   "summarizer": ctx.role("summarizer", ctx.adapter(SUMMARIZER, ctx.t)).model_dump(),
                   "summary": p.summary.model_dump()})
    finally:
        pool.close()
    # Context: the generator's prompt with the summary vs the RAG prompt with k retrieved items,
    # both counted with the generator's tokenizer.
    rag_tokens = prompt_tokens(generator, ctx.models_dir, [prompts.rag(er.record.question, er.own) for er in recs])
    n = len(recs)
    context = {
        "rag_k": p.retrieval.k,
        "rag_prompt_tokens_per_query": round(sum(rag_tokens) / n, 1),
        "summarizer_prompt_tokens_per_user": round(sum(r["summarizer_prompt_tokens"] for r in rows) / n, 1),
        "summary_tokens_mean": round(sum(r["summary_tokens"] for r in rows) / n, 1),
        "summaries_over_budget": sum(1 for r in rows if r["summary_tokens"] > p.summary.budget_tokens),
        "scrubbed_spans": sum(r["scrubbed_spans"] for r in rows),
        "empty_summaries": sum(1 for r in rows if not r["summary"].strip()),
    }
    context["context_reduction_ratio"] = round(context["rag_prompt_tokens_per_query"] / m["prompt_tokens_per_query"], 3)
    m.update(context)
    write_json_atomic(ctx.metrics, m)
    return {"macro": m["macro"], "context_reduction_ratio": context["context_reduction_ratio"],
            **{f"score.{d}": v["score"] for d, v in m["domains"].items()}}


STEPS = {"summarize": summarize, "answer": answer, "rank": rank, "train_summarizer": train_summarizer,
         "train_generator": train_generator, "evaluate": evaluate_step}
