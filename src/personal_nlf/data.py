"""LaMP-QA records: loading (hub or local JSON/JSONL/parquet) and validation.

One record = one user: `id`, `question` (post title), `narrative` (post body, the user's detailed
need), `rubric_aspects` ([{aspect, reason, evidence}]) and `profile` ([{id, text, category?}]).
`narrative` and `rubric_aspects` are training/judging signals only (see prompts.py).

Every problem is reported as one line naming the file, the record (index and id) and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from . import verifier
from .io import read_jsonl, read_text

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataError(ValueError):
    """Input data that cannot be used; the message names file, record and field."""


@dataclass(frozen=True)
class Aspect:
    aspect: str
    reason: str = ""
    evidence: str = ""
    # Optional machine check (personal_nlf.verifier.CHECK_TYPES), scored by judge.method=verifier.
    check: dict | None = None


@dataclass(frozen=True)
class PreferencePair:
    """Two responses to the record's question: `chosen` fits the record's user (persona
    `chosen_persona`), `rejected` fits another persona. Judge/training signal only."""

    chosen: str
    rejected: str
    chosen_persona: str = ""
    rejected_persona: str = ""


@dataclass(frozen=True)
class ProfileItem:
    id: str
    text: str
    category: str | None = None


@dataclass(frozen=True)
class Record:
    id: str
    question: str
    narrative: str = ""
    rubric_aspects: tuple[Aspect, ...] = ()
    profile: tuple[ProfileItem, ...] = ()
    # Controlled-persona data only (data/persona): the user's ground-truth persona and preference
    # pairs. Like narrative and rubric, for judging and training signals only, never a prompt.
    persona: str | None = None
    pairs: tuple[PreferencePair, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rubric_aspects"] = list(d["rubric_aspects"])
        d["profile"] = list(d["profile"])
        d["pairs"] = list(d["pairs"])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Record":
        return Record(
            id=d["id"],
            question=d["question"],
            narrative=d.get("narrative") or "",
            rubric_aspects=tuple(_aspect_from(a) for a in d.get("rubric_aspects") or ()),
            profile=tuple(ProfileItem(**p) for p in d.get("profile") or ()),
            persona=d.get("persona"),
            pairs=tuple(PreferencePair(**p) for p in d.get("pairs") or ()),
        )


def _aspect_from(a: dict[str, Any]) -> Aspect:
    """An Aspect from a dict; `check` may be a dict or, in prepared parquet, its JSON text."""
    check = a.get("check")
    if isinstance(check, str):
        check = json.loads(check)
    return Aspect(a["aspect"], a.get("reason") or "", a.get("evidence") or "", check or None)


@dataclass
class LoadReport:
    """Odd-but-legal things seen while loading: counted, reported, never silent."""

    n_records: int = 0
    empty_profiles: int = 0
    auto_profile_ids: int = 0
    dropped_empty_items: int = 0
    truncated_items: int = 0
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: "LoadReport") -> None:
        for k in ("n_records", "empty_profiles", "auto_profile_ids", "dropped_empty_items", "truncated_items"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.warnings.extend(other.warnings)


# ---------------------------------------------------------------- reading raw rows


def read_rows(path: str | Path) -> list[Any]:
    """Raw rows from a local .json (array), .jsonl or .parquet file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pl.read_parquet(path).to_dicts()
        except Exception as e:  # polars raises several exception types for corrupt files
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if suffix == ".jsonl":
        return read_jsonl(path, error=DataError, what="JSON object (one record per line)")
    if suffix == ".json":
        try:
            data = json.loads(read_text(path, DataError))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        return data
    raise DataError(f"{path}: unsupported file type '{suffix}' (use {', '.join(LOCAL_SUFFIXES)})")


# ---------------------------------------------------------------- validation


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _nonempty_str(rec: dict, key: str, where, problems: list[str], required: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            problems.append(where(key, "missing"))
        return ""
    v = rec[key]
    if not isinstance(v, str):
        problems.append(where(key, f"expected a string, got {_type_name(v)}"))
        return ""
    if required and not v.strip():
        problems.append(where(key, "empty"))
    return v


def object_items(value: Any, fld: str, where, problems: list[str], required: bool = False,
                 nonempty: str = "", strings: bool = False):
    """(j, item, at) for each item of the list field `fld` (its value `value`) that is an object
    (or, with `strings`, a string). `at(key, message)` locates `fld[j].key` (`at(None, message)`:
    the item itself). Reported in `problems`: a missing field when `required`, a value that is not
    a list, an empty list when `nonempty` says why one is needed, and any other item."""
    if value is None:
        if required:
            problems.append(where(fld, "missing"))
        return
    if not isinstance(value, list):
        problems.append(where(fld, f"expected a list, got {_type_name(value)}"))
        return
    if nonempty and not value:
        problems.append(where(fld, f"empty list ({nonempty})"))
    for j, item in enumerate(value):
        f = f"{fld}[{j}]"
        if not (isinstance(item, dict) or (strings and isinstance(item, str))):
            wanted = "a string or an object with text" if strings else "an object"
            problems.append(where(f, f"expected {wanted}, got {_type_name(item)}"))
            continue
        yield j, item, (lambda k, m, f=f: where(f if k is None else f"{f}.{k}", m))


def parse_pairs(value: Any, where, problems: list[str], fld: str = "pairs", required: bool = True,
                nonempty: str = "a record needs at least one chosen/rejected pair") -> list[PreferencePair]:
    """A list of {chosen, rejected, chosen_persona?, rejected_persona?}: the preference pairs of a
    persona record (data/persona) and of a preference file (preferences.py)."""
    out = []
    for _, p, at in object_items(value, fld, where, problems, required, nonempty if required else ""):
        n = len(problems)
        vals = [_nonempty_str(p, k, at, problems, required=k in ("chosen", "rejected"))
                for k in ("chosen", "rejected", "chosen_persona", "rejected_persona")]
        if len(problems) == n and vals[0].strip() == vals[1].strip():
            problems.append(at(None, "chosen and rejected are the same text"))
        if len(problems) == n:
            out.append(PreferencePair(*vals))
    return out


def located_rows(rows: list[Any], source: str, problems: list[str]):
    """(index, row, label, where) for every row that is a JSON object; any other row is reported
    in `problems`. `where(field, message)` names the file, the record (index and id) and the field."""
    for i, rec in enumerate(rows):
        rid = rec.get("id") if isinstance(rec, dict) else None
        label = f"record {i} (id={rid!r})" if isinstance(rid, str) and rid else f"record {i}"
        if not isinstance(rec, dict):
            problems.append(f"{source}: {label}: expected an object, got {_type_name(rec)}")
            continue

        def where(fld: str, msg: str, _label=label) -> str:
            return f"{source}: {_label}: field '{fld}': {msg}"

        yield i, rec, label, where


def validate_rows(
    rows: list[Any],
    source: str,
    require_rubric: bool = True,
    max_item_chars: int | None = None,
) -> tuple[list[Record], list[str], LoadReport]:
    """Validate raw rows. Returns (records, problems, report); records is empty if any problem."""
    problems: list[str] = []
    report = LoadReport()
    records: list[Record] = []
    seen: dict[str, int] = {}
    for i, rec, label, where in located_rows(rows, source, problems):
        n_before = len(problems)
        rid = _nonempty_str(rec, "id", where, problems)
        question = _nonempty_str(rec, "question", where, problems)
        narrative = _nonempty_str(rec, "narrative", where, problems, required=require_rubric)
        if rid and rid in seen:
            problems.append(where("id", f"duplicate id (also record {seen[rid]})"))
        elif rid:
            seen[rid] = i

        aspects: list[Aspect] = []
        for _, a, at in object_items(rec.get("rubric_aspects"), "rubric_aspects", where, problems,
                                     required=require_rubric,
                                     nonempty="the judge needs at least one aspect" if require_rubric else ""):
            name = _nonempty_str(a, "aspect", at, problems)
            reason = _nonempty_str(a, "reason", at, problems, required=False)
            evidence = _nonempty_str(a, "evidence", at, problems, required=False)
            check = a.get("check")
            if check is not None:
                bad = verifier.validate_check(check)
                if bad:
                    problems.append(at("check", bad))
            aspects.append(Aspect(name, reason, evidence, check))

        persona = rec.get("persona")
        if persona is not None and not isinstance(persona, str):
            problems.append(where("persona", f"expected a string, got {_type_name(persona)}"))
        pairs = parse_pairs(rec.get("pairs"), where, problems, required=False)

        items: list[ProfileItem] = []
        prof = rec.get("profile")
        for j, p, at in object_items(prof, "profile", where, problems, required=True):
            text = p.get("text")
            if text is None:
                problems.append(at("text", "missing"))
                continue
            if not isinstance(text, str):
                problems.append(at("text", f"expected a string, got {_type_name(text)}"))
                continue
            pid = p.get("id")
            if pid is None or pid == "":
                pid = str(j)
                report.auto_profile_ids += 1
            elif isinstance(pid, (str, int)) and not isinstance(pid, bool):
                pid = str(pid)
            else:
                problems.append(at("id", f"expected a string, got {_type_name(pid)}"))
                continue
            cat = p.get("category")
            if cat is not None and not isinstance(cat, str):
                problems.append(at("category", f"expected a string, got {_type_name(cat)}"))
                continue
            if not text.strip():
                report.dropped_empty_items += 1
                continue
            if max_item_chars and len(text) > max_item_chars:
                text = text[:max_item_chars]
                report.truncated_items += 1
            items.append(ProfileItem(pid, text, cat))
        if isinstance(prof, list) and not items and not problems[n_before:]:
            report.empty_profiles += 1
            report.warnings.append(f"{source}: {label}: empty profile (falls back to no retrieval)")
        if len(problems) == n_before:
            records.append(Record(rid, question, narrative, tuple(aspects), tuple(items),
                                  persona if isinstance(persona, str) else None, tuple(pairs)))
    report.n_records = len(records)
    if problems:
        records = []
    return records, problems, report


# ---------------------------------------------------------------- sources


def is_local(source: str) -> bool:
    return Path(source).exists()


def split_file(source: str | Path, domain: str, split: str) -> Path:
    base = Path(source) / domain
    for suffix in LOCAL_SUFFIXES:
        p = base / f"{split}{suffix}"
        if p.exists():
            return p
    raise DataError(f"{base}: no {split}.json, {split}.jsonl or {split}.parquet for domain {domain}")


def load_split(
    source: str,
    domain: str,
    split: str,
    require_rubric: bool = True,
    max_records: int | None = None,
    max_item_chars: int | None = None,
) -> tuple[list[Record], LoadReport]:
    """Records of one (domain, split), from a local folder or the hub. Raises DataError."""
    if is_local(source):
        path = split_file(source, domain, split)
        rows, name = read_rows(path), str(path)
    elif HUB_ID.match(source):
        rows, name = _hub_rows(source, domain, split), f"{source}:{domain}/{split}"
    else:
        raise DataError(f"data.source {source!r}: neither an existing local folder nor a hub id (owner/name)")
    if max_records is not None:
        rows = rows[:max_records]
    records, problems, report = validate_rows(rows, name, require_rubric, max_item_chars)
    if problems:
        more = f"\n... and {len(problems) - 20} more problems" if len(problems) > 20 else ""
        raise DataError("\n".join(problems[:20]) + more)
    return records, report


def _hub_rows(hub_id: str, domain: str, split: str) -> list[dict]:
    import datasets  # heavy import; only for the real benchmark

    try:
        ds = datasets.load_dataset(hub_id, domain, split=split)
    except Exception as e:  # network/hub errors come in many types
        raise DataError(
            f"{hub_id}:{domain}/{split}: could not load from the hub ({type(e).__name__}: {e}). "
            "Offline? Download the dataset once and point data.source at the local folder."
        ) from None
    return ds.to_list()


def validate_file(path: str | Path, require_rubric: bool = True) -> tuple[list[str], LoadReport]:
    """All problems of one local file (for `personal-nlf validate-data`)."""
    try:
        rows = read_rows(path)
    except DataError as e:
        return [str(e)], LoadReport()
    _, problems, report = validate_rows(rows, str(path), require_rubric)
    return problems, report


# ---------------------------------------------------------------- prepared parquet

PREPARED_SCHEMA = {
    "domain": pl.String,
    "split": pl.String,
    "id": pl.String,
    "question": pl.String,
    "narrative": pl.String,
    # check: the aspect's machine check as JSON text (null when none): check types differ in fields.
    "rubric_aspects": pl.List(pl.Struct({"aspect": pl.String, "reason": pl.String, "evidence": pl.String,
                                         "check": pl.String})),
    "profile": pl.List(pl.Struct({"id": pl.String, "text": pl.String, "category": pl.String})),
    "persona": pl.String,
    "pairs": pl.List(pl.Struct({"chosen": pl.String, "rejected": pl.String, "chosen_persona": pl.String,
                                "rejected_persona": pl.String})),
}


def records_to_frame(records: list[Record], domain: str, split: str) -> pl.DataFrame:
    rows = []
    for r in records:
        d = r.to_dict()
        for a in d["rubric_aspects"]:
            a["check"] = None if a["check"] is None else json.dumps(a["check"], sort_keys=True, ensure_ascii=False)
        rows.append({"domain": domain, "split": split, **d})
    return pl.DataFrame(rows, schema=PREPARED_SCHEMA)


def frame_to_records(df: pl.DataFrame) -> list[Record]:
    return [Record.from_dict(d) for d in df.to_dicts()]


def prepared_path(prepared_dir: str | Path, domain: str, split: str) -> Path:
    return Path(prepared_dir) / domain / f"{split}.parquet"


def load_prepared(prepared_dir: str | Path, domain: str, split: str) -> list[Record]:
    path = prepared_path(prepared_dir, domain, split)
    if not path.exists():
        raise DataError(f"{path}: prepared split not found (is {domain}/{split} in data.domains/data.splits?)")
    return frame_to_records(pl.read_parquet(path))
