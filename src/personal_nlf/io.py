"""Atomic writes and resumable per-record journals.

Every stage output is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written output. Long generation stages append each finished record to a
journal (`<out>.partial`) as they go; rerun with the same fingerprint, they skip what is done.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-serializable object, independent of key order."""
    return sha256_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))[:n]


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a file stands where a folder of the path should be
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of the output folder", e.filename) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)  # ENOSPC from write() names no file: name the output
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text_atomic(path, text)


def write_parquet_atomic(path: str | Path, df: pl.DataFrame) -> None:
    _atomic(Path(path), lambda f: df.write_parquet(f))


def read_text(path: str | Path, error: type[Exception] = ValueError) -> str:
    """A UTF-8 file's text; a missing, unreadable or non-UTF-8 file raises `error` in one line
    naming the file (and the line of the first bad byte)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{path}: line {line}: not valid UTF-8 (byte {e.start})") from None


def read_jsonl(path: str | Path, error: type[Exception] = ValueError, what: str = "JSON object") -> list[dict]:
    """The rows of a JSONL file (see numbered_jsonl)."""
    return [row for _, row in numbered_jsonl(path, error, what)]


def numbered_jsonl(path: str | Path, error: type[Exception] = ValueError,
                   what: str = "JSON object") -> list[tuple[int, dict]]:
    """The one JSONL reader: (line number, row) for every non-blank line, each a JSON object. Any
    problem is raised as `error` in one line naming the file and the line (callers pass their own
    error type so the CLI, the data loader and the export reader report it their way)."""
    path = Path(path)
    text = read_text(path, error)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}: line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise error(f"{path}: line {n}: expected a {what}, got {type(row).__name__}")
        rows.append((n, row))
    return rows


class Journal:
    """Append-only record journal that survives kill -9.

    The first line holds a fingerprint of everything that determines the outputs (models,
    prompts, sampling, inputs). A journal with another fingerprint is stale and discarded, so a
    resumed run never mixes outputs of two configurations. A torn last line (killed mid-write) is
    dropped. Records are keyed; a key already present is never written twice.
    """

    def __init__(self, path: str | Path, fingerprint: str, log=print):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.done: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load(log)
        if not self.path.exists():
            with self.path.open("w", encoding="utf-8") as f:
                f.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        self._f = self.path.open("a", encoding="utf-8")

    def _load(self, log) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if head.get("fingerprint") != self.fingerprint:
            log(f"{self.path}: journal from another configuration; starting over")
            self.path.unlink()
            return
        good = [lines[0]]
        for line in lines[1:]:
            if not line.endswith("\n"):
                break  # torn write from a killed process: that record is redone
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if rec["key"] not in self.done:
                self.done[rec["key"]] = rec["value"]
                good.append(line)
        if len(good) != len(lines):
            # Rewrite without the torn tail so appends start on a clean line.
            write_text_atomic(self.path, "".join(good))
        if self.done:
            log(f"{self.path}: resuming, {len(self.done)} records already done")

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def add(self, key: str, value: dict) -> None:
        if key in self.done:
            return
        self._f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[key] = value

    def values(self) -> Iterator[dict]:
        return iter(self.done.values())

    def close(self, remove: bool = False) -> None:
        self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)
