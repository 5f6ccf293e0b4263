"""Stage <step>@<t>: one step of iteration t of a training loop (src/personal_nlf/modes/): the
configured `mode`'s, or the one named by --loop (offline_rl: the scalar-reward baseline).
`--step init` writes iteration 0 (the untrained models)."""

import json
import time
from pathlib import Path

from personal_nlf import modes, stage, tracking


def main(args, params):
    loop = args.loop or params.mode
    mode = modes.get(loop)
    if args.step != "init" and args.step not in mode.STEPS:
        raise stage.StageError(f"loop {loop!r} has no step {args.step!r} (steps: {', '.join(mode.STEPS)})")
    t = args.t
    if args.step != "init" and t not in params.nlf.iterations:
        raise stage.StageError(f"iteration {t!r} is not in nlf.iterations of {args.params}")
    prev = params.nlf.iterations[t].prev if args.step != "init" else None
    ctx = modes.IterationContext(params, t, prev, Path(args.root), Path(args.prepared), Path(args.index),
                                 Path(args.models_dir), Path(args.metrics) if args.metrics else None, loop=loop)
    # The params this step declares (stage_params.reads), nothing else: a guarded view dumps only those.
    logged = {"loop": loop, "iteration": t, "prev": prev, **params.model_dump()}
    tags = {"loop": loop, "iteration": t, "step": args.step}
    name = f"{args.step}@{t}" if args.loop is None else f"{loop}_{args.step}@{t}"
    with tracking.stage_run(params.tracking, name, logged, tags) as run:
        # TRL's own MLflow callback logs per-step training curves into this stage's run.
        ctx.extra["report_to"] = ["mlflow"] if params.tracking.enabled else []
        t0 = time.time()
        fn = mode.init if args.step == "init" else mode.STEPS[args.step]
        result = fn(ctx) or {}
        result["seconds"] = round(time.time() - t0, 1)
        stage.log.info("%s@%s (%s): %s", args.step, t, loop, json.dumps(result, default=str)[:500])
        run.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
        if ctx.metrics:
            run.log_artifact(ctx.metrics)
            run.log_artifact(ctx.dir("evaluate") / "sample_outputs.json")


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--step", required=True, choices=("init",) + modes.STEP_NAMES)
    p.add_argument("--loop", choices=modes.LOOPS, default=None, help="default: params `mode`")
    p.add_argument("--t", required=True, help="iteration name (a key of nlf.iterations; 0 for init)")
    p.add_argument("--root", required=True, help="outputs/<mode>: iteration folders live here")
    p.add_argument("--prepared", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--metrics", default=None, help="metrics JSON (evaluate only)")
    stage.run(main, p)
