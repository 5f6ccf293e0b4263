"""Rewrite the code deps of every stage of both pipelines (dvc.yaml, pipelines/summary/dvc.yaml) to
its import closure within src/personal_nlf (a text edit that keeps data, model and output deps,
comments and everything else).

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

want: dict[tuple[str, str], set[str]] = {}  # (pipeline file, stage name without @item) -> code deps
for name, argv, _, _ in g.dvc_stages(Path(tempfile.mkdtemp())):
    if not argv[0].startswith("stages/"):
        continue
    file, _, stage_name = name.rpartition(":")
    want.setdefault((file or "dvc.yaml", stage_name.split("@")[0]), set()).update(
        g.closure(ROOT / argv[0], g.dynamic_imports(argv)))

for file in g.PIPELINES:
    lines = (ROOT / file).read_text().splitlines()
    out, stage, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage = m.group(1)
        d = re.match(r"^(\s+)deps:\s*$", line)
        if d and (file, stage) in want:
            out.append(line)
            ind = d.group(1) + "  "
            j, keep = i + 1, []
            while j < len(lines) and lines[j].startswith(ind + "- "):
                dep = lines[j][len(ind) + 2:].strip()
                if dep.startswith(g.DATA_PREFIXES):
                    keep.append(dep)
                j += 1
            need = want[(file, stage)]
            script = [f for f in need if f.startswith("stages/")]
            code = script + sorted(f for f in need if not f.startswith("stages/"))
            out += [f"{ind}- {x}" for x in code + keep]
            i = j
            continue
        out.append(line)
        i += 1
    (ROOT / file).write_text("\n".join(out) + "\n")
