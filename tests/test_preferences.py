"""The preference-pair data kind (golden files: valid files and each kind of error with its exact
one-line message), `personal-nlf validate-data` on it, the published shapes (POPI, AlignX,
PersonaMem) mapped to ours, and pairwise preference accuracy on hand-computed cases."""

import json
from pathlib import Path

import pytest

from personal_nlf import cli, preferences
from personal_nlf.data import DataError

GOLDEN = Path(__file__).parent / "golden" / "preferences"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_files(name):
    path = GOLDEN / name
    want = EXPECTED[name]
    check = preferences.validate_file(path)
    assert [p.replace(str(path), "{path}") for p in check.problems] == want["problems"]
    assert (check.kind, check.n_records, check.n_pairs) == (want["kind"], want["records"], want["pairs"])
    # Every problem is one line naming the file, and (for record problems) the record and field.
    for p in check.problems:
        assert "\n" not in p and p.startswith(str(path))
        assert "line " in p or ("record " in p and "field '" in p)


def test_every_golden_input_is_covered_and_errors_are_distinct():
    files = {p.name for p in GOLDEN.glob("*.jsonl")}
    assert files == set(EXPECTED)
    bad = [n for n in EXPECTED if n.startswith("bad_")]
    assert all(EXPECTED[n]["problems"] for n in bad)
    assert all(not EXPECTED[n]["problems"] for n in EXPECTED if n.startswith("valid_"))
    assert len({EXPECTED[n]["problems"][0].split(": ", 2)[-1] for n in bad}) == len(bad)


def test_validate_data_cli_accepts_and_rejects_preference_files(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["validate-data", str(GOLDEN / "valid_pairs.jsonl"), str(GOLDEN / "valid_choice.jsonl")])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "valid_pairs.jsonl: OK (pairs: 2 records, 2 preference pair(s))" in out
    assert "valid_choice.jsonl: OK (choice: 1 records, 3 preference pair(s))" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["validate-data", str(GOLDEN / "bad_missing_chosen.jsonl")])
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 1
    assert err[0] == f"{GOLDEN / 'bad_missing_chosen.jsonl'}: record 0 (id='u1'): field 'pairs[0].chosen': missing"
    assert err[1].endswith("INVALID (1 problem)")
    # --kind overrides detection: a pairs file read as multiple choice lacks options.
    with pytest.raises(SystemExit) as e:
        cli.main(["validate-data", "--kind", "choice", str(GOLDEN / "valid_flat.jsonl")])
    assert e.value.code == 1 and "field 'options': missing" in capsys.readouterr().err


def test_records_eval_pairs_and_user_signal_never_hold_the_ground_truth():
    recs = preferences.load_file(GOLDEN / "valid_pairs.jsonl")
    u1 = recs[0]
    assert u1.persona == "Prefers short bulleted lists." and u1.pairs[0].chosen_persona == "prefers bulleted lists"
    signal = "\n".join(u1.signal_texts())
    assert "How do I start running?" in signal
    assert "Prefers short bulleted lists" not in signal and "prefers bulleted lists" not in signal
    (q,) = preferences.load_file(GOLDEN / "valid_choice.jsonl")
    assert [(p.chosen, p.rejected) for p in q.eval_pairs()] == [
        ("A lentil and vegetable curry.", o) for o in
        ("A grilled steak with butter.", "Sushi at a restaurant.", "A cheese pizza.")]
    (flat,) = preferences.load_file(GOLDEN / "valid_flat.jsonl")
    assert flat.pairs[0].chosen.startswith("Gravity is how") and flat.signal_texts() == ["About me: A curious 8-year-old."]


def test_alignx_popi_and_personamem_shapes_map_to_ours():
    alignx = {"prompt": "What do you think of remote work?", "chosen": "Love it.", "rejected": "Hate it.",
              "Demographic Information": "35, software engineer",
              "User-Generated Content": [{"prompt": "Best IDE?", "comment": "Vim, obviously."}],
              "Pair-wise Comparative Feedback": [{"prompt": "Tabs?", "chosen": "Spaces.", "rejected": "Tabs."}]}
    (r,) = preferences.validate_preference_rows(preferences.map_rows([alignx], "alignx", "hub"), "hub")[0]
    assert (r.question, r.pairs[0].chosen, r.user_description) == ("What do you think of remote work?", "Love it.",
                                                                    "35, software engineer")
    assert r.history[0].prompt == "Tabs?" and r.profile == ("Best IDE?\nVim, obviously.",)
    popi = {"question": "Explain DNS.", "raw": "## demographic: a child", "my_chosen": "Simple.", "my_rejected": "RFC 1035.",
            "persona": "a five-year-old"}
    (r,) = preferences.validate_preference_rows(preferences.map_rows([popi], "popi", "hub"), "hub")[0]
    assert r.user_description.startswith("## demographic") and r.persona == "a five-year-old"
    assert r.pairs[0].chosen_persona == "a five-year-old" and "five-year-old" not in " ".join(r.signal_texts())
    pm = {"question_id": "q7", "persona_id": 3, "user_question_or_message": "Any dinner idea?",
          "all_options": "['(a) Steak.', '(b) Lentil curry.', '(c) Fish.', '(d) Pizza.']", "correct_answer": "(b)",
          "end_index_in_shared_context": 2}
    ctx = [{"role": "user", "content": "I went vegan."}, {"role": "assistant", "content": "Noted."},
           {"role": "user", "content": "later turn, after the question"}]
    row = preferences.from_personamem(pm, 0, "pm", ctx)
    (r,) = preferences.validate_preference_rows([row], "pm")[0]
    assert r.kind == "choice" and r.options[r.correct] == "Lentil curry." and r.profile == ("I went vegan.",)
    assert r.user_id == "3" and r.id == "q7"
    with pytest.raises(DataError, match=r"hub: record 0: field 'my_chosen': missing"):
        preferences.map_rows([{"question": "q", "raw": "r"}], "popi", "hub")
    # field_map: another set's column names onto ours (PLUS / OpenRLHF-style columns).
    rows = preferences.map_rows([{"id": "a", "query": "Q?", "chosen": "x", "rejected": "y", "user_info": "likes x"}],
                                "ours", "f", {"question": "query", "user_description": "user_info"})
    (r,) = preferences.validate_preference_rows(rows, "f")[0]
    assert r.question == "Q?" and r.user_description == "likes x"


def test_load_local_file_with_a_shape(tmp_path):
    p = tmp_path / "alignx.json"
    p.write_text(json.dumps([{"prompt": "Q?", "chosen": "a", "rejected": "b", "Demographic Information": "d"}]))
    (r,) = preferences.load(str(p), shape="alignx")
    assert r.id == "0" and r.pairs[0].rejected == "b"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "Q?", "user_description": "d", "pairs": [{"chosen": "a"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: record 0 \(id='x'\): field 'pairs\[0\].rejected': missing"):
        preferences.load(str(bad))


# ------------------------------------------------------------------ pairwise preference accuracy


def fake_logprobs(table):
    """answer_logprobs stand-in: the log-likelihood of an answer given which condition's prompt
    (read from the prompt's text) and which response (the JSON-wrapped text)."""
    calls = []

    def answer_logprobs(prompts_, answers):
        calls.append((prompts_, answers))
        out = []
        for p, a in zip(prompts_, answers):
            cond = p[-1]["content"]
            resp = json.loads(a)["personalized_answer"]
            out.append(table[(cond, resp)])
        return out

    return answer_logprobs, calls


def case(domain, uid, cond, chosen, rejected):
    return preferences.PairCase(domain, uid, [{"role": "user", "content": cond}], chosen, rejected)


def test_pairwise_accuracy_hand_computed():
    # Domain A: users u1 (two pairs), u2 (one); domain B: u3 (one pair).
    table = {("S", "c1"): -5.0, ("S", "r1"): -7.0,   # summary: right
             ("S", "c2"): -9.0, ("S", "r2"): -8.0,   # summary: wrong
             ("S", "c3"): -3.0, ("S", "r3"): -4.0,   # right
             ("S", "c4"): -6.0, ("S", "r4"): -6.0,   # tie: 1/2
             ("N", "c1"): -8.0, ("N", "r1"): -7.0, ("N", "c2"): -9.0, ("N", "r2"): -8.0,
             ("N", "c3"): -5.0, ("N", "r3"): -4.0, ("N", "c4"): -7.0, ("N", "r4"): -6.0}
    fn, calls = fake_logprobs(table)

    def cases(cond):
        return [case("A", "u1", cond, "c1", "r1"), case("A", "u1", cond, "c2", "r2"),
                case("A", "u2", cond, "c3", "r3"), case("B", "u3", cond, "c4", "r4")]

    out = preferences.pairwise_accuracy(fn, {"summary": cases("S"), "none": cases("N")}, n_boot=200, seed=1)
    s, n = out["conditions"]["summary"], out["conditions"]["none"]
    # Per user: u1 = (1 + 0) / 2, u2 = 1, u3 = 1/2. Domain A = (0.5 + 1) / 2 = 0.75, B = 0.5; macro 0.625.
    assert out["per_user"]["summary"] == {"A/u1": 0.5, "A/u2": 1.0, "B/u3": 0.5}
    assert s["domains"]["A"]["accuracy"] == 0.75 and s["domains"]["B"]["accuracy"] == 0.5
    assert s["accuracy"] == 0.625 and s["n_users"] == 3 and s["n_pairs"] == 4 and s["ties"] == 1
    assert s["mean_margin"] == pytest.approx((2 - 1 + 1 + 0) / 4)
    assert s["ci95"][0] <= 0.625 <= s["ci95"][1]
    assert n["accuracy"] == 0.0 and n["ties"] == 0
    assert out["paired_vs_none"]["summary"]["diff"] == pytest.approx(0.625) and out["paired_vs_none"]["summary"]["n"] == 3
    # Responses are scored in the generator's answer format, two rows per pair, one call per condition.
    assert len(calls) == 2 and json.loads(calls[0][1][0]) == {"personalized_answer": "c1"}
    assert calls[0][0][0] == calls[0][0][1]  # chosen and rejected under the same prompt


def test_pairwise_accuracy_skips_empty_conditions_and_needs_no_baseline():
    fn, _ = fake_logprobs({("R", "c"): -1.0, ("R", "r"): -2.0})
    out = preferences.pairwise_accuracy(fn, {"rag": [case("A", "u", "R", "c", "r")], "summary": []}, n_boot=100)
    assert set(out["conditions"]) == {"rag"} and out["conditions"]["rag"]["accuracy"] == 1.0
    assert "paired_vs_none" not in out


def test_pairwise_conditions_prompts_hold_only_question_summary_and_profile():
    from personal_nlf import data, prompts
    from personal_nlf.evaluate import EvalRecord

    rec = data.Record(id="u1", question="How do I cook rice?", narrative="SECRET-NARRATIVE",
                      rubric_aspects=(data.Aspect("SECRET-ASPECT"),), profile=(data.ProfileItem("1", "I like lists."),),
                      persona="SECRET-PERSONA", pairs=(data.PreferencePair("- rinse\n- boil", "Rice is a grain...",
                                                                             "SECRET-CP", "SECRET-RP"),))
    er = EvalRecord("A", "test", rec, ["I like lists."], [])
    conds = preferences.pairwise_conditions([er], {er.key: "The user likes lists."})
    assert set(conds) == {"summary", "rag", "none"}
    assert conds["summary"][0].prompt == prompts.summary_answer("How do I cook rice?", "The user likes lists.")
    assert conds["rag"][0].prompt == prompts.rag("How do I cook rice?", ["I like lists."])
    assert conds["none"][0].prompt == prompts.no_pers("How do I cook rice?")
    assert all((c.chosen, c.rejected) == ("- rinse\n- boil", "Rice is a grain...") for cs in conds.values() for c in cs)
    assert "SECRET" not in json.dumps([c.prompt for cs in conds.values() for c in cs])
    assert set(preferences.pairwise_conditions([er])) == {"rag", "none"}  # no summaries: no summary condition


def test_preference_records_become_pipeline_records():
    from personal_nlf import data

    (q,) = preferences.load_file(GOLDEN / "valid_choice.jsonl")
    rec = q.to_record()
    assert isinstance(rec, data.Record) and rec.question == "Suggest a dinner for tonight."
    assert [p.text for p in rec.profile] == ["I went vegan last month.", "I cook on a tight budget."]
    assert len(rec.pairs) == 3 and rec.pairs[0].chosen == "A lentil and vegetable curry." and rec.persona is None
    u1 = preferences.load_file(GOLDEN / "valid_pairs.jsonl")[0].to_record()
    assert u1.persona == "Prefers short bulleted lists." and "bulleted lists" not in " ".join(p.text for p in u1.profile)
    # It survives the prepared parquet round trip.
    df = data.records_to_frame([u1], "A", "test")
    assert data.frame_to_records(df)[0].pairs == u1.pairs
