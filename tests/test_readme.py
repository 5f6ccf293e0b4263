"""The README's measured figures come from committed files through scripts/readme_results.py:
every table in a results section is a generated block, and every block equals its regeneration."""

import re
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
readme_results = load_script("readme_results")

RESULTS_HEADING = re.compile(r"^(#+) .*\b(Results|Measured|Benchmarks)\b")


def results_tables_outside_blocks(text: str) -> list[str]:
    """Table lines that sit in a results section but outside every generated block."""
    bad, level, inside = [], None, False
    for line in text.splitlines():
        if line.startswith("<!-- generated:"):
            inside = True
        elif line.startswith("<!-- /generated:"):
            inside = False
        m = re.match(r"^(#+) ", line)
        if m:
            h = RESULTS_HEADING.match(line)
            if h:
                level = len(h.group(1))
            elif level is not None and len(m.group(1)) <= level:
                level = None
        if level is not None and not inside and line.startswith("|"):
            bad.append(line)
    return bad


def test_every_results_table_is_generated():
    readme = (ROOT / "README.md").read_text()
    assert "<!-- generated:persona -->" in readme  # the default's run (results/persona = metrics/)
    assert results_tables_outside_blocks(readme) == []


def test_readme_blocks_equal_their_regeneration():
    readme = (ROOT / "README.md").read_text()
    assert readme_results.render(readme) == readme, "run: python scripts/readme_results.py"


def test_a_typed_in_table_or_number_is_caught():
    text = "## Results\n\n<!-- generated:benchmarks -->\nold\n<!-- /generated:benchmarks -->\n\n| a | b |\n|---|---|\n"
    assert results_tables_outside_blocks(text) == ["| a | b |", "|---|---|"]
    assert results_tables_outside_blocks("## Setup\n\n| a | b |\n") == []  # not a results section
    regenerated = readme_results.render(text)
    assert "old" not in regenerated and "Ratios" not in regenerated and "| measurement | ratio |" in regenerated
