"""MLflow tracking and rescoring.

Fast: `personal-nlf rescore` on synthetic judge rows (exact reproduction, the differing field named,
one-line errors), tracking disabled writes no store, one parent per pipeline with nested stage runs.
Slow: a tiny real `dvc repro baseline_rag` in a fresh copy of the repo (base_model, prepare, index,
baseline_rag), then (a) `rescore` reproduces metrics/rag.json exactly from the kept judge scores and
(b) MLflow holds one nested run per stage with params, metrics and tags, and neither an API key nor
any raw profile text anywhere in its store (the sqlite db and every artifact file).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import LAMP_QA_SAMPLE, REPO, copy_worktree, dvc, run, set_params
from personal_nlf import cli, metrics

SECRET = "sk-test-SECRET-123"
STAGES = ["base_model", "prepare", "index", "baseline_rag"]
DOMAINS = ["Art_and_Entertainment", "Lifestyle_and_Personal_Development", "Society_and_Culture"]


def judge_rows(spec: dict[str, list[list[float]]]) -> list[dict]:
    """{domain: [[aspect scores of question 0], [... question 1], ...]} -> judge_scores rows."""
    return [{"domain": d, "split": "test", "id": f"{d[:2]}-{q}", "aspect_index": a, "score": s}
            for d, qs in spec.items() for q, scores in enumerate(qs) for a, s in enumerate(scores)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rescore(*args) -> tuple[int, str, str]:
    """The installed entry point's code path, in a subprocess: exit code, stdout, stderr."""
    r = subprocess.run([sys.executable, "-m", "personal_nlf.cli", "rescore", *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def rescore_inproc(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(["rescore", *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


SPEC = {"A": [[2, 1, 0], [2, 2], [0, 1, 1, 2], [1, 0], [2, 2, 1]],
        "B": [[0, 0], [1, 2, 2], [2, 1], [0, 1, 0]]}


# --- rescore: fast -----------------------------------------------------------------------------

def test_rescore_recomputes_the_summary(tmp_path, capsys):
    scores = write_jsonl(tmp_path / "judge_scores.jsonl", judge_rows(SPEC))
    code, out, _ = rescore_inproc(capsys, scores, "--bootstrap", 300, "--seed", 7)
    assert code == 0
    got = json.loads(out)
    want = metrics.summarize(metrics.question_scores(judge_rows(SPEC)), n_boot=300, seed=7)
    assert {k: got[k] for k in want} == want
    assert got["bootstrap_samples"] == 300 and got["seed"] == 7


def test_rescore_takes_seed_and_bootstrap_from_the_metrics_provenance(tmp_path, capsys):
    rows = judge_rows(SPEC)
    scores = write_jsonl(tmp_path / "judge_scores.jsonl", rows)
    stored = {"method": "rag", **metrics.summarize(metrics.question_scores(rows), n_boot=300, seed=7),
              "s_per_query": 1.0, "provenance": {"seed": 7, "bootstrap_samples": 300}}
    mpath = tmp_path / "rag.json"
    mpath.write_text(json.dumps(stored))
    code, _, err = rescore_inproc(capsys, scores, "--metrics", mpath)
    assert code == 0, err
    assert "reproduced" in err and "note:" not in err
    # Overriding either value changes the CIs: the comparison notices.
    code, _, err = rescore_inproc(capsys, scores, "--metrics", mpath, "--seed", 8)
    assert code == 1 and "ci95" in err
    # Without the count in the file: the documented default (1000), and a note saying so.
    del stored["provenance"]["bootstrap_samples"]
    mpath.write_text(json.dumps(stored))
    code, _, err = rescore_inproc(capsys, scores, "--metrics", mpath)
    assert code == 1 and "does not record the bootstrap sample count; using 1000" in err


@pytest.mark.parametrize("field, change, named", [
    ("macro", lambda m: m.__setitem__("macro", round(m["macro"] + 0.0001, 4)), "macro"),
    ("n", lambda m: m["domains"]["B"].__setitem__("n", 5), "domains.B.n"),
    ("score", lambda m: m["domains"]["A"].__setitem__("score", 0.0), "domains.A.score"),
    ("macro_ci95", lambda m: m.__setitem__("macro_ci95", [0.0, 1.0]), "macro_ci95"),
    ("missing", lambda m: m.pop("macro"), "macro"),
    ("extra domain", lambda m: m["domains"].__setitem__("C", {"score": 1.0, "n": 1, "ci95": [1, 1]}), "domains.C"),
])
def test_rescore_names_the_field_that_differs(tmp_path, field, change, named):
    rows = judge_rows(SPEC)
    scores = write_jsonl(tmp_path / "judge_scores.jsonl", rows)
    stored = {**metrics.summarize(metrics.question_scores(rows), n_boot=200, seed=3),
              "provenance": {"seed": 3, "bootstrap_samples": 200}}
    change(stored)
    mpath = tmp_path / "m.json"
    mpath.write_text(json.dumps(stored))
    code, _, err = rescore(scores, "--metrics", mpath)
    assert code == 1
    assert f"first: {named}" in err.splitlines()[-1], err
    assert "Traceback" not in err


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "no judge rows"),
    ('{"domain": "A", "id": "1", "score": 1}\n{not json\n', "line 2: not valid JSON"),
    ('{"domain": "A", "score": 1}\n', "line 1: missing field(s) id"),
    ('{"domain": "A", "id": "1", "score": 3}\n', "line 1: score must be a number in [0, 2]"),
    ('{"domain": "A", "id": "1", "score": "2"}\n', "line 1: score must be a number in [0, 2]"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('{"domain": "A", "id": "1", "aspect_index": 0, "score": 1}\n' * 2, "line 2: duplicate aspect 0 of A/1"),
])
def test_rescore_bad_input_is_one_line_without_traceback(tmp_path, content, message):
    path = tmp_path / "judge_scores.jsonl"
    if content is not None:
        path.write_text(content)
    code, out, err = rescore(path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_rescore_bad_metrics_file_is_one_line(tmp_path):
    scores = write_jsonl(tmp_path / "judge_scores.jsonl", judge_rows(SPEC))
    (tmp_path / "bad.json").write_text("{oops")
    for mpath, message in ((tmp_path / "bad.json", "not valid JSON"), (tmp_path / "none.json", "no such file")):
        code, out, err = rescore(scores, "--metrics", mpath)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_validate_data_still_works(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["validate-data", str(REPO / "data/sample/Art_and_Entertainment/test.json")])
    assert e.value.code == 0 and ": OK (" in capsys.readouterr().out


# --- tracking: fast ----------------------------------------------------------------------------

def run_python(code: str, cwd: Path, env: dict | None = None) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME")}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env={**e, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_tracking_disabled_writes_no_store_and_never_imports_mlflow(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    out = run_python("""
        import sys
        from personal_nlf.config import TrackingConfig
        from personal_nlf.tracking import stage_run
        with stage_run(TrackingConfig(enabled=False), "prepare", {"data": {"source": "x"}}) as run:
            run.log_metrics({"n_records": 3, "nested": {"x": 1.0}}, step=1)
            run.log_artifact("a.json")
        print("mlflow imported:", "mlflow" in sys.modules)
    """, cwd=tmp_path)
    assert "mlflow imported: False" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_tracking_disabled_in_params_real_stage_writes_no_store(tmp_path):
    params = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params)
    set_params(tmp_path, **{"tracking.enabled": False, "data.source": str(REPO / "data/sample"),
                            "data.max_records_per_split": 1})
    run([sys.executable, str(REPO / "stages/prepare.py"), "--out", "prepared"], cwd=tmp_path)
    assert (tmp_path / "prepared/manifest.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_stage_runs_nest_under_one_parent_per_pipeline(tmp_path):
    """Stage processes of one pipeline share one parent; a failing stage is marked FAILED;
    MLFLOW_TRACKING_URI moves the store out of the working directory."""
    stage = """
        from personal_nlf.config import TrackingConfig
        from personal_nlf.tracking import stage_run
        try:
            with stage_run(TrackingConfig(), "{name}", {{"k": {{"v": 1}}}}) as run:
                run.log_metrics({{"m": 0.5}})
                if "{name}" == "boom":
                    raise RuntimeError("stage failed")
        except RuntimeError:
            pass
    """
    for name in ("prepare", "index", "boom"):
        run_python(stage.format(name=name), cwd=tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("personal_nlf").experiment_id])
    runs = [{"name": r.info.run_name, "status": r.info.status, "tags": r.data.tags, "params": r.data.params,
             "metrics": r.data.metrics, "id": r.info.run_id} for r in found]
    parents = [r for r in runs if "personal_nlf.pipeline" in r["tags"]]
    children = {r["name"]: r for r in runs if "stage" in r["tags"]}
    assert len(parents) == 1 and len(runs) == 4 and set(children) == {"prepare", "index", "boom"}
    assert parents[0]["tags"]["personal_nlf.pipeline"].startswith("workspace@")
    for r in children.values():
        assert r["tags"]["mlflow.parentRunId"] == parents[0]["id"]
        assert r["params"] == {"k.v": "1"} and r["metrics"] == {"m": 0.5}
    assert children["boom"]["status"] == "FAILED" and children["index"]["status"] == "FINISHED"

    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    (tmp_path / "other").mkdir()
    run_python(stage.format(name="prepare"), cwd=tmp_path / "other",
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere / 'mlflow.db'}"})
    assert (elsewhere / "mlflow.db").exists() and not (tmp_path / "other/mlflow.db").exists()


# --- the real pipeline, tiny: slow -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """base_model -> prepare -> index -> baseline_rag on 1 record per split and domain, with an API
    key in the environment. (One question per domain makes every CI a point; the fast tests above
    check CIs, seeds and bootstrap counts on data where they matter. 2 records per domain would not
    help: the 2.5/97.5 percentiles of a 2-question bootstrap are its min and max whatever the seed.)"""
    import time

    repo = copy_worktree(tmp_path_factory.mktemp("repo"))
    set_params(repo, **{**LAMP_QA_SAMPLE, "data.max_records_per_split": 1, "data.domains": DOMAINS,
                        "models.policy.max_new_tokens": 8, "models.planner.max_new_tokens": 8})
    run(["git", "commit", "-qam", "tiny slice"], cwd=repo)
    t0 = time.time()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default local store, in the copy
        out = dvc("repro", "baseline_rag", cwd=repo, env={"OPENAI_API_KEY": SECRET})
    head = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    return {"repo": repo, "log": out.stdout, "seconds": time.time() - t0, "head": head}


@pytest.mark.slow
def test_rescore_reproduces_the_pipeline_metrics(tiny_run, tmp_path):
    repo = tiny_run["repo"]
    scores, mpath = repo / "outputs/baselines/rag/judge_scores.jsonl", repo / "metrics/rag.json"
    stored = json.loads(mpath.read_text())
    assert set(stored["domains"]) == set(DOMAINS) and stored["n"] == len(DOMAINS)
    code, out, err = rescore(scores, "--metrics", mpath)
    assert code == 0, err
    assert json.loads(out)["macro"] == stored["macro"]
    # A tampered copy is caught, and the field named.
    stored["domains"][DOMAINS[1]]["score"] = round(stored["domains"][DOMAINS[1]]["score"] + 0.0001, 4)
    (tmp_path / "rag.json").write_text(json.dumps(stored))
    code, _, err = rescore(scores, "--metrics", tmp_path / "rag.json")
    assert code == 1 and f"first: domains.{DOMAINS[1]}.score" in err, err


def _mlflow_runs(repo: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("personal_nlf")
    return client, exp, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_one_nested_mlflow_run_per_executed_stage(tiny_run):
    repo = tiny_run["repo"]
    lines = tiny_run["log"].splitlines()
    ran = [line.split("'")[1] for line in lines if line.startswith("Running stage")]
    # base_model may come from DVC's run cache, shared by the test session's repo copies
    # (conftest.copy_worktree): restored, not executed, so it has no MLflow run.
    restored = [line.split("'")[1] for line in lines if line.startswith("Stage '") and "is cached - skipping run" in line]
    assert set(restored) <= {"base_model"} and sorted(ran + restored) == sorted(STAGES), tiny_run["log"]
    assert len(set(ran)) == len(ran)  # every stage ran (or was restored) once (order: DVC's)
    client, _, runs = _mlflow_runs(repo)
    children = [r for r in runs if "stage" in r.data.tags]
    assert sorted(r.data.tags["stage"] for r in children) == sorted(ran)  # one run per executed stage
    parent_ids = {r.data.tags.get("mlflow.parentRunId") for r in children}
    assert len(parent_ids) == 1 and None not in parent_ids
    parent = client.get_run(parent_ids.pop())
    assert parent.data.tags["personal_nlf.pipeline"] == f"workspace@{tiny_run['head'][:12]}"
    assert len(runs) == len(ran) + 1  # the parent and the stages, nothing else
    for r in children:
        stage = r.data.tags["stage"]
        assert r.info.status == "FINISHED", stage
        assert r.data.params, f"{stage}: no params"
        assert r.data.metrics, f"{stage}: no metrics"
        assert r.data.tags["git_revision"] == tiny_run["head"], stage  # committed copy: not dirty
        assert r.data.tags["dvc_experiment"] == "workspace", stage
    rag = next(r for r in children if r.data.tags["stage"] == "baseline_rag")
    stored = json.loads((repo / "metrics/rag.json").read_text())
    assert rag.data.metrics["macro"] == stored["macro"]
    assert rag.data.params["models.policy.api_key_env"] == "OPENAI_API_KEY"  # the name, never the value
    assert [a.path for a in client.list_artifacts(rag.info.run_id)] == ["rag.json", "sample_outputs.json"]


def _store_blobs(repo: Path) -> dict[str, bytes]:
    """Every byte MLflow stored: the sqlite db (and journal files) and every artifact file."""
    blobs = {p.name: p.read_bytes() for p in repo.glob("mlflow.db*")}
    _, exp, runs = _mlflow_runs(repo)
    roots = {exp.artifact_location} | {r.info.artifact_uri for r in runs} | {str(repo / "mlruns"),
                                                                            str(repo / "mlartifacts")}
    for root in roots:
        root = Path(root.removeprefix("file://"))
        assert root.is_absolute(), f"artifact store is not a local folder: {root}"
        for p in root.rglob("*") if root.exists() else ():
            if p.is_file():
                blobs[str(p)] = p.read_bytes()
    return blobs


def _profile_texts(repo: Path) -> set[str]:
    import polars as pl

    texts = set()
    for f in (repo / "outputs/prepared").glob("*/*.parquet"):
        for profile in pl.read_parquet(f)["profile"].to_list():
            texts.update(item["text"] for item in profile if len(item["text"]) > 30)
    return texts


@pytest.mark.slow
def test_mlflow_stores_no_secret_and_no_raw_profile_text(tiny_run):
    repo = tiny_run["repo"]
    blobs = _store_blobs(repo)
    assert "mlflow.db" in blobs and any(k.endswith("rag.json") for k in blobs), sorted(blobs)
    assert b"baseline_rag" in blobs["mlflow.db"]  # the scan reads what MLflow wrote
    texts = _profile_texts(repo)
    assert len(texts) >= 10
    needles = {SECRET.encode(): "the API key"}
    for t in texts:
        for form in (t, json.dumps(t)[1:-1], json.dumps(t, ensure_ascii=False)[1:-1]):
            needles[form.encode()] = f"profile text {t[:40]!r}"
    leaks = sorted({f"{what} in {name}" for name, blob in blobs.items() for n, what in needles.items() if n in blob})
    assert not leaks, "\n".join(leaks[:20])
    # Positive control: the same needles are found in the raw data the profiles came from.
    raw = b"".join(p.read_bytes() for p in (repo / "data/sample").rglob("*.json*"))
    assert sum(n in raw for n in needles) >= len(texts)


def test_every_stage_writes_a_plain_log(tmp_path):
    """A stage run appends a plain log (start, what it did, duration) to logs/<stage>.log, even
    with --quiet; a failing run adds its one-line error there too."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(tmp_path, **{"tracking.enabled": False, "data.source": str(REPO / "data/sample"),
                            "data.max_records_per_split": 1})
    run([sys.executable, str(REPO / "stages/prepare.py"), "--out", "prepared", "--quiet"], cwd=tmp_path)
    text = (tmp_path / "logs/prepare.log").read_text()
    assert "start:" in text and "prepared 9 records" in text and "done in" in text
    set_params(tmp_path, **{"data.source": str(tmp_path / "missing")})
    r = subprocess.run([sys.executable, str(REPO / "stages/prepare.py"), "--out", "prepared", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    text = (tmp_path / "logs/prepare.log").read_text()
    assert text.count("start:") == 2 and "failed after" in text and "missing" in text.splitlines()[-1]
