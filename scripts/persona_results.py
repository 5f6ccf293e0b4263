"""results/<run>/: the controlled-persona benchmark (data/persona) through the real pipeline.

    python scripts/persona_results.py run persona [--machine TEXT]
    python scripts/persona_results.py run persona-summary [--machine TEXT]
    python scripts/persona_results.py collect RUN CLONE --wall-minutes M [--machine TEXT]

`run` clones HEAD into a temporary folder, sets it up (`make setup`), runs the experiment below with
`dvc exp run` there and then `collect`s it. `collect` copies what a reader needs to check the
numbers into results/<run>/: the run's metrics/ (report, per-method metrics, run records), its
params.yaml and dvc.lock, the per-question generations and judge scores of every evaluated method
(so `personal-nlf rescore` can recompute them), the VAC loop's target counts, the stage times from
its logs (with date, machine and wall time), and run.json (git revision, command). The README's
"Controlled benchmark" block is generated from those files (scripts/readme_results.py).

The experiment is the embedded default with the data switched to data/persona and its scoring to
the `verifier` judge, on a slice: 16 records per split and domain (48 test questions: 12 questions,
each asked by one user of each of the 4 personas). The policy gets 96 new tokens (a 55-word prose
answer needs about 75 plus the JSON wrapper; data/persona/README.md). Checkpoint selection on the
validation split is off: with 4 LoRA steps it would evaluate two nearly identical checkpoints on 24
more questions per training stage (~2 x 3 min each here) and change nothing measurable.
`persona` runs VAC and offline RL (mode nlf); `persona-summary` runs summary mode with POPI's reward
on the users' own preference pairs (`summary.reward: popi`), whose evaluation measures pairwise
preference accuracy with and without the learned summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from readme_results import stage_times_record  # noqa: E402

SETS = ["data.source=data/persona", "judge.method=verifier", "models.policy.max_new_tokens=96",
        "data.max_records_per_split=16", "train.select_on_validation=false"]
# Summary mode answers with models.generator; transfer's base_policy must stay equal to models.policy
# (its no_pers and RAG rows are then the baselines' own, not recomputed).
RUNS = {"persona": SETS,
        "persona-summary": SETS + ["mode=summary", "summary.reward=popi", "models.generator.max_new_tokens=96",
                                   "transfer.generators.base_policy.max_new_tokens=96"]}
# A loop's metrics folder that another mode's run may have left in the workspace (not this run's).
LOOP_FOLDERS = {"nlf", "summary"}

# Per-question files of every evaluated method (relative to the clone); missing ones are skipped.
KEPT = ["outputs/baselines/*/generations.jsonl", "outputs/baselines/*/judge_scores.jsonl",
        "outputs/*/iter_*/evaluate/generations.jsonl", "outputs/*/iter_*/evaluate/judge_scores.jsonl",
        "outputs/nlf/iter_*/train_policy/targets.json", "outputs/offline_rl/iter_*/judge/selection.jsonl",
        "outputs/summary/iter_*/evaluate/summaries.jsonl", "outputs/summary/iter_*/train_feedback/reward_curve.json"]


def command(run: str) -> str:
    return "dvc exp run " + " ".join(f"-S {s}" for s in RUNS[run])


def collect(run: str, clone: Path, wall_minutes: float, machine: str) -> None:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = ROOT / "results" / run
    mode = "summary" if "mode=summary" in RUNS[run] else "nlf"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(clone / "metrics", dest / "metrics", ignore=lambda d, names: [
        n for n in names if Path(d) == clone / "metrics" and n in LOOP_FOLDERS - {mode}])
    for name in ("params.yaml", "dvc.lock"):
        shutil.copy2(clone / name, dest / name)
    for pattern in KEPT:
        for src in sorted(clone.glob(pattern)):
            if src.relative_to(clone).parts[1] in LOOP_FOLDERS - {mode}:
                continue
            dst = dest / src.relative_to(clone)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # Date, machine and wall time live in stage_times.json; run.json adds what produced the run.
    (dest / "metrics/stage_times.json").write_text(
        json.dumps(stage_times_record(clone, machine, wall_minutes), indent=2) + "\n")
    (dest / "run.json").write_text(json.dumps({"git_revision": rev, "command": command(run)}, indent=2) + "\n")
    print(f"wrote {dest.relative_to(ROOT)} from {clone} (git {rev[:12]})")


def run(name: str, machine: str) -> None:
    with tempfile.TemporaryDirectory(prefix="persona-results-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["make", "setup"], cwd=clone, check=True)
        venv = clone / ".venv"
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
               "VIRTUAL_ENV": str(venv), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.time()
        subprocess.run(command(name).split(), cwd=clone, env=env, check=True)
        collect(name, clone, round((time.time() - t0) / 60, 1), machine)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="clone HEAD, set up, run the experiment, collect")
    c = sub.add_parser("collect", help="copy a finished run's files into results/<run>/")
    for p in (r, c):
        p.add_argument("name", choices=sorted(RUNS))
    c.add_argument("clone", type=Path)
    c.add_argument("--wall-minutes", type=float, required=True, help="wall time of the `dvc exp run`")
    for p in (r, c):
        p.add_argument("--machine", default="2-core CPU, 24 GiB, no GPU")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.name, args.machine)
    else:
        collect(args.name, args.clone, args.wall_minutes, args.machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
