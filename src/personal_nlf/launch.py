"""Data-parallel training under `accelerate launch` (train.processes > 1).

The stage's own process prepares the rows, claims the work folder, writes the rows and a spec
there, and runs

    python -m accelerate.commands.launch --config_file <train.accelerate_config>
        --num_processes <train.processes> ... -m personal_nlf.launch <work>/launch/spec.json

Every rank runs `training.train` on the same rows (the trainer shards the batches); rank 0
writes the trainer's stats. The stage's process then, alone, selects a checkpoint (validation
runs there), exports the adapter and writes state.json (training.fit_and_export).

On a machine without CUDA the ranks train on CPU over gloo: accelerate's own `--cpu` starts a
single process (its simple launcher; several need mpirun), so the ranks are started the way
multi-GPU ones are (torchrun, `--multi_gpu`) and each builds its state with use_cpu=True, which
accelerate runs as MULTI_CPU with the gloo backend. FSDP / DeepSpeed configs apply on GPUs only.

A rank that fails writes its error to the launch folder; the stage reports it in one line (the
ranks' full output stays in <work>/launch/ranks.log, the work folder is kept on failure).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import training
from .config import ConfigError, RoleConfig, TrainConfig
from .io import read_jsonl, write_json_atomic, write_jsonl_atomic
from .stage import StageError

log = logging.getLogger("personal_nlf")


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def threads_per_process(processes: int) -> int:
    """Torch threads for each of `processes` processes sharing this machine's cores (torchrun's own
    default is 1; more processes x threads than cores makes them spin against each other)."""
    return max(1, (os.cpu_count() or 1) // processes)


def accelerate_command(cfg: TrainConfig, spec: Path, cpu: bool) -> list[str]:
    """The `accelerate launch` command line for the ranks (same Python as this process)."""
    conf = Path(cfg.accelerate_config)
    if not conf.is_file():
        raise ConfigError(f"train.accelerate_config: {conf} is not a file (shipped: configs/accelerate/*.yaml)")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(conf),
           "--num_processes", str(cfg.processes), "--num_machines", "1", "--machine_rank", "0",
           "--main_process_port", "0"]  # 0: a free port (two stages may train at once)
    if cpu:
        cmd += ["--multi_gpu", "--mixed_precision", "no"]  # torchrun-started ranks; gloo (module doc)
    return cmd + ["-m", "personal_nlf.launch", str(spec)]


def train_distributed(objective: str, rows: list[dict[str, Any]], role: RoleConfig, models_dir, cfg: TrainConfig,
                      work_dir: str | Path, seed: int, init_adapter: str | None = None,
                      report_to: list[str] | None = None) -> dict[str, Any]:
    """training.train's result, computed by cfg.processes ranks under accelerate launch."""
    from .llm.hf import pick_device

    if not rows:
        raise ValueError("no training examples")
    work_dir = Path(work_dir).resolve()
    cpu = not pick_device(role.device).startswith("cuda")
    training._claim_work_dir(work_dir, training.work_fingerprint(objective, rows, role, cfg, seed, init_adapter))
    ldir = work_dir / "launch"
    ldir.mkdir(parents=True, exist_ok=True)
    for old in ldir.glob("*.json"):  # a previous (killed) launch's stats and errors
        old.unlink()
    write_jsonl_atomic(ldir / "rows.jsonl", rows)
    spec = {"objective": objective, "role": role.model_dump(mode="json"), "train": cfg.model_dump(mode="json"),
            "models_dir": str(Path(models_dir).resolve()) if models_dir else None, "work_dir": str(work_dir),
            "seed": seed, "init_adapter": init_adapter, "report_to": list(report_to or []), "mlflow": None}
    if "mlflow" in spec["report_to"]:
        import mlflow

        run = mlflow.active_run()
        if run is not None:  # rank 0 logs the trainer's curves into a run nested under the stage's
            spec["mlflow"] = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": run.info.run_id,
                              "experiment_id": run.info.experiment_id}
    write_json_atomic(ldir / "spec.json", spec)
    cmd = accelerate_command(cfg, ldir / "spec.json", cpu)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cpu and "OMP_NUM_THREADS" not in env:  # torchrun would set 1
        env["OMP_NUM_THREADS"] = str(threads_per_process(cfg.processes))
    log.info("%s: training under accelerate launch, %d processes (%s, %s); ranks' output in %s", objective,
             cfg.processes, cfg.accelerate_config, "CPU, gloo" if cpu else "CUDA", ldir / "ranks.log")
    t0 = time.time()
    with open(ldir / "ranks.log", "w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:
        errors = sorted(ldir.glob("error-rank*.json"), key=lambda p: int(p.stem.removeprefix("error-rank")))
        if errors:
            first = json.loads(errors[0].read_text())
            what = f"rank {first['rank']}: {first['error']}"
        else:
            lines = [ln for ln in (ldir / "ranks.log").read_text(errors="replace").splitlines() if ln.strip()]
            what = f"exit status {rc}, no rank reported an error; last output: {_one_line(lines[-1] if lines else '')}"
        raise StageError(f"{objective} training under accelerate launch ({cfg.processes} processes, "
                         f"{cfg.accelerate_config}) failed: {what} (full output: {ldir / 'ranks.log'})")
    stats_file = ldir / "stats.json"
    if not stats_file.exists():
        raise StageError(f"{objective} training under accelerate launch exited 0 but rank 0 wrote no {stats_file}")
    stats = json.loads(stats_file.read_text())
    log.info("%s: %d steps on %d processes in %.0f s", objective, stats["steps"], stats["world_size"], time.time() - t0)
    return stats


def rank_main(spec_file: str) -> None:
    """What every rank runs: training.train on the spec's rows; rank 0 writes stats.json."""
    spec_path = Path(spec_file)
    ldir = spec_path.parent
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        spec = json.loads(spec_path.read_text())
        rows = read_jsonl(ldir / "rows.jsonl")
        if rank == 0 and spec["mlflow"]:
            import mlflow

            # The trainer's MLflow callback starts its run here, tagged as a child of the stage's run
            # (resuming the stage's run in this process would end it when this process exits).
            mlflow.set_tracking_uri(spec["mlflow"]["tracking_uri"])
            mlflow.set_experiment(experiment_id=spec["mlflow"]["experiment_id"])
            os.environ["MLFLOW_TAGS"] = json.dumps({"mlflow.parentRunId": spec["mlflow"]["run_id"]})
        stats = training.train(spec["objective"], rows, RoleConfig.model_validate(spec["role"]), spec["models_dir"],
                               TrainConfig.model_validate(spec["train"]), spec["work_dir"], seed=spec["seed"],
                               init_adapter=spec["init_adapter"], report_to=spec["report_to"], claim=False)
        if rank == 0:
            write_json_atomic(ldir / "stats.json", stats)
    except BaseException as e:
        write_json_atomic(ldir / f"error-rank{rank}.json", {"rank": rank, "error": _one_line(f"{type(e).__name__}: {e}")})
        raise


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: accelerate launch ... -m personal_nlf.launch <work>/launch/spec.json")
    rank_main(sys.argv[1])
