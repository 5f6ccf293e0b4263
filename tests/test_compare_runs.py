"""scripts/compare_runs.py: what a rerun moved, number by number, provenance left out."""

import json

from conftest import load_script

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
