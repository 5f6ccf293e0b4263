"""Rewrite the code deps of every stage in dvc.yaml to its import closure within src/personal_nlf
(a text edit that keeps data, model and output deps, comments and everything else).

    python scripts/sync_dvc_deps.py     # after adding or removing an import; tests/test_dvc_graph.py checks it
"""
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
import test_dvc_graph as g  # noqa: E402  (the test's own closure and DVC parsing: one definition)

stages = {m: g.dvc_stages(m, Path(tempfile.mkdtemp())) for m in g.stage_params.MODES}
want: dict[str, set[str]] = {}
for m, listed in stages.items():
    for name, argv, deps, _ in listed:
        if not argv[0].startswith("stages/"):
            continue
        base = name.split("@")[0]
        need = g.closure(ROOT / argv[0], g.dynamic_imports(argv, m))
        templated = "--loop" not in argv and "--step" in argv and "init" not in argv
        if templated:
            need = {"src/personal_nlf/modes/${mode}.py" if f == f"src/personal_nlf/modes/{m}.py" else f for f in need}
        want.setdefault(base, set()).update(need)

lines = (ROOT / "dvc.yaml").read_text().splitlines()
out, stage, i = [], None, 0
while i < len(lines):
    line = lines[i]
    m = re.match(r"^  (\w+):\s*$", line)
    if m:
        stage = m.group(1)
    d = re.match(r"^(\s+)deps:\s*$", line)
    if d and stage in want:
        out.append(line)
        ind = d.group(1) + "  "
        j, keep = i + 1, []
        while j < len(lines) and lines[j].startswith(ind + "- "):
            dep = lines[j][len(ind) + 2:].strip()
            if dep.startswith(g.DATA_PREFIXES):
                keep.append(dep)
            j += 1
        script = [f for f in want[stage] if f.startswith("stages/")]
        code = script + sorted(f for f in want[stage] if not f.startswith("stages/"))
        out += [f"{ind}- {x}" for x in code + keep]
        i = j
        continue
    out.append(line)
    i += 1
(ROOT / "dvc.yaml").write_text("\n".join(out) + "\n")
