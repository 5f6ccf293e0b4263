"""Stage train_planner: optional LoRA SFT of the PlanPers planner on train-split rubric aspects
(`planner_sft.enabled`); otherwise records that the untrained planner is used."""

from pathlib import Path

from personal_nlf import planner, stage, tracking


def main(args, params):
    logged = {"planner_sft": params.planner_sft.model_dump(), "train": params.train.model_dump(),
              "planner": params.models.planner.model_dump(), "seed": params.seed}
    with tracking.stage_run(params.tracking, "train_planner", logged) as run:
        result = planner.train_planner(params, args.prepared, args.index, args.models_dir, Path(args.out))
        stage.log.info("train_planner: %s", result)
        run.log_metrics(result)


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--prepared", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--out", required=True, help="folder for state.json (+ adapter/ when trained)")
    stage.run(main, p)
