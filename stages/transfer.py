"""Stage transfer: the exported summaries on generators never trained with them (transfer.generators:
the untrained policy, a second embedded model, any OpenAI-compatible endpoint). Each generator
answers the evaluation split with the user's summary, without personalization (no_pers) and with
RAG (k = retrieval.k); every answer is judged as in the baselines. Stage of
pipelines/summary/dvc.yaml."""

import json
from pathlib import Path

from personal_nlf import evaluate, export, models, stage, tracking
from personal_nlf.io import write_json_atomic


def local_role(role, models_dir: Path, extra_dir: Path):
    """Embedded models that base_model did not materialize live in the transfer models folder."""
    if role.model.startswith(models.EMBEDDED_PREFIX):
        name = role.model[len(models.EMBEDDED_PREFIX):]
        if not (models_dir / name).exists() and (extra_dir / name).exists():
            return role.model_copy(update={"model": str(extra_dir / name)})
    return role


def main(args, params):
    out, metrics_path = Path(args.out), Path(args.metrics)
    exported = export.load(args.summaries)
    recs = evaluate.load_eval_records(args.prepared, args.index, params.data.domains, params.baselines.eval_split)
    summaries = {er.key: exported[(er.domain, er.record.id)]["summary"] for er in recs
                 if (er.domain, er.record.id) in exported}
    missing = [er.key for er in recs if er.key not in summaries]
    if missing:
        raise stage.StageError(f"{args.summaries}: no summary for {len(missing)} evaluation record(s), "
                               f"first {missing[0]} (export and evaluation split differ?)")
    baselines = {}
    for item in args.baseline:
        method, path = item.split("=", 1)
        baselines[method] = path
    table = {}
    with tracking.stage_run(params.tracking, "transfer", {"generators": {k: v.model_dump() for k, v in
                                                                         params.transfer.generators.items()}},
                            {"loop": "summary"}) as run:
        for name, role in params.transfer.generators.items():
            role = local_role(role, Path(args.models_dir), Path(args.extra_models_dir))
            row = {"model": role.model, "backend": role.backend}
            for method in ("summary", "no_pers", "rag"):
                if method in baselines and role == params.models.policy:
                    # Same model, adapter, backend and sampling as the baseline stage: greedy
                    # decoding gives the same answers, so its judged result is reused.
                    m = json.loads(Path(baselines[method]).read_text())
                    row[f"{method}_reused_from"] = baselines[method]
                else:
                    mdir = out / name / method
                    m = evaluate.evaluate_method(method, params, args.prepared, args.index, args.models_dir, mdir,
                                                 mdir / "metrics.json", policy=role, summaries=summaries,
                                                 extra={"transfer_generator": name})
                row[method] = {"macro": m["macro"], "macro_ci95": m["macro_ci95"],
                               "domains": {d: v["score"] for d, v in m["domains"].items()},
                               "prompt_tokens_per_query": m["prompt_tokens_per_query"],
                               "answer_parse": m.get("answer_parse"),
                               # with preference pairs: the generator's pairwise accuracy under this
                               # method's prompt and under none (evaluate_method measures both)
                               "pairwise_accuracy": m.get("pairwise_accuracy")}
                stage.log.info("transfer %s / %s: macro %.4f", name, method, m["macro"])
            row["context_reduction_ratio"] = round(row["rag"]["prompt_tokens_per_query"]
                                                   / row["summary"]["prompt_tokens_per_query"], 3)
            table[name] = row
            run.log_metrics({f"{name}.{k}": row[k]["macro"] for k in ("summary", "no_pers", "rag")})
        write_json_atomic(metrics_path, {"summaries": args.summaries,
                                         "split": params.baselines.eval_split, "generators": table})


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--summaries", required=True, help="exports/summaries.jsonl")
    p.add_argument("--prepared", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--extra-models-dir", required=True, help="models/transfer (stage transfer_models)")
    p.add_argument("--baseline", action="append", default=[],
                   help="METHOD=METRICS_JSON of the base policy's baseline, reused for the generator that "
                        "equals models.policy (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    stage.run(main, p)
