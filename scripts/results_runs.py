"""results/<run>/: committed runs of the real pipeline, each with what a reader needs to check it.

    python scripts/results_runs.py run persona|persona-summary|lamp-qa-sample [--in CLONE] [--machine TEXT]
    python scripts/results_runs.py collect RUN CLONE --wall-minutes M [--machine TEXT] [--command TEXT]

`run` clones HEAD into a temporary folder (or, with --in, moves an earlier run's clone to HEAD, so
that DVC reruns only the stages a change made stale), sets it up (`make setup`), runs `dvc exp run`
there on the run's pipeline (PIPELINE below; dvc.yaml unless named) with the run's `-S` overrides of
params.yaml (RUNS below) and then `collect`s it.

`collect` copies into results/<run>/: the run's metrics/ (report, per-method metrics, run records),
its params.yaml and dvc.lock (and pipelines/summary/dvc.lock for the summary pipeline), the per-question generations and judge scores of every evaluated
method (so `personal-nlf rescore` can recompute them), the VAC loop's target counts, offline RL's
selections, the summarizer's reward curves, the exported summaries (exports/, summary pipeline), its pipeline's stage times from
its logs (with date, machine and wall time), and run.json (the git revision its stages ran at, from
the run records, and the command). The README's result blocks are generated from those files
(scripts/readme_results.py).

- `persona`: the embedded default (`make repro`; no overrides): the controlled-persona benchmark
  (data/persona, `verifier` judge) on a slice of 16 records per split and domain, VAC and offline
  RL. `collect` also writes its metrics/ and dvc.lock to the top level; this folder adds
  the per-question files that DVC keeps only in its cache.
- `persona-summary`: the summary pipeline (pipelines/summary/dvc.yaml) with POPI's reward on the users' own preference pairs
  (`summary.reward: popi`); its evaluation measures pairwise preference accuracy with and without
  the learned summary. The generator and transfer's base_policy get the policy's 96 new tokens.
- `lamp-qa-sample`: the LaMP-QA-format sample (data/sample) with the settings it ran with when it
  was the default: the logprob judge (no aspect of the sample has a machine check), 64 new tokens,
  every record, checkpoint selection on validation. The pipeline tests run these settings on a
  slice (tests/conftest.py). Not committed (COMMITTED below): its last committed run is in git at
  9c6fd37. Every change to src/ makes every committed run stale, and on the 2-core host the three
  runs took ~3 h to regenerate, more than a working session has beside a CI run.
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

# Each run's `-S` overrides of today's params.yaml (tests/test_results_provenance.py checks that the
# committed params.yaml of the run is exactly this).
RUNS = {"persona": [],
        "persona-summary": ["summary.reward=popi", "models.generator.max_new_tokens=96",
                            "transfer.generators.base_policy.max_new_tokens=96"],
        "lamp-qa-sample": ["data.source=data/sample", "judge.method=logprob", "models.policy.max_new_tokens=64",
                           "data.max_records_per_split=null", "train.select_on_validation=true"]}
# The pipeline a run reproduces: dvc.yaml unless named here.
SUMMARY_PIPELINE = "pipelines/summary/dvc.yaml"
PIPELINE = {"persona-summary": SUMMARY_PIPELINE}
# The runs kept in results/ (tests/test_results_provenance.py checks that each is current).
COMMITTED = ("persona", "persona-summary")
# What the other pipeline's run may have left in a reused clone's metrics/ (not this run's).
OTHER_PIPELINES_METRICS = {"default": {"summary", "summary_report.md", "summary_report.json", "transfer.json",
                                       "summary_domain_scores.json", "summary_iterations.json"},
                           "summary": {"nlf", "offline_rl", "report.md", "report.json", "domain_scores.json",
                                       "nlf_iterations.json", "offline_rl_iterations.json"}}
LOOP_FOLDERS = {"default": {"summary"}, "summary": {"nlf", "offline_rl"}}
# Stages only the summary pipeline has, besides its loop's (logs/iteration_summary_*.log).
SUMMARY_ONLY_STAGES = {"transfer_models", "export", "transfer"}


def own_stage_log(pipeline: str, log_name: str) -> bool:
    """Whether logs/<log_name>.log is a stage of this run's pipeline (a clone that ran both keeps
    both's logs). The summary pipeline's run counts only its own stages: the ones it shares with
    the default (prepare, index, the baselines) are the default run's, restored from DVC's cache;
    `report` is the last run's (each pipeline has one)."""
    summary = log_name.startswith("iteration_summary_") or log_name in SUMMARY_ONLY_STAGES
    return summary or log_name == "report" if pipeline == "summary" else not summary

# Per-question files of every evaluated method (relative to the clone); missing ones are skipped.
KEPT = ["outputs/baselines/*/generations.jsonl", "outputs/baselines/*/judge_scores.jsonl",
        "outputs/*/iter_*/evaluate/generations.jsonl", "outputs/*/iter_*/evaluate/judge_scores.jsonl",
        "outputs/nlf/iter_*/train_policy/targets.json", "outputs/offline_rl/iter_*/judge/selection.jsonl",
        "outputs/summary/iter_*/evaluate/summaries.jsonl", "outputs/summary/iter_*/train_summarizer/reward_curve.json",
        "exports/*"]


def command(run: str) -> str:
    return " ".join(["dvc exp run"] + ([PIPELINE[run]] if run in PIPELINE else []) + [f"-S {s}" for s in RUNS[run]])


def stage_revision(clone: Path) -> str:
    """The git revision the run's stages ran at (their run records), else the clone's HEAD."""
    revs = {json.loads(p.read_text()).get("git_revision") for p in (clone / "metrics").rglob("*.run.json")}
    if len(revs - {None}) == 1:
        return (revs - {None}).pop()
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.strip()


def pipeline_stages(repo: Path, dvc_yaml: str) -> set[str]:
    """The stage names `dvc_yaml` defines (foreach expanded), as its dvc.lock names them."""
    dvc = repo / ".venv" / "bin" / "dvc"  # the clone's own (`run` sets the clone up); else the caller's
    out = subprocess.run([str(dvc) if dvc.exists() else "dvc", "stage", "list", "--name-only", dvc_yaml], cwd=repo, capture_output=True,
                         text=True, check=True).stdout
    return {line.split(":")[-1] for line in out.split()}


def prune_lock(lock: Path, stages: set[str]) -> list[str]:
    """Drop the entries of stages `stages` does not hold: DVC keeps a removed stage's entry in
    dvc.lock (a run in a clone of an older commit carries it on). Line-based, so the rest of the
    file stays byte for byte as DVC wrote it. Returns the names dropped."""
    kept, dropped, keep = [], [], True
    for line in lock.read_text().splitlines(keepends=True):
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            name = line.strip()[:-1]
            keep = name in stages
            if not keep:
                dropped.append(name)
        elif not line.startswith(" "):
            keep = True  # a top-level key (schema, stages)
        if keep:
            kept.append(line)
    lock.write_text("".join(kept))
    return dropped


def collect(run: str, clone: Path, wall_minutes: float, machine: str, cmd: str | None = None) -> None:
    rev = stage_revision(clone)
    dest = ROOT / "results" / run
    pipeline = "summary" if run in PIPELINE else "default"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(clone / "metrics", dest / "metrics", ignore=lambda d, names: [
        n for n in names if Path(d) in (clone / "metrics", clone / "metrics/plots")
        and n in OTHER_PIPELINES_METRICS[pipeline]])
    for name in ("params.yaml", "dvc.lock") + ((SUMMARY_PIPELINE.replace("dvc.yaml", "dvc.lock"),)
                                               if pipeline == "summary" else ()):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(clone / name, dest / name)
        if name.endswith("dvc.lock"):
            dropped = prune_lock(dest / name, pipeline_stages(clone, name.replace("dvc.lock", "dvc.yaml")))
            if dropped:
                print(f"{name}: dropped the entries of stages no longer in the pipeline: {', '.join(dropped)}")
    for pattern in KEPT:
        for src in sorted(clone.glob(pattern)):
            rel = src.relative_to(clone)
            if rel.parts[1] in LOOP_FOLDERS[pipeline] or (rel.parts[0] == "exports" and pipeline != "summary"):
                continue
            dst = dest / src.relative_to(clone)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # Date, machine and wall time live in stage_times.json; run.json adds what produced the run.
    (dest / "metrics/stage_times.json").write_text(
        json.dumps(stage_times_record(clone, machine, wall_minutes, lambda name: own_stage_log(pipeline, name)),
                   indent=2) + "\n")
    (dest / "run.json").write_text(json.dumps({"git_revision": rev, "command": cmd or command(run)}, indent=2) + "\n")
    print(f"wrote {dest.relative_to(ROOT)} from {clone} (git {rev[:12]})")
    if not RUNS[run]:  # the default's run: its metrics/, exports/ and dvc.lock are also the top-level ones
        for folder in ("metrics", "exports"):
            shutil.rmtree(ROOT / folder, ignore_errors=True)
            if (dest / folder).exists():
                shutil.copytree(dest / folder, ROOT / folder)
        shutil.copy2(dest / "dvc.lock", ROOT / "dvc.lock")
        print("and metrics/, dvc.lock at the top level")


def venv_env(clone: Path) -> dict[str, str]:
    """This environment inside the clone's .venv, as the Makefile's RUN sets it for `make repro`."""
    venv = clone / ".venv"
    return {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(name: str, machine: str, clone: Path | None = None) -> None:
    """In a fresh clone of HEAD, or with `clone` in an earlier run's clone moved to HEAD: there DVC
    reruns only the stages whose code, data or params changed and restores the rest from its cache.
    Stage times are each stage's last run in the clone (its logs), so a restored stage keeps the time
    of the run that produced its outputs; the wall time is this invocation's only. Keep one clone per
    run: logs are named by stage, not by pipeline (both pipelines have a `report`), so another run in the same clone overwrites them."""
    with tempfile.TemporaryDirectory(prefix="results-run-") as tmp:
        if clone is None:
            clone = Path(tmp) / "repo"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        else:  # an experiment leaves params.yaml, dvc.lock and metrics/ modified: back to HEAD's
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
            subprocess.run(["git", "fetch", "-q", str(ROOT), head], cwd=clone, check=True)
            subprocess.run(["git", "reset", "-q", "--hard", head], cwd=clone, check=True)
        subprocess.run(["make", "setup"], cwd=clone, check=True)
        t0 = time.time()
        subprocess.run(command(name).split(), cwd=clone, env=venv_env(clone), check=True)
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
    c.add_argument("--command", default=None, help="the command that ran, if not `run`'s (e.g. `make repro`)")
    r.add_argument("--in", dest="clone", type=Path, default=None,
                   help="an earlier run's clone to reuse (its DVC cache: only changed stages rerun)")
    for p in (r, c):
        p.add_argument("--machine", default="2-core CPU, 24 GiB, no GPU")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.name, args.machine, args.clone)
    else:
        collect(args.name, args.clone, args.wall_minutes, args.machine, args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
