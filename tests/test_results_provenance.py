"""Committed results come from the committed code and params.

Every metrics file of the default run (`metrics/`, `make repro`) and of the controlled-benchmark run
(`results/persona*/`, scripts/persona_results.py) records the content hash of the package source
that produced it. It must be HEAD's: a change to src/ without regenerating the results fails here.
The controlled-benchmark run's params must be today's params.yaml with exactly its `-S` overrides."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import set_params
from personal_nlf import provenance

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("persona_results", ROOT / "scripts/persona_results.py")
persona_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(persona_results)


def metrics_files(folder: Path) -> list[Path]:
    """Metrics files that carry provenance (run records, plots and the report carry none)."""
    loaded = {p: json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}
    return [p for p, obj in loaded.items() if isinstance(obj, dict) and "provenance" in obj]


RUNS = sorted(r for r in persona_results.RUNS if (ROOT / "results" / r).exists())


def test_the_controlled_benchmark_run_is_committed():
    assert "persona" in RUNS


@pytest.mark.parametrize("folder", ["metrics"] + [f"results/{r}/metrics" for r in RUNS])
def test_committed_results_were_produced_by_this_code(folder):
    files = metrics_files(ROOT / folder)
    assert len(files) >= 8, f"{folder}: expected a metrics file per method, found {len(files)}"
    stale = {str(p.relative_to(ROOT)): json.loads(p.read_text())["provenance"]["code_hash"] for p in files}
    stale = {k: v for k, v in stale.items() if v != provenance.code_hash()}
    assert not stale, (f"results produced by other code than src/ now holds ({provenance.code_hash()}): {stale}; "
                       "regenerate them: `make repro` on a fresh clone for metrics/ (README, 'Results on the embedded default'), "
                       "`python scripts/persona_results.py run <run>` for results/<run>/")


def judge_scores_of(run_root: Path, metrics_path: Path) -> Path:
    """The kept per-aspect judge rows a metrics file was computed from (stages/report.py's pairing)."""
    rel = metrics_path.relative_to(run_root / "metrics")
    if len(rel.parts) == 1:  # a baseline: metrics/<method>.json
        return run_root / "outputs/baselines" / rel.stem / "judge_scores.jsonl"
    return run_root / "outputs" / rel.parts[0] / rel.stem / "evaluate/judge_scores.jsonl"  # metrics/<loop>/iter_<t>.json


@pytest.mark.parametrize("run", RUNS)
def test_every_committed_controlled_benchmark_score_is_recomputed_from_its_kept_judge_rows(run, capsys):
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
def test_controlled_benchmark_runs_used_todays_params_with_their_overrides(run, tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in persona_results.RUNS[run])})
    used = yaml.safe_load((ROOT / "results" / run / "params.yaml").read_text())
    assert used == yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert json.loads((ROOT / "results" / run / "run.json").read_text())["command"] == persona_results.command(run)


def test_collect_keeps_this_runs_files_and_not_another_modes(tmp_path, monkeypatch):
    """A summary-mode run in a workspace that earlier ran mode nlf still has metrics/nlf and
    outputs/nlf: `collect` must not file them under the summary run (and the reverse)."""
    clone = tmp_path / "clone"
    files = {"metrics/no_pers.json": "{}", "metrics/nlf/iter_1.json": "{}", "metrics/summary/iter_1.json": "{}",
             "outputs/baselines/rag/generations.jsonl": "", "outputs/baselines/rag/predictions/x": "",
             "outputs/nlf/iter_1/evaluate/judge_scores.jsonl": "", "outputs/summary/iter_1/evaluate/summaries.jsonl": "",
             "logs/baseline_rag.log": "t start: x\nt done in 9.0 s\nt start: x\nt done in 3.5 s\n",
             "params.yaml": "seed: 1\n", "dvc.lock": "schema: '2.0'\n"}
    for rel, text in files.items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(git + cmd, cwd=clone, check=True)
    monkeypatch.setattr(persona_results, "ROOT", tmp_path / "repo")

    persona_results.collect("persona-summary", clone, 12.5, "test machine")
    out = tmp_path / "repo/results/persona-summary"
    kept = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert kept == {"metrics/no_pers.json", "metrics/summary/iter_1.json", "metrics/stage_times.json",
                    "outputs/baselines/rag/generations.jsonl", "outputs/summary/iter_1/evaluate/summaries.jsonl",
                    "params.yaml", "dvc.lock", "run.json"}
    assert json.loads((out / "metrics/stage_times.json").read_text())["seconds"] == {"baseline_rag": 3.5}
    assert json.loads((out / "metrics/stage_times.json").read_text())["wall_minutes"] == 12.5
    assert "-S mode=summary -S summary.reward=popi" in json.loads((out / "run.json").read_text())["command"]

    persona_results.collect("persona", clone, 1.0, "test machine")
    kept = {str(p.relative_to(tmp_path / "repo/results/persona")) for p in (tmp_path / "repo/results/persona").rglob("*")}
    assert "metrics/nlf/iter_1.json" in kept and "outputs/nlf/iter_1/evaluate/judge_scores.jsonl" in kept
    assert not any("summary" in k for k in kept)
