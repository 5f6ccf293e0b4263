"""Schema validation: every bad-input case gets a one-line message naming file, record, field."""

import json
import subprocess
import sys

import polars as pl
import pytest

from personal_nlf import data
from personal_nlf.config import DOMAINS, SPLITS


def good(i=0, **over):
    rec = {"id": f"u{i}", "question": "How do I start?", "narrative": "I am a beginner.",
           "rubric_aspects": [{"aspect": "Beginner friendly", "reason": "new", "evidence": "beginner"}],
           "profile": [{"id": "p1", "text": "Past question one"}, {"id": "p2", "text": "Past question two"}]}
    rec.update(over)
    return rec


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "personal_nlf.cli", *map(str, args)], capture_output=True, text=True)


def dump(tmp_path, rows, name="test.json"):
    p = tmp_path / name
    p.write_text(json.dumps(rows))
    return p


BAD_CASES = {
    "record_not_object": ([good(0), "just a string"], "record 1", "expected an object"),
    "missing_id": ([{k: v for k, v in good().items() if k != "id"}], "'id'", "missing"),
    "empty_id": ([good(id="  ")], "'id'", "empty"),
    "missing_question": ([{k: v for k, v in good().items() if k != "question"}], "'question'", "missing"),
    "empty_question": ([good(question="")], "'question'", "empty"),
    "profile_not_list": ([good(profile="p1 p2")], "'profile'", "expected a list"),
    "profile_missing": ([{k: v for k, v in good().items() if k != "profile"}], "'profile'", "missing"),
    "profile_item_no_text": ([good(profile=[{"id": "p1"}])], "'profile[0].text'", "missing"),
    "profile_item_text_not_str": ([good(profile=[{"id": "p1", "text": 5}])], "'profile[0].text'", "expected a string"),
    "rubric_missing": ([{k: v for k, v in good().items() if k != "rubric_aspects"}], "'rubric_aspects'", "missing"),
    "rubric_not_list": ([good(rubric_aspects={"aspect": "x"})], "'rubric_aspects'", "expected a list"),
    "rubric_item_malformed": ([good(rubric_aspects=[{"reason": "r"}])], "'rubric_aspects[0].aspect'", "missing"),
    "rubric_item_not_object": ([good(rubric_aspects=["x"])], "'rubric_aspects[0]'", "expected an object"),
    "duplicate_ids": ([good(0), good(0)], "'id'", "duplicate id"),
    "id_wrong_type": ([good(id=7)], "'id'", "expected a string"),
    "question_wrong_type": ([good(question=["a"])], "'question'", "expected a string"),
    "narrative_wrong_type": ([good(narrative=3)], "'narrative'", "expected a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_is_rejected_with_located_message(tmp_path, case):
    rows, field, msg = BAD_CASES[case]
    path = dump(tmp_path, rows)
    _, problems, _ = data.validate_rows(rows, str(path))
    assert problems, case
    assert any(field in p and msg in p and str(path) in p and "record" in p for p in problems), problems


@pytest.mark.parametrize("case", ["record_not_object", "profile_item_no_text", "duplicate_ids", "rubric_missing"])
def test_validate_data_cli_one_line_no_traceback(tmp_path, case):
    rows, field, _ = BAD_CASES[case]
    r = run_cli("validate-data", dump(tmp_path, rows))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert field in r.stderr.splitlines()[0]


def test_not_json_and_not_utf8(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[{"id": "a",')
    r = run_cli("validate-data", p)
    assert r.returncode != 0 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    q = tmp_path / "latin.jsonl"
    q.write_bytes(b'{"id": "a", "question": "caf\xe9"}\n')
    r = run_cli("validate-data", q)
    assert r.returncode != 0 and "not valid UTF-8" in r.stderr and "line 1" in r.stderr


def test_jsonl_bad_line_is_located(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(good(0)) + "\n{oops\n")
    with pytest.raises(data.DataError, match=r"x.jsonl: line 2: not valid JSON"):
        data.read_rows(p)


def test_top_level_not_array(tmp_path):
    p = tmp_path / "obj.json"
    p.write_text('{"id": "a"}')
    with pytest.raises(data.DataError, match="expected a JSON array"):
        data.read_rows(p)


def test_odd_but_legal_records_load(tmp_path):
    rows = [good(0, profile=[]), good(1, profile=[{"id": "p", "text": "only one"}]),
            good(2, question="Qu'est-ce que c'est ? 日本語の質問", profile=[{"text": "x" * 50000}, {"id": 3, "text": "  "}])]
    recs, problems, report = data.validate_rows(rows, "mem", max_item_chars=2000)
    assert not problems
    assert [len(r.profile) for r in recs] == [0, 1, 1]
    assert report.empty_profiles == 1 and report.truncated_items == 1 and report.dropped_empty_items == 1
    assert report.auto_profile_ids == 1 and len(recs[2].profile[0].text) == 2000
    assert any("empty profile" in w for w in report.warnings)


def test_questions_only_file_without_rubric(tmp_path):
    rows = [{"id": "q1", "question": "Why?", "profile": []}]
    _, problems, _ = data.validate_rows(rows, "q", require_rubric=False)
    assert not problems
    _, problems, _ = data.validate_rows(rows, "q", require_rubric=True)
    assert any("rubric_aspects" in p for p in problems) and any("narrative" in p for p in problems)


def test_all_formats_load_the_same(tmp_path):
    rows = [good(0), good(1)]
    base = tmp_path / "src"
    for fmt in ("json", "jsonl", "parquet"):
        d = base / fmt / "Art_and_Entertainment"
        d.mkdir(parents=True)
        if fmt == "json":
            (d / "test.json").write_text(json.dumps(rows))
        elif fmt == "jsonl":
            (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            pl.DataFrame(rows).write_parquet(d / "test.parquet")
    loaded = [data.load_split(str(base / f), "Art_and_Entertainment", "test")[0] for f in ("json", "jsonl", "parquet")]
    assert loaded[0] == loaded[1] == loaded[2]


def test_unknown_source_is_a_clear_error():
    with pytest.raises(data.DataError, match="neither an existing local folder nor a hub id"):
        data.load_split("no/such/path/here", "Art_and_Entertainment", "test")


def test_prepared_roundtrip(tmp_path):
    recs, _, _ = data.validate_rows([good(0), good(1, profile=[])], "mem")
    df = data.records_to_frame(recs, "Art_and_Entertainment", "test")
    assert data.frame_to_records(df) == recs


def test_shipped_sample_is_valid_and_big_enough():
    for domain in DOMAINS:
        sizes = {}
        for split in SPLITS:
            recs, report = data.load_split("data/sample", domain, split)
            sizes[split] = len(recs)
            for r in recs:
                assert 5 <= len(r.profile) <= 40, r.id
                assert 2 <= len(r.rubric_aspects) <= 5, r.id
                for a in r.rubric_aspects:
                    assert a.evidence in r.narrative, (r.id, a.evidence)
        assert sizes["train"] >= 12 and sizes["validation"] >= 4 and sizes["test"] >= 6
    r = run_cli("validate-data", *[f"data/sample/{d}/{s}.json" for d in DOMAINS for s in SPLITS])
    assert r.returncode == 0, r.stderr
