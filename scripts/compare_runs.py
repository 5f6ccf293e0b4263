"""How far a rerun of a committed run moved from the run it replaced.

    python scripts/compare_runs.py REV results/persona [results/persona-summary ...] [--new NEW]

For each run folder, compares the files committed at git revision REV with the ones in the work
tree (the rerun), or with those committed at NEW (a rerun committed since: the README's history of
reruns names both revisions of each, so every comparison it quotes reprints from git), file by file:
- metrics JSON (the per-method metrics, the report): every number, with provenance and run records
  (code hashes, package versions, timings) left out; prints how many numbers are equal, the largest
  absolute difference and the fields that moved most;
- per-question JSONL (generations, judge scores, selections, summaries): how many rows are identical.

It prints a Markdown report; the README's "Reproducing the committed results" quotes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What produced a result (code hashes, packages, seeds), not the result: run records and stage times are
# whole files left out in report().
SKIP_KEYS = {"provenance"}


def at_rev(rev: str, path: Path) -> str | None:
    out = subprocess.run(["git", "show", f"{rev}:{path.as_posix()}"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def text_at(rev: str | None, path: Path) -> str | None:
    """A file's text at git revision `rev`, or in the work tree when rev is None; None if absent."""
    if rev is None:
        return (ROOT / path).read_text() if (ROOT / path).exists() else None
    return at_rev(rev, path)


def files_at_rev(rev: str, folder: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, folder.as_posix()], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return [Path(p) for p in out.stdout.split()]


def numbers(obj, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a JSON object by its dotted path (lists by index)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP_KEYS:
                out.update(numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def compare_json(old: str, new: str) -> tuple[int, int, float, list[tuple[float, str]]]:
    a, b = numbers(json.loads(old)), numbers(json.loads(new))
    keys = sorted(set(a) | set(b))
    diffs = [(abs(a[k] - b[k]) if k in a and k in b else float("inf"), k) for k in keys]
    equal = sum(d == 0 for d, _ in diffs)
    moved = sorted((d, k) for d, k in diffs if d > 0)[::-1]
    return equal, len(keys), max((d for d, _ in diffs), default=0.0), moved


def compare_jsonl(old: str, new: str) -> tuple[int, int]:
    a, b = old.splitlines(), new.splitlines()
    return sum(x == y for x, y in zip(a, b)), max(len(a), len(b))


def report(rev: str, folder: Path, top: int, new_rev: str | None = None) -> list[str]:
    lines = [f"### {folder.as_posix()} (git {rev[:7]} → {f'git {new_rev[:7]}' if new_rev else 'work tree'})", ""]
    json_rows, jsonl_rows, missing = [], [], []
    for rel in files_at_rev(rev, folder):
        if rel.name.endswith(".run.json") or rel.name in ("stage_times.json", "run.json", "timings.md"):
            continue
        old, new = at_rev(rev, rel), text_at(new_rev, rel)
        if new is None:
            missing.append(rel.as_posix())
            continue
        if rel.suffix == ".json":
            equal, n, worst, moved = compare_json(old, new)
            json_rows.append((rel, equal, n, worst, moved[:top]))
        elif rel.suffix == ".jsonl":
            same, n = compare_jsonl(old, new)
            jsonl_rows.append((rel, same, n))
    lines += ["| metrics file | numbers equal | largest difference | moved most |", "|---|---|---|---|"]
    def size(d: float) -> str:  # inf: a number on one side only (e.g. a t statistic now null)
        return "one side only" if d == float("inf") else f"{d:.4g}"

    for rel, equal, n, worst, moved in json_rows:
        most = ", ".join(f"`{k}` {size(d)}" for d, k in moved) or "—"
        lines.append(f"| {rel.relative_to(folder)} | {equal}/{n} | {size(worst)} | {most} |")
    lines += ["", "| per-question file | rows identical |", "|---|---|"]
    lines += [f"| {rel.relative_to(folder)} | {same}/{n} |" for rel, same, n in jsonl_rows]
    if missing:
        lines += ["", "Not in the rerun: " + ", ".join(missing)]
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the git revision of the runs being replaced")
    ap.add_argument("folders", nargs="+", type=Path, help="run folders, relative to the repository root")
    ap.add_argument("--new", metavar="NEW", help="the git revision of the rerun (default: the work tree)")
    ap.add_argument("--top", type=int, default=3, help="fields listed per metrics file")
    args = ap.parse_args(argv)
    for folder in args.folders:
        print("\n".join(report(args.rev, folder, args.top, args.new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
