import json
import os

import pytest

from personal_nlf.io import Journal, read_jsonl, write_json_atomic


def test_journal_resumes_and_never_duplicates(tmp_path):
    p = tmp_path / "gen.jsonl.partial"
    j = Journal(p, "fp1")
    j.add("a", {"v": 1})
    j.add("b", {"v": 2})
    j.add("a", {"v": 99})
    j.close()
    j2 = Journal(p, "fp1")
    assert j2.done == {"a": {"v": 1}, "b": {"v": 2}}
    j2.add("c", {"v": 3})
    j2.close()
    assert len(p.read_text().splitlines()) == 4  # header + 3


def test_journal_drops_torn_last_line(tmp_path):
    p = tmp_path / "j.partial"
    j = Journal(p, "fp")
    j.add("a", {"v": 1})
    j.close()
    with open(p, "a") as f:
        f.write('{"key": "b", "value": {"v"')  # killed mid-write
    j2 = Journal(p, "fp")
    assert list(j2.done) == ["a"]
    j2.add("b", {"v": 2})
    j2.close()
    assert Journal(p, "fp").done == {"a": {"v": 1}, "b": {"v": 2}}


def test_journal_from_other_config_is_discarded(tmp_path):
    p = tmp_path / "j.partial"
    j = Journal(p, "old")
    j.add("a", {"v": 1})
    j.close()
    assert Journal(p, "new").done == {}


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"ok": 1}
    assert [f for f in os.listdir(tmp_path) if f != "m.json"] == []


def test_read_jsonl_names_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(p)
