"""scripts/summary_probe.py: which test summaries count as stating the user's persona or answer form."""

import json
from pathlib import Path
from types import SimpleNamespace

from conftest import load_script

summary_probe = load_script("summary_probe")
DESCRIBED = json.loads((Path(__file__).resolve().parent.parent / "data/persona/manifest.json").read_text())["personas"]


def test_states_counts_exact_descriptions_only():
    users = [SimpleNamespace(key=k) for k in ("a", "b", "c", "d")]
    persona = {"a": "list_brief+plain", "b": "list_brief+plain", "c": "prose_full+expert", "d": "prose_full+plain"}
    summaries = {
        "a": DESCRIBED["list_brief+plain"] + "\n",       # its own persona (surrounding space ignored)
        "b": DESCRIBED["list_brief+expert"],            # the right form, the wrong register
        "c": DESCRIBED["list_brief+expert"],            # the wrong form
        "d": DESCRIBED["prose_full+plain"][:-1],        # not one of the descriptions: states nothing
    }
    got = summary_probe.states(summaries, users, persona, DESCRIBED)
    assert got == {"users": 4, "states_own_persona": 0.25, "states_own_answer_form": 0.5}


def test_style_is_the_persona_form():
    assert {summary_probe.style(p) for p in DESCRIBED} == {"list_brief", "prose_full"}


def test_readme_block_takes_the_default_record_and_a_line_per_other_step_count(tmp_path):
    readme_results = load_script("readme_results")
    folder = tmp_path / "benchmarks/summary_probes"
    folder.mkdir(parents=True)
    committed = sorted((Path(__file__).resolve().parent.parent / "benchmarks/summary_probes").glob("*.json"))
    rec = json.loads(next(p for p in committed if "_" not in p.stem).read_text())
    (folder / "abc1234.json").write_text(json.dumps(rec))
    other = {**rec, "command": rec["command"] + " --steps 24 12",
             "summarizer_training": {**rec["summarizer_training"], "lora_steps": 24},
             "generator_training": {**rec["generator_training"], "lora_steps": 12},
             "summaries": {**rec["summaries"], "trained_summarizer": {"users": 120, "states_own_persona": 0.25,
                                                                      "states_own_answer_form": 0.5}}}
    (folder / "abc1234_s24_g12.json").write_text(json.dumps({**other, "date": "2099-01-01"}))  # newer, not the default
    block = readme_results.summary_probes(tmp_path)
    assert block.startswith("From `benchmarks/summary_probes/abc1234.json`")
    assert "With 24 summarizer steps and 12 generator steps" in block
    assert "description for 0.25 of users (its answer form: 0.50)" in block
