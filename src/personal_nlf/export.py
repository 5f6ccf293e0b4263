"""Exported per-user summaries (summary mode), and reading them back.

`exports/summaries.jsonl`: one line per user with the summary and what produced it; never raw
profile text (summaries are scrubbed of copied profile runs when written, and checked again
here). `exports/summaries.openai.jsonl`: the same users as OpenAI chat messages, a system message
each, ready to prepend to any chat-completions call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import models
from .io import numbered_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic
from .summaries import scrub

EXPORT_FIELDS = ("id", "domain", "summary", "summary_tokens", "summarizer_model", "summarizer_adapter",
                 "summarizer_adapter_hash", "iteration", "profile_hash")
SYSTEM_PREFIX = ("You are answering a question from a specific person. What is known about their preferences "
                 "(a summary learned from their history; follow it where it applies):\n")


class ExportError(ValueError):
    """A summaries file that cannot be used: the message names the file, line and field."""


def system_message(summary: str) -> str:
    return SYSTEM_PREFIX + summary.strip()


def build(summary_rows: list[dict], summarizer_model: str, iteration: str,
          profiles: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Export rows from the evaluate step's summaries.jsonl rows. `profiles` (record key ->
    profile texts), when given, is used to scrub once more: nothing copied leaves the project."""
    # No creation time: the export is a DVC output and must be identical when rerun; the adapter
    # hash and iteration say what wrote it.
    out = []
    for r in summary_rows:
        text = r["summary"]
        if profiles is not None:
            text, _ = scrub(text, profiles.get(r["key"], []))
        adapter = r.get("summarizer_adapter")
        out.append({"id": r["id"], "domain": r["domain"], "summary": text, "summary_tokens": r["summary_tokens"],
                    "summarizer_model": summarizer_model, "summarizer_adapter": adapter,
                    "summarizer_adapter_hash": models.folder_hash(adapter) if adapter else None,
                    "iteration": iteration, "profile_hash": r["profile_hash"]})
    return out


def write(rows: list[dict], out_dir: str | Path, meta: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    write_jsonl_atomic(out_dir / "summaries.jsonl", rows)
    write_jsonl_atomic(out_dir / "summaries.openai.jsonl", [
        {"custom_id": f"{r['domain']}/{r['id']}", "messages": [{"role": "system", "content": system_message(r["summary"])}]}
        for r in rows])
    write_json_atomic(out_dir / "export.json", {**meta, "users": len(rows)})


def load(path: str | Path) -> dict[tuple[str, str], dict]:
    """(domain, id) -> export row, every line checked."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such file (run `dvc repro pipelines/summary/dvc.yaml`, or `personal-nlf export`)")
    out: dict[tuple[str, str], dict] = {}
    for n, row in numbered_jsonl(path, error=ExportError):
        for field in ("id", "domain", "summary"):
            if not isinstance(row.get(field), str):
                raise ExportError(f"{path}: line {n}: field '{field}' missing or not a string")
        key = (row["domain"], row["id"])
        if key in out:
            raise ExportError(f"{path}: line {n}: user {row['domain']}/{row['id']} appears twice")
        out[key] = row
    if not out:
        raise ExportError(f"{path}: no summaries")
    return out


def load_summary_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no summaries (the summary mode's evaluate step writes it)")
    return read_jsonl(path, error=ExportError)


def export_iteration(params, root: str | Path, prepared: str | Path, iteration: str, out_dir: str | Path) -> dict:
    """Export the summaries the summary mode's evaluate step wrote for `iteration`."""
    from .data import load_prepared

    rows = load_summary_rows(Path(root) / f"iter_{iteration}" / "evaluate" / "summaries.jsonl")
    profiles = {}
    for domain in {r["domain"] for r in rows}:
        for split in {r["split"] for r in rows}:
            for rec in load_prepared(prepared, domain, split):
                profiles[f"{domain}/{split}/{rec.id}"] = [p.text for p in rec.profile]
    out = build(rows, params.models.summarizer.model, iteration, profiles)
    write(out, out_dir, {"loop": "summary", "iteration": iteration, "split": rows[0]["split"] if rows else None,
                         "summarizer": params.models.summarizer.model_dump(), "summary": params.summary.model_dump()})
    return {"users": len(out), "mean_summary_tokens": round(sum(r["summary_tokens"] for r in out) / max(1, len(out)), 1)}
