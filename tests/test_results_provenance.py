"""Committed results come from the committed code, data and params.

The default run (`metrics/`, `dvc.lock`: `make repro`) and the committed runs (`results/<run>/`,
scripts/results_runs.py) each keep their dvc.lock (the summary run also its
pipelines/summary/dvc.lock). DVC's status against it, in a fresh copy of this
commit, must find no stage whose code, data or params changed since it ran, and no committed metric
that differs from what the stage wrote. Each run's params must be today's params.yaml with exactly
its `-S` overrides; the default's run (`results/persona/`) is the one whose metrics/ and dvc.lock are
committed at the top level. Every kept judge row recomputes its metrics file."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import copy_worktree, dvc, git_snapshot, load_script, set_params

ROOT = Path(__file__).resolve().parent.parent
results_runs = load_script("results_runs")


def metrics_files(folder: Path) -> list[Path]:
    """Metrics files that carry provenance (run records, plots and the report carry none)."""
    loaded = {p: json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}
    return [p for p, obj in loaded.items() if isinstance(obj, dict) and "provenance" in obj]


RUNS = sorted(results_runs.COMMITTED)


def test_the_default_run_is_committed_with_its_per_question_files():
    """results/persona/ is `make repro`'s run (no overrides): its metrics/ and dvc.lock are the
    top-level ones, byte for byte; the folder adds the per-question files DVC keeps in its cache."""
    assert sorted(r.name for r in (ROOT / "results").iterdir()) == RUNS and results_runs.RUNS["persona"] == []
    run = ROOT / "results/persona"
    files = sorted(p.relative_to(run / "metrics") for p in (run / "metrics").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ROOT / "metrics") for p in (ROOT / "metrics").rglob("*") if p.is_file())
    differ = [str(f) for f in files if (run / "metrics" / f).read_bytes() != (ROOT / "metrics" / f).read_bytes()]
    assert not differ, f"metrics/ and results/persona/metrics/ differ in {differ}"
    assert (run / "dvc.lock").read_bytes() == (ROOT / "dvc.lock").read_bytes()


def test_every_lock_entry_is_a_stage_of_its_pipeline():
    """DVC keeps a removed stage's entry in dvc.lock; a committed lock holds only its pipeline's
    stages (results_runs.prune_lock), so it records no code the pipeline no longer runs."""
    stages = {p: results_runs.pipeline_stages(ROOT, p) for p in ("dvc.yaml", results_runs.SUMMARY_PIPELINE)}
    locks = {ROOT / "dvc.lock": "dvc.yaml"}
    for run in RUNS:
        locks[ROOT / "results" / run / "dvc.lock"] = "dvc.yaml"
        locks[ROOT / "results" / run / results_runs.SUMMARY_PIPELINE.replace("dvc.yaml", "dvc.lock")] = \
            results_runs.SUMMARY_PIPELINE
    for lock, pipeline in locks.items():
        if lock.exists():
            extra = set(yaml.safe_load(lock.read_text())["stages"]) - stages[pipeline]
            assert not extra, f"{lock.relative_to(ROOT)} has entries of stages not in {pipeline}: {sorted(extra)}"


def out_of_date(repo: Path, pipeline: str = "dvc.yaml") -> list[str]:
    """What `dvc status` in `repo` (a fresh copy of this commit, no DVC cache) finds out of date
    against its dvc.lock, other than what a fresh clone lacks by design: outputs not in the cache,
    and dependencies that are such outputs (`outputs/`, `models/`). Left are stale code, data and
    params dependencies, changed commands and committed outputs (metrics/, exports/) that differ."""
    lock_files = [repo / "dvc.lock", repo / results_runs.SUMMARY_PIPELINE.replace("dvc.yaml", "dvc.lock")]
    locks = [yaml.safe_load(f.read_text())["stages"] for f in lock_files if f.exists()]
    outs = {o["path"] for lock in locks for st in lock.values() for o in st.get("outs", [])}

    def produced(path: str) -> bool:
        return any(path == o or o.startswith(path + "/") or path.startswith(o + "/") for o in outs)

    stale = []
    # The pipeline's stages and the other pipeline's stages they depend on (the summary pipeline's
    # run includes the default's prepare, index and baselines).
    for name, changes in json.loads(dvc("status", "--json", "--with-deps", pipeline, cwd=repo).stdout).items():
        for change in changes:
            if not isinstance(change, dict):
                stale.append(f"{name}: {change}")
                continue
            for kind, paths in change.items():
                for path, what in paths.items():
                    if (kind == "changed outs" and what == "not in cache") or (kind == "changed deps" and produced(path)):
                        continue
                    stale.append(f"{name}: {kind} {path}: {what}")
    return stale


@pytest.mark.parametrize("run", [None] + RUNS)
def test_committed_results_are_up_to_date_with_this_commit(run, tmp_path):
    """DVC's own check, stage by stage: in a fresh copy of this commit holding the run's params.yaml,
    dvc.lock(s), metrics/ and exports/ (None: the top-level ones, `make repro`'s), every stage's code,
    data and params hashes equal what its lock entry recorded, and the committed metrics equal the
    lock's. tests/test_dvc_graph.py keeps each stage's deps equal to its import closure, so a change
    to src/ makes exactly the stages that run that code stale (regenerate: README, "Reproducing")."""
    repo = copy_worktree(tmp_path / "repo")
    if run is not None:
        src = ROOT / "results" / run
        for name in ("params.yaml", "dvc.lock", results_runs.SUMMARY_PIPELINE.replace("dvc.yaml", "dvc.lock")):
            if (src / name).exists():
                shutil.copy2(src / name, repo / name)
        for folder in ("metrics", "exports"):
            shutil.rmtree(repo / folder, ignore_errors=True)
            if (src / folder).exists():
                shutil.copytree(src / folder, repo / folder)
    stale = out_of_date(repo, results_runs.PIPELINE.get(run, "dvc.yaml"))
    assert not stale, (f"{'results/' + run if run else 'the top-level dvc.lock'} is out of date with this commit:\n"
                       + "\n".join(stale[:20]) + "\nregenerate: `python scripts/results_runs.py run <run>` (persona: "
                       "it also writes the top-level metrics/ and dvc.lock)")


def test_a_stale_dependency_or_metric_is_caught(tmp_path):
    """The check above fails on a changed source file, a changed param and an edited metric."""
    repo = copy_worktree(tmp_path / "repo")
    assert out_of_date(repo) == []
    with (repo / "src/personal_nlf/metrics.py").open("a") as f:
        f.write("# changed\n")
    set_params(repo, seed=7)
    report = repo / "metrics/report.md"
    report.write_text(report.read_text() + "edited\n")
    stale = "\n".join(out_of_date(repo))
    assert "src/personal_nlf/metrics.py: modified" in stale and "params.yaml" in stale and "metrics/report.md" in stale


def judge_scores_of(run_root: Path, metrics_path: Path) -> Path:
    """The kept per-aspect judge rows a metrics file was computed from (stages/report.py's pairing)."""
    rel = metrics_path.relative_to(run_root / "metrics")
    if len(rel.parts) == 1:  # a baseline: metrics/<method>.json
        return run_root / "outputs/baselines" / rel.stem / "judge_scores.jsonl"
    return run_root / "outputs" / rel.parts[0] / rel.stem / "evaluate/judge_scores.jsonl"  # metrics/<loop>/iter_<t>.json


@pytest.mark.parametrize("run", RUNS)
def test_every_committed_score_is_recomputed_from_its_kept_judge_rows(run, capsys):
    """`personal-nlf rescore` on each kept judge_scores.jsonl reproduces its metrics file exactly
    (per domain, macro, CIs): the table in the README is what the per-question outputs say."""
    from personal_nlf import cli

    run_root = ROOT / "results" / run
    for m in metrics_files(run_root / "metrics"):
        with pytest.raises(SystemExit) as e:
            cli.main(["rescore", str(judge_scores_of(run_root, m)), "--metrics", str(m)])
        out = capsys.readouterr()
        assert e.value.code == 0, f"{m.relative_to(ROOT)}: {(out.err or out.out)[-500:]}"


@pytest.mark.parametrize("run", RUNS)
def test_committed_runs_used_todays_params_with_their_overrides(run, tmp_path):
    """The run.json command is the one that ran (history); the params it ran with must be today's
    params.yaml plus the run's overrides."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in results_runs.RUNS[run])})
    used = yaml.safe_load((ROOT / "results" / run / "params.yaml").read_text())
    assert used == yaml.safe_load((tmp_path / "params.yaml").read_text())
    info = json.loads((ROOT / "results" / run / "run.json").read_text())
    assert info["command"].startswith(("dvc exp run", "make repro")) and len(info["git_revision"]) == 40


def test_collect_keeps_this_runs_files_and_not_the_other_pipelines(tmp_path, monkeypatch):
    """A summary-pipeline run in a workspace that earlier ran the default one still has metrics/nlf,
    outputs/nlf and report.md: `collect` must not file them under the summary run (and the reverse)."""
    clone = tmp_path / "clone"
    files = {"metrics/no_pers.json": "{}", "metrics/nlf/iter_1.json": "{}", "metrics/summary/iter_1.json": "{}",
             "metrics/report.md": "", "metrics/summary_report.md": "", "exports/summaries.jsonl": "",
             "pipelines/summary/dvc.yaml": "stages:\n  summarize:\n    cmd: echo\n",
             "pipelines/summary/dvc.lock": "schema: '2.0'\nstages:\n  summarize:\n    cmd: echo\n",
             "outputs/baselines/rag/generations.jsonl": "", "outputs/baselines/rag/predictions/x": "",
             "outputs/nlf/iter_1/evaluate/judge_scores.jsonl": "", "outputs/summary/iter_1/evaluate/summaries.jsonl": "",
             "logs/baseline_rag.log": "t start: x\nt done in 9.0 s\nt start: x\nt done in 3.5 s\n",
             "logs/iteration_summary_rank_1.log": "t start: x\nt done in 2.0 s\n",
             "params.yaml": "seed: 1\n", "dvc.yaml": "stages:\n  prepare:\n    cmd: echo\n",
             # DVC keeps a removed stage's entry (`export` left the default pipeline): collect drops it.
             "dvc.lock": "schema: '2.0'\nstages:\n  prepare:\n    cmd: echo\n  export:\n    cmd: echo\n"}
    for rel, text in files.items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text(text)
    git_snapshot(clone)
    subprocess.run(["dvc", "init", "-q"], cwd=clone, check=True)  # collect asks DVC for each pipeline's stages
    monkeypatch.setattr(results_runs, "ROOT", tmp_path / "repo")

    results_runs.collect("persona-summary", clone, 12.5, "test machine")
    out = tmp_path / "repo/results/persona-summary"
    kept = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert kept == {"metrics/no_pers.json", "metrics/summary/iter_1.json", "metrics/summary_report.md",
                    "metrics/stage_times.json", "outputs/baselines/rag/generations.jsonl",
                    "outputs/summary/iter_1/evaluate/summaries.jsonl", "exports/summaries.jsonl",
                    "params.yaml", "dvc.lock", "pipelines/summary/dvc.lock", "run.json"}
    assert set(yaml.safe_load((out / "dvc.lock").read_text())["stages"]) == {"prepare"}
    assert set(yaml.safe_load((out / "pipelines/summary/dvc.lock").read_text())["stages"]) == {"summarize"}
    # Each run's stage times are its own pipeline's stages (the shared ones are the default's).
    assert json.loads((out / "metrics/stage_times.json").read_text())["seconds"] == {"iteration_summary_rank_1": 2.0}
    assert json.loads((out / "metrics/stage_times.json").read_text())["wall_minutes"] == 12.5
    assert json.loads((out / "run.json").read_text())["command"].startswith(
        "dvc exp run pipelines/summary/dvc.yaml -S summary.reward=popi")

    results_runs.collect("persona", clone, 1.0, "test machine")
    kept = {str(p.relative_to(tmp_path / "repo/results/persona")) for p in (tmp_path / "repo/results/persona").rglob("*")}
    assert "metrics/nlf/iter_1.json" in kept and "outputs/nlf/iter_1/evaluate/judge_scores.jsonl" in kept
    assert not any("summary" in k for k in kept)
    stage_times = tmp_path / "repo/results/persona/metrics/stage_times.json"
    assert json.loads(stage_times.read_text())["seconds"] == {"baseline_rag": 3.5}
    # The default's run (no overrides) is also the top-level metrics/ and dvc.lock.
    assert (tmp_path / "repo/metrics/nlf/iter_1.json").exists() and (tmp_path / "repo/dvc.lock").exists()
