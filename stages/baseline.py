"""Stage baseline_<method>: a Table-2 row that needs no training (no_pers, rag, rag_random,
planpers) on the evaluation split of every domain: answers, per-aspect judge scores, metrics."""

import json

from personal_nlf import evaluate, provenance, stage, tracking


def main(args, params):
    planner = None
    if args.planner_state:
        # The train_planner stage's result: a LoRA adapter when planner_sft.enabled, else null.
        adapter = json.loads(open(args.planner_state).read())["adapter"]
        planner = params.models.planner.model_copy(update={"adapter": adapter}) if adapter else None
    logged = {"method": args.method, "seed": params.seed, "models": params.models.model_dump(),
              "judge": params.judge.model_dump(), "baselines": params.baselines.model_dump()}
    with tracking.stage_run(params.tracking, f"baseline_{args.method}", logged, {"method": args.method}) as run:
        m = evaluate.evaluate_method(args.method, params, args.prepared, args.index, args.models_dir, args.out,
                                     args.metrics, planner=planner)
        timing = json.loads(provenance.run_record_path(args.metrics).read_text())
        stage.log.info("%s: macro %.4f %s, %.2f s/query", args.method, m["macro"], m["macro_ci95"], timing["s_per_query"])
        run.log_metrics({k: m[k] for k in ("macro", "prompt_tokens_per_query", "judge_failures")})
        run.log_metrics({"s_per_query": timing["s_per_query"]})
        run.log_metrics({f"score.{d}": v["score"] for d, v in m["domains"].items()})
        run.log_artifact(args.metrics)
        run.log_artifact(f"{args.out}/sample_outputs.json")


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--method", required=True, choices=evaluate.METHODS)
    p.add_argument("--prepared", required=True)
    p.add_argument("--index", default=None, help="retrieval index (every method but no_pers)")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--out", required=True, help="folder for generations.jsonl, judge_scores.jsonl, predictions/")
    p.add_argument("--metrics", required=True, help="metrics JSON for this method")
    p.add_argument("--planner-state", default=None, help="planpers: train_planner's state.json (adapter or null)")
    stage.run(main, p)
