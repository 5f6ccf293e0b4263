"""Stage report: the results table (metrics/report.md + .json; summary mode's: metrics/summary_report.*), paired tests, plot data."""

import json
from pathlib import Path

from personal_nlf import report, stage, tracking
from personal_nlf.io import write_json_atomic, write_text_atomic


def main(args, params):
    spec = {}
    for item in args.row:
        name, rest = item.split("=", 1)
        mpath, jpath = rest.split(":", 1)
        spec[name] = (mpath, jpath)
    loop_rows, ref_keys, plots = {}, {}, {}
    for item in args.loop:
        name, rest = item.split("=", 1)
        mdir, odir, plot = rest.split(":", 2)
        plots[name] = plot
        # The iterations params declare (not whatever files lie around: a removed iteration's
        # old metrics must not reappear in the report).
        its = sorted(params.nlf.iterations, key=lambda t: (len(t), t))
        for i, t in enumerate(its):
            row = f"{name}@{t}"
            spec[row] = (f"{mdir}/iter_{t}.json", f"{odir}/iter_{t}/evaluate/judge_scores.jsonl")
            loop_rows[row] = (name, int(t))
            if i == len(its) - 1:  # the paper's VAC / Offline RL rows are final iterations
                ref_keys[row] = {"nlf": "vac"}.get(name, name)
    with tracking.stage_run(params.tracking, "report", {"rows": list(spec), "seed": params.seed}) as run:
        rep = report.build(report.load_rows(spec), seed=params.seed, reference_key=ref_keys)
        note = (f"Embedded default unless params say otherwise: policy `{params.models.policy.model}`, judge "
                f"`{params.models.judge.model}` ({params.judge.method} method), data `{params.data.source}`, "
                f"split `{params.baselines.eval_split}`.")
        md = report.to_markdown(rep, note) + report.pairwise_markdown(rep)
        if args.transfer:
            transfer = json.loads(open(args.transfer).read())
            rep["transfer"] = transfer.get("generators", {})
            md += report.transfer_markdown(transfer)
        write_text_atomic(args.markdown, md)
        # Not a DVC output: wall-clock figures change on every run (the results above must not).
        write_text_atomic(Path(args.markdown).with_name("timings.md"), report.timings_markdown(spec))
        write_json_atomic(args.json, rep)
        write_json_atomic(args.plot, report.domain_plot_rows(rep))
        for name, plot in plots.items():
            write_json_atomic(plot, [{"iteration": loop_rows[r["method"]][1], "macro": r["macro"],
                                      **{report.SHORT.get(d, d): v for d, v in r["domains"].items()}}
                                     for r in rep["table"] if loop_rows.get(r["method"], ("",))[0] == name])
        run.log_metrics({f"macro.{r['method']}": r["macro"] for r in rep["table"]})
        # Logprob judge: mean probability on the labels (the report flags a judge below threshold).
        run.log_metrics({f"label_mass.{r['method']}": r["judge_label_mass"]["mean"]
                         for r in rep["table"] if r.get("judge_label_mass")})
        run.log_artifact(args.markdown)
        print(open(args.markdown).read())


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--row", action="append", required=True, help="NAME=METRICS_JSON:JUDGE_SCORES_JSONL (repeatable)")
    p.add_argument("--markdown", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--loop", action="append", default=[],
                   help="NAME=METRICS_DIR:OUTPUTS_DIR:PLOT_JSON (repeatable): one row per iteration of a training "
                        "loop, and its score per iteration for the DVC line plot")
    p.add_argument("--transfer", default=None, help="metrics/transfer.json (summary mode's transfer table)")
    p.add_argument("--plot", required=True, help="per-domain scores for the DVC bar plot")
    stage.run(main, p)
