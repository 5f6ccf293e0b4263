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
