"""Stage <step>@<t>: one step of iteration t of the training loop --loop (src/personal_nlf/modes/):
nlf (VAC), offline_rl (the scalar-reward baseline), summary (POPI-style summaries). Each loop has
its own steps (its STEPS); `--step init` writes iteration 0 (the untrained models)."""

import json
import time
from pathlib import Path

from personal_nlf import modes, stage, tracking


def main(args, params):
    loop = args.loop
    module = modes.get(loop)
    if args.step != "init" and args.step not in module.STEPS:
        raise stage.StageError(f"loop {loop!r} has no step {args.step!r} (steps: {', '.join(module.STEPS)})")
    t = args.t
    if args.step != "init" and t not in params.nlf.iterations:
        raise stage.StageError(f"iteration {t!r} is not in nlf.iterations of {args.params}")
    prev = params.nlf.iterations[t].prev if args.step != "init" else None
    ctx = modes.IterationContext(params, t, prev, Path(args.root), Path(args.prepared), Path(args.index),
                                 Path(args.models_dir), Path(args.metrics) if args.metrics else None, loop=loop)
    # The params this step declares (stage_params.reads), nothing else: a guarded view dumps only those.
    logged = {"loop": loop, "iteration": t, "prev": prev, **params.model_dump()}
    tags = {"loop": loop, "iteration": t, "step": args.step}
    # Under DVC the MLflow run takes the DVC stage's name (tracking.stage_run); this one is for a hand run.
    with tracking.stage_run(params.tracking, f"{loop}_{args.step}@{t}", logged, tags) as run:
        # TRL's own MLflow callback logs per-step training curves into this stage's run.
        ctx.extra["report_to"] = ["mlflow"] if params.tracking.enabled else []
        t0 = time.time()
        fn = module.init if args.step == "init" else module.STEPS[args.step]
        result = fn(ctx) or {}
        result["seconds"] = round(time.time() - t0, 1)
        stage.log.info("%s@%s (%s): %s", args.step, t, loop, json.dumps(result, default=str)[:500])
        run.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
        if ctx.metrics:
            run.log_artifact(ctx.metrics)
            run.log_artifact(ctx.dir("evaluate") / "sample_outputs.json")


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--loop", required=True, choices=modes.LOOPS)
    p.add_argument("--step", required=True, help="init, or one of the loop's STEPS")
    p.add_argument("--t", required=True, help="iteration name (a key of nlf.iterations; 0 for init)")
    p.add_argument("--root", required=True, help="outputs/<loop>: iteration folders live here")
    p.add_argument("--prepared", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--metrics", default=None, help="metrics JSON (evaluate only)")
    stage.run(main, p)
