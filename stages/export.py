"""Stage export (pipelines/summary/dvc.yaml): the learned per-user summaries of one iteration of
the summary loop to exports/ (summaries.jsonl and the OpenAI chat format)."""

from personal_nlf import export, stage, tracking


def last_iteration(params) -> str:
    return sorted(params.nlf.iterations, key=lambda t: (len(t), t))[-1]


def main(args, params):
    it = params.summary.export_iteration or last_iteration(params)
    if it not in params.nlf.iterations:
        raise stage.StageError(f"summary.export_iteration {it!r} is not an iteration of nlf.iterations "
                               f"({', '.join(params.nlf.iterations)})")
    with tracking.stage_run(params.tracking, "export", {"iteration": it, "summary": params.summary.model_dump()},
                            {"loop": "summary", "iteration": it}) as run:
        stats = export.export_iteration(params, args.root, args.prepared, it, args.out)
        stage.log.info("exported %d users (iteration %s) to %s", stats["users"], it, args.out)
        run.log_metrics(stats)


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--root", required=True, help="outputs/summary: the summary loop's iterations")
    p.add_argument("--prepared", required=True)
    p.add_argument("--out", required=True)
    stage.run(main, p)
