"""`personal-nlf` command line: data validation (more subcommands join as stages grow)."""

from __future__ import annotations

import argparse
import sys

from . import data


def cmd_validate_data(args) -> int:
    worst = 0
    for path in args.paths:
        problems, report = data.validate_file(path, require_rubric=not args.no_rubric)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(f"{path}: INVALID ({len(problems)} problem{'s' if len(problems) != 1 else ''})", file=sys.stderr)
            worst = 1
        else:
            extra = f", {report.empty_profiles} empty profile(s)" if report.empty_profiles else ""
            print(f"{path}: OK ({report.n_records} records{extra})")
            for w in report.warnings:
                print(f"warning: {w}", file=sys.stderr)
    return worst


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personal-nlf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate-data", help="check LaMP-QA-format files (.json/.jsonl/.parquet)")
    v.add_argument("paths", nargs="+")
    v.add_argument("--no-rubric", action="store_true",
                   help="questions-only file (no narrative/rubric_aspects required)")
    v.set_defaults(func=cmd_validate_data)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
