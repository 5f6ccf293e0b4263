"""Answer an evaluation split with one method, judge every rubric aspect, and write per-sample
outputs, reference-format predictions and the metrics JSON. Used by the baseline stages and by
every mode's evaluate stage, so all rows of the report are computed the same way."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import polars as pl

from . import judge, metrics, preferences, prompts, provenance
from .config import ANSWER_SCORING_BACKENDS, ConfigError, Params, RoleConfig
from .data import Record, load_prepared
from .generation import generate_journaled
from .io import Journal, stable_hash, write_json_atomic, write_jsonl_atomic
from .judge import outcome_counts
from .llm import Backend, load_backend, sampling_for, submission_size

log = logging.getLogger("personal_nlf")

METHODS = ("no_pers", "rag", "rag_random", "planpers", "summary")
# The prompt template each method answers with.
TEMPLATE_OF = {"no_pers": "no_pers", "rag": "rag", "rag_random": "rag", "planpers": "planpers",
               "summary": "summary_answer"}


@dataclass(frozen=True)
class EvalRecord:
    domain: str
    split: str
    record: Record
    own: list[str]  # texts of the record's own top-k profile items (retrieval order)
    other: list[str]  # top-k items of another user's profile (rag_random)

    @property
    def key(self) -> str:
        return f"{self.domain}/{self.split}/{self.record.id}"


class BackendPool:
    """One loaded model per distinct engine across roles. hf roles that name the same model,
    adapter (and its serving), dtype, device and prompt format share one set of weights whatever
    their batch sizes and sampling (the policy batches 16, the judge 4); each gets a view with its
    own settings. vLLM roles share an engine when its settings are equal, whatever their input
    budgets, batch sizes and sampling; with `adapter_serving: lora` whatever their adapters too
    (each view sends its own adapter as LoRA requests: VAC's phi(t) and pi(t-1) on one engine),
    merged only with the same adapter. openai roles share a client only when everything but
    sampling is equal."""

    HF_ENGINE_FIELDS = ("backend", "model", "adapter", "adapter_serving", "dtype", "device", "prompt_format")
    SAMPLING_FIELDS = {"temperature", "top_p", "max_new_tokens"}
    # What a view of a vLLM engine sets per role (VLLMBackend.for_role; read per call).
    VLLM_VIEW_FIELDS = {"adapter", "max_input_tokens", "batch_size"}

    def __init__(self, models_dir, seed: int):
        self.models_dir, self.seed, self._cache = models_dir, seed, {}

    @classmethod
    def engine_key(cls, role: RoleConfig) -> str:
        if role.backend == "hf":
            return stable_hash(role.model_dump(include=set(cls.HF_ENGINE_FIELDS)))
        if role.backend == "vllm":
            # A LoRA-enabled engine serves any adapter; a merged one only its own.
            per_view = cls.VLLM_VIEW_FIELDS - ({"adapter"} if role.adapter_serving == "merged" else set())
            return stable_hash(role.model_dump(exclude=cls.SAMPLING_FIELDS | per_view))
        return stable_hash(role.model_dump(exclude=cls.SAMPLING_FIELDS))

    def get(self, role: RoleConfig) -> Backend:
        key = self.engine_key(role)
        if key not in self._cache:
            log.info("loading %s backend for %s%s", role.backend, role.model,
                     f" + adapter {role.adapter}" if role.adapter else "")
            self._cache[key] = load_backend(role, self.models_dir, self.seed)
        return self._cache[key].for_role(role)

    def keep_only(self, roles: list[RoleConfig]) -> None:
        """Release every engine the next phase does not use (a stage holds only the engines it
        needs at that moment: on a GPU, the policy's vLLM engine is gone before the judge's starts)."""
        keep = {self.engine_key(r) for r in roles}
        for key in [k for k in self._cache if k not in keep]:
            log.info("releasing an engine the next phase does not use")
            self._cache.pop(key).close()

    def close(self) -> None:
        for b in self._cache.values():
            b.close()
        self._cache.clear()


def load_eval_records(prepared: str | Path, index: str | Path | None, domains: list[str], split: str) -> list[EvalRecord]:
    """Records of the split with their retrieved profile texts (none when index is None: no_pers)."""
    out = []
    for domain in domains:
        records = load_prepared(prepared, domain, split)
        by_id = {r.id: r for r in records}
        if index is None:
            out.extend(EvalRecord(domain, split, r, [], []) for r in records)
            continue
        rows = {row["id"]: row for row in pl.read_parquet(Path(index) / domain / f"{split}.parquet").to_dicts()}
        for r in records:
            row = rows[r.id]
            items = {p.id: p.text for p in r.profile}
            own = [items[i] for i in row["top_ids"]]
            other_rec = by_id.get(row["random_user_id"]) if row["random_user_id"] else None
            other_items = {p.id: p.text for p in other_rec.profile} if other_rec else {}
            other = [other_items[i] for i in row["random_top_ids"]]
            out.append(EvalRecord(domain, split, r, own, other))
    return out


def policy_prompt(method: str, er: EvalRecord, plan: list[str] | None = None, summary: str | None = None):
    """The evaluation-time prompt: built from the question and profile texts (or, for
    `summary`, the user's learned summary) only."""
    q = er.record.question
    if method == "no_pers":
        return prompts.no_pers(q)
    if method == "rag":
        return prompts.rag(q, er.own)
    if method == "rag_random":
        return prompts.rag(q, er.other)
    if method == "planpers":
        return prompts.planpers(q, er.own, plan or [])
    if method == "summary":
        if summary is None:
            raise ValueError(f"{er.key}: no summary for this user (method summary needs one per record)")
        return prompts.summary_answer(q, summary)
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def _gen_record(er: EvalRecord, role: RoleConfig, backend: Backend, sampling, template: str, messages, g) -> dict:
    answer, outcome = prompts.parse_answer(g.text)
    return {
        "domain": er.domain, "split": er.split, "id": er.record.id,
        "model": role.model, "adapter": role.adapter, "backend": backend.name,
        "sampling": sampling.to_dict(), "template": template, "prompt_hash": prompts.template_hash(template),
        "prompt_sha": stable_hash(messages), "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens, "latency_s": round(g.latency_s, 4),
        "finish_reason": g.finish_reason, "truncated_prompt": bool(g.extra.get("truncated")),
        "text": g.text, "answer": answer, "parse_outcome": outcome,
    }


def without_timing(rec: dict) -> dict:
    """A generated record as written to a result file: its wall-clock latency (kept in the
    journal for the run record) would make reruns differ."""
    return {k: v for k, v in rec.items() if k != "latency_s"}


def answer(method: str, recs: list[EvalRecord], params: Params, pool: BackendPool, out_dir: Path,
           policy: RoleConfig, planner: RoleConfig | None = None,
           summaries: dict[str, str] | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Generate (journaled) the method's answers; returns (answers by key, plans by key)."""
    plans: dict[str, dict] = {}
    if method == "planpers":
        prole = planner or params.models.planner
        pb = pool.get(prole)
        ps = sampling_for(prole, seed=params.seed)
        items = [(er.key, prompts.planner(er.record.question, er.own)) for er in recs]
        fp = stable_hash({"role": prole.model_dump(), "backend": pb.describe(), "sampling": ps.to_dict(),
                          "prompts": [m for _, m in items]})
        j = Journal(out_dir / "plans.jsonl.partial", fp, log=log.info)
        by_key = {er.key: er for er in recs}
        prompts_by_key = dict(items)

        def to_plan(key, gens):
            rec = _gen_record(by_key[key], prole, pb, ps, "planner", prompts_by_key[key], gens[0])
            rec["plan"], rec["plan_outcome"] = prompts.parse_plan(gens[0].text)
            return rec

        plans = generate_journaled(pb, items, ps, j, to_plan, chunk_size=submission_size(prole), desc="plans")
        write_jsonl_atomic(out_dir / "plans.jsonl", [without_timing(plans[er.key]) for er in recs])
        j.close()  # removed by evaluate_method once judged: a kill while judging regenerates nothing

    backend = pool.get(policy)
    sampling = sampling_for(policy, seed=params.seed)
    template = TEMPLATE_OF[method]
    items = [(er.key, policy_prompt(method, er, plans.get(er.key, {}).get("plan"), (summaries or {}).get(er.key)))
             for er in recs]
    fp = stable_hash({"method": method, "role": policy.model_dump(), "backend": backend.describe(),
                      "sampling": sampling.to_dict(), "prompts": [m for _, m in items]})
    j = Journal(out_dir / "generations.jsonl.partial", fp, log=log.info)
    by_key = {er.key: er for er in recs}
    prompts_by_key = dict(items)
    answers = generate_journaled(
        backend, items, sampling, j,
        lambda key, gens: _gen_record(by_key[key], policy, backend, sampling, template, prompts_by_key[key], gens[0]),
        chunk_size=submission_size(policy), desc=method)
    write_jsonl_atomic(out_dir / "generations.jsonl", [without_timing(answers[er.key]) for er in recs])
    j.close()  # removed by evaluate_method once judged
    return answers, plans


def judge_answers(recs: list[EvalRecord], answers: dict[str, dict], params: Params, pool: BackendPool,
                  out_dir: Path) -> list[dict[str, Any]]:
    """Each record's answer judged on its rubric (journaled); out_dir/judge_scores.jsonl."""
    to_judge = [judge.Answer(er.key, er.record.question, er.record.narrative, er.record.rubric_aspects,
                             answers[er.key]["answer"], {"domain": er.domain, "split": er.split, "id": er.record.id})
                for er in recs]
    rows, _ = judge.judge_answers(to_judge, pool.get(params.models.judge), params,
                                  journal_path=out_dir / "judge_scores.jsonl.partial",
                                  out_path=out_dir / "judge_scores.jsonl")
    return rows


def write_predictions(recs: list[EvalRecord], answers: dict[str, dict], out_dir: Path) -> None:
    """The official LaMP-QA evaluator's input format: {id: [{"output": text}]} per domain."""
    for domain in sorted({er.domain for er in recs}):
        preds = {er.record.id: [{"output": answers[er.key]["answer"]}] for er in recs if er.domain == domain}
        write_json_atomic(out_dir / "predictions" / f"{domain}.json", preds)


def output_sample(recs: list[EvalRecord], answers: dict[str, dict], judge_rows: list[dict], n: int = 6) -> list[dict]:
    """A few answers with their question scores, one domain after another, for a quick look in
    MLflow. Any profile item that an answer quotes verbatim is masked: raw profile text is never
    logged (the full outputs stay in the stage's own files)."""
    qs = metrics.question_scores(judge_rows)
    profile = sorted({p.text for er in recs for p in er.record.profile if len(p.text) >= 12}, key=len, reverse=True)
    by_domain: dict[str, list[EvalRecord]] = {}
    for er in recs:
        by_domain.setdefault(er.domain, []).append(er)
    order = [er for group in zip_longest(*by_domain.values()) for er in group if er is not None]
    sample = []
    for er in order[:n]:
        text = answers[er.key]["answer"]
        for t in profile:
            text = text.replace(t, "[profile item]")
        sample.append({"domain": er.domain, "id": er.record.id, "question_score": round(qs[(er.domain, er.record.id)], 4),
                       "answer": text, "parse_outcome": answers[er.key]["parse_outcome"]})
    return sample


def method_metrics(method: str, recs, answers, plans, judge_rows, params: Params, described: dict[str, dict],
                   policy: RoleConfig, prepared: str | Path, extra: dict | None = None,
                   planner: RoleConfig | None = None) -> dict[str, Any]:
    qs = metrics.question_scores(judge_rows)
    summary = metrics.summarize(qs, n_boot=params.baselines.bootstrap_samples, seed=params.seed)
    n = len(recs)
    ptoks = sum(answers[er.key]["prompt_tokens"] + plans.get(er.key, {}).get("prompt_tokens", 0) for er in recs)
    judge_out = outcome_counts(judge_rows)
    roles = {"policy": policy, "judge": params.models.judge}
    if plans:
        roles["planner"] = planner or params.models.planner
    templates = ["judge", TEMPLATE_OF[method]] + (["planner"] if plans else [])
    return {
        "method": method,
        **summary,
        "prompt_tokens_per_query": round(ptoks / n, 1),
        "answer_parse": dict(sorted(Counter(a["parse_outcome"] for a in answers.values()).items())),
        "hit_token_budget": sum(1 for a in answers.values() if a["finish_reason"] == "length"),
        "truncated_prompts": sum(1 for a in answers.values() if a["truncated_prompt"]),
        "empty_profiles": sum(1 for er in recs if not er.record.profile),
        "judge_outcomes": judge_out,
        "judge_failures": sum(v for k, v in judge_out.items() if k.startswith("failed")),
        "judge_label_mass": judge.label_mass_summary(judge_rows),
        "provenance": provenance.collect(
            params.seed,
            {name: described[name] for name in roles},
            {name: sampling_for(r, seed=params.seed).to_dict() for name, r in roles.items()},
            templates, prepared, {"judge": params.judge.model_dump(),
                                 "bootstrap_samples": params.baselines.bootstrap_samples, **(extra or {})}),
    }


# Which generator prompts a method's pairwise preference accuracy is measured under: its own
# (retrieved profile, summary) and, for a paired comparison, no personalization.
PAIRWISE_CONDITIONS = {"no_pers": ("none",), "rag": ("rag", "none"), "summary": ("summary", "none")}


def wants_pairwise(method: str, recs: list[EvalRecord]) -> bool:
    """Whether a method's evaluation measures pairwise preference accuracy: data with preference
    pairs (the controlled-persona benchmark) and a method with a generator prompt to score under."""
    return method in PAIRWISE_CONDITIONS and any(er.record.pairs for er in recs)


def pairwise_metrics(method: str, recs: list[EvalRecord], pool: BackendPool, policy: RoleConfig, params: Params,
                     summaries: dict[str, str] | None) -> dict[str, Any] | None:
    """Does the policy (generator) give the user's chosen response a higher likelihood than the
    rejected one, under this method's prompt and under none? (wants_pairwise)"""
    if not wants_pairwise(method, recs):
        return None
    conds = PAIRWISE_CONDITIONS[method]
    cases = preferences.pairwise_conditions(recs, summaries, conds)
    pool.keep_only([policy])  # the planner is done: the policy (generator) scores the pairs
    pa = preferences.pairwise_accuracy(pool.get(policy).answer_logprobs, cases, n_boot=params.baselines.bootstrap_samples,
                                       seed=params.seed)
    return {"condition": conds[0], **pa}


def evaluate_method(method: str, params: Params, prepared: str | Path, index: str | Path, models_dir,
                    out_dir: str | Path, metrics_path: str | Path, policy: RoleConfig | None = None,
                    split: str | None = None, extra: dict | None = None,
                    planner: RoleConfig | None = None, summaries: dict[str, str] | None = None,
                    records: list[EvalRecord] | None = None, pool: BackendPool | None = None) -> dict[str, Any]:
    """pool: the caller's, whose engines the policy may share (the caller closes it); else one of
    this call's own."""
    policy = policy or params.models.policy
    split = split or params.baselines.eval_split
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if method not in ("no_pers", "summary") and index is None:
        raise ValueError(f"method {method} needs the retrieval index (--index)")
    recs = records if records is not None else load_eval_records(prepared, index, params.data.domains, split)
    if wants_pairwise(method, recs) and policy.backend not in ANSWER_SCORING_BACKENDS:
        # Refused before any answer is generated, not after.
        raise ConfigError(f"{method}: the {split} records carry preference pairs, and their pairwise accuracy needs "
                          f"the policy's answer log-likelihoods, which the {policy.backend} backend cannot return: "
                          f"evaluate with a policy backend in {', '.join(ANSWER_SCORING_BACKENDS)}")
    own_pool = pool is None
    pool = pool or BackendPool(models_dir, params.seed)
    try:
        answers, plans = answer(method, recs, params, pool, out_dir, policy, planner, summaries)
        described = {"policy": pool.get(policy).describe()}
        if plans:
            described["planner"] = pool.get(planner or params.models.planner).describe()
        pairwise = pairwise_metrics(method, recs, pool, policy, params, summaries)  # while the policy is loaded
        pool.keep_only([params.models.judge])  # the policy is done: only the judge's engine stays
        judge_rows = judge_answers(recs, answers, params, pool, out_dir)
        described["judge"] = pool.get(params.models.judge).describe()
        write_predictions(recs, answers, out_dir)
        write_json_atomic(out_dir / "sample_outputs.json", output_sample(recs, answers, judge_rows))
        result = method_metrics(method, recs, answers, plans, judge_rows, params, described, policy, prepared,
                                extra, planner)
        if pairwise is not None:
            result["pairwise_accuracy"] = pairwise
    finally:
        if own_pool:
            pool.close()
    write_json_atomic(metrics_path, result)
    latency = sum(answers[er.key]["latency_s"] + plans.get(er.key, {}).get("latency_s", 0.0) for er in recs)
    provenance.write_run_record(metrics_path, {"s_per_query": round(latency / len(recs), 4),
                                               "generation_seconds": round(latency, 2), "queries": len(recs)})
    for name in ("plans", "generations"):  # the answer journals are no longer needed
        (out_dir / f"{name}.jsonl.partial").unlink(missing_ok=True)
    return result
