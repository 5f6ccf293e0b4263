"""Stage report: the results table (metrics/report.md + .json), paired tests, plot data."""

from personal_nlf import report, stage, tracking
from personal_nlf.io import write_json_atomic, write_text_atomic


def main(args, params):
    spec = {}
    for item in args.row:
        name, rest = item.split("=", 1)
        mpath, jpath = rest.split(":", 1)
        spec[name] = (mpath, jpath)
    with tracking.stage_run(params.tracking, "report", {"rows": list(spec), "seed": params.seed}) as run:
        rep = report.build(report.load_rows(spec), seed=params.seed)
        note = (f"Embedded default unless params say otherwise: policy `{params.models.policy.model}`, judge "
                f"`{params.models.judge.model}` ({params.judge.method} method), data `{params.data.source}`, "
                f"split `{params.baselines.eval_split}`.")
        write_text_atomic(args.markdown, report.to_markdown(rep, note))
        write_json_atomic(args.json, rep)
        write_json_atomic(args.plot, report.domain_plot_rows(rep))
        run.log_metrics({f"macro.{r['method']}": r["macro"] for r in rep["table"]})
        run.log_artifact(args.markdown)
        print(open(args.markdown).read())


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--row", action="append", required=True, help="NAME=METRICS_JSON:JUDGE_SCORES_JSONL (repeatable)")
    p.add_argument("--markdown", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--plot", required=True, help="per-domain scores for the DVC bar plot")
    stage.run(main, p)
