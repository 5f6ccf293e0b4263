"""scripts/compare_runs.py: what a rerun moved, number by number, provenance left out."""

import json

from conftest import git_snapshot, load_script

compare_runs = load_script("compare_runs")


def test_numbers_skip_provenance_and_name_every_leaf():
    obj = {"macro": 0.41, "domains": {"A": {"score": 0.5, "ci95": [0.3, 0.7]}}, "ok": True,
           "provenance": {"seed": 42}, "method": "rag"}
    assert compare_runs.numbers(obj) == {"macro": 0.41, "domains.A.score": 0.5, "domains.A.ci95.0": 0.3,
                                         "domains.A.ci95.1": 0.7}


def test_compare_json_counts_equal_numbers_and_orders_what_moved():
    old = json.dumps({"macro": 0.41, "n": 48, "p": 0.5, "gone": 1})
    new = json.dumps({"macro": 0.4102, "n": 48, "p": 0.45})
    equal, n, worst, moved = compare_runs.compare_json(old, new)
    assert (equal, n) == (1, 4) and worst == float("inf")
    assert [k for _, k in moved] == ["gone", "p", "macro"]


def test_compare_jsonl_counts_identical_rows_and_the_longer_side():
    assert compare_runs.compare_jsonl('{"a": 1}\n{"b": 2}\n', '{"a": 1}\n{"b": 3}\n{"c": 4}\n') == (1, 3)


def test_report_compares_two_commits_or_a_commit_with_the_work_tree(tmp_path, monkeypatch):
    from pathlib import Path

    def write(macro: float, second_row: str):
        (run / "metrics").mkdir(parents=True, exist_ok=True)
        (run / "metrics" / "rag.json").write_text(json.dumps({"macro": macro, "n": 48}))
        (run / "gen.jsonl").write_text('{"a": 1}\n' + second_row + "\n")

    run = tmp_path / "results" / "r"
    write(0.41, '{"b": 2}')
    old = git_snapshot(tmp_path, "old")
    write(0.40, '{"b": 3}')
    new = git_snapshot(tmp_path, "new")
    write(0.39, '{"b": 2}')  # the work tree: a third run, not committed
    monkeypatch.setattr(compare_runs, "ROOT", tmp_path)

    between = "\n".join(compare_runs.report(old, Path("results/r"), 3, new_rev=new))
    assert f"(git {old[:7]} → git {new[:7]})" in between
    assert "| metrics/rag.json | 1/2 | 0.01 |" in between and "| gen.jsonl | 1/2 |" in between
    against_tree = "\n".join(compare_runs.report(old, Path("results/r"), 3))
    assert "→ work tree" in against_tree
    assert "| metrics/rag.json | 1/2 | 0.02 |" in against_tree and "| gen.jsonl | 2/2 |" in against_tree
