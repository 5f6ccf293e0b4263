"""`personal-nlf apply`: answer questions through any OpenAI-compatible chat API with each user's
exported summary as the system message, optionally judged on the questions' rubrics.

Every answered record is appended to a journal as it arrives (`<out>.partial`), so an
interruption or a server that goes down loses nothing: rerun the same command and only the
missing records are asked. The API key is read from the environment variable named by
--api-key-env; it is never written anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import data, export, metrics
from . import judge as judge_lib
from .config import DOMAINS, Params, RoleConfig
from .generation import generate_journaled
from .io import Journal, stable_hash, write_json_atomic, write_jsonl_atomic
from .judge import outcome_counts
from .llm import BackendError, load_backend, sampling_for, submission_size

log = logging.getLogger("personal_nlf")


class ApplyError(RuntimeError):
    """apply cannot go on; the message says what was kept and how to resume."""


def domain_of(path: Path, explicit: str | None) -> str | None:
    if explicit:
        return explicit
    return path.parent.name if path.parent.name in DOMAINS else None


def match(questions: list[data.Record], summaries: dict[tuple[str, str], dict], domain: str | None):
    """(record, summary row) pairs, and the ids with no summary (reported, not answered)."""
    by_id: dict[str, list[dict]] = {}
    for (d, i), row in summaries.items():
        by_id.setdefault(i, []).append(row)
    pairs, missing = [], []
    for r in questions:
        row = summaries.get((domain, r.id)) if domain else None
        if row is None and not domain:
            rows = by_id.get(r.id, [])
            if len(rows) > 1:
                raise ApplyError(f"id {r.id!r} has summaries in several domains; pass --domain")
            row = rows[0] if rows else None
        if row is None:
            missing.append(r.id)
        else:
            pairs.append((r, row))
    return pairs, missing


def messages(summary: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": export.system_message(summary)}, {"role": "user", "content": question}]


def run(summaries_path: str | Path, questions_path: str | Path, role: RoleConfig, out: str | Path,
        domain: str | None = None, judge_params: Params | None = None, models_dir=None, seed: int = 0) -> dict[str, Any]:
    questions_path, out = Path(questions_path), Path(out)
    summaries = export.load(summaries_path)
    rows = data.read_rows(questions_path)
    records, problems, _ = data.validate_rows(rows, str(questions_path), require_rubric=judge_params is not None)
    if problems:
        raise ApplyError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    dom = domain_of(questions_path, domain)
    pairs, missing = match(records, summaries, dom)
    if missing:
        log.warning("%d question(s) of %s have no exported summary and are not answered: %s", len(missing),
                    questions_path, ", ".join(missing[:10]))
    if not pairs:
        raise ApplyError(f"{questions_path}: none of its {len(records)} questions has a summary in {summaries_path}")
    backend = load_backend(role, models_dir, seed)
    sampling = sampling_for(role, seed=seed)
    items = [(f"{row['domain']}/{r.id}", messages(row["summary"], r.question)) for r, row in pairs]
    fp = stable_hash({"endpoint": role.base_url, "model": role.model, "sampling": sampling.to_dict(),
                      "prompts": [m for _, m in items]})
    journal = Journal(out.with_name(out.name + ".partial"), fp, log=log.info)
    by_key = {f"{row['domain']}/{r.id}": (r, row) for r, row in pairs}

    def to_record(key, gens):
        r, row = by_key[key]
        g = gens[0]
        return {"domain": row["domain"], "id": r.id, "question": r.question, "answer": g.text,
                "model": role.model, "base_url": role.base_url, "summary_iteration": row.get("iteration"),
                "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                "latency_s": round(g.latency_s, 4), "finish_reason": g.finish_reason}

    try:
        answers = generate_journaled(backend, items, sampling, journal, to_record, chunk_size=submission_size(role),
                                     desc="apply")
    except BackendError as e:
        done = len(journal.done)
        journal.close()
        raise ApplyError(f"{e}. {done} of {len(items)} answers are kept in {journal.path}; rerun the same "
                         "command to answer the rest") from None
    finally:
        backend.close()
    write_jsonl_atomic(out, [answers[k] for k, _ in items])
    journal.close(remove=True)
    result: dict[str, Any] = {"answered": len(items), "no_summary": len(missing), "out": str(out)}
    if judge_params is not None:
        result.update(judge(pairs, answers, judge_params, models_dir, out))
    return result


def judge(pairs, answers, params: Params, models_dir, out: Path) -> dict[str, Any]:
    """The answers judged on their questions' rubrics (journaled): <out stem>.judge_scores.jsonl
    and <out stem>.metrics.json."""
    to_judge = [judge_lib.Answer(f"{row['domain']}/{r.id}", r.question, r.narrative, r.rubric_aspects,
                                 answers[f"{row['domain']}/{r.id}"]["answer"], {"domain": row["domain"], "id": r.id})
                for r, row in pairs]
    scores_path = out.with_name(out.stem + ".judge_scores.jsonl")
    backend = load_backend(params.models.judge, models_dir, params.seed)
    try:
        rows, _ = judge_lib.judge_answers(to_judge, backend, params,
                                          journal_path=scores_path.with_name(scores_path.name + ".partial"),
                                          out_path=scores_path)
    finally:
        backend.close()
    summary = metrics.summarize(metrics.question_scores(rows), n_boot=params.baselines.bootstrap_samples,
                                seed=params.seed)
    write_json_atomic(out.with_name(out.stem + ".metrics.json"), {**summary, "judge_outcomes": outcome_counts(rows),
                                                                  "judge_label_mass": judge_lib.label_mass_summary(rows)})
    return {"macro": summary["macro"], "judge_scores": str(scores_path), "judge_outcomes": outcome_counts(rows)}
