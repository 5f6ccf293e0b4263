"""Per-user preference data (the shapes POPI, PLUS and PersonaMem use): loading, validation, and
pairwise preference accuracy.

One record = one held-out prompt of one user. Our field names:

  id          str, unique in the file
  question    str, the held-out prompt
  user_id     str, optional (several records may share a user)
  user signal, at least one of (this is what a summarizer or a RAG prompt may read):
    history   [{prompt, chosen, rejected}]  earlier preference pairs of the same user (POPI's
              ELIX/Reviews/Roleplay k-shot pairs; AlignX's Pair-wise Comparative Feedback)
    user_description  str, a persona or demographic text given to the model as the user signal
              (AlignX "Demographic Information", POPI's preprocessed `raw`)
    profile   [{text, id?}] or [str]: free-text history items (LaMP-QA's profile; AlignX's
              User-Generated Content; PersonaMem's conversation turns)
  persona     str, optional: the user's ground-truth persona, for judging only (as in data.Record:
              never shown to a summarizer, generator or policy)
  target, one kind per file:
    pairs     [{chosen, rejected, chosen_persona?, rejected_persona?}]  kind `pairs`: responses to
              `question`, chosen fits this user. A top-level `chosen` + `rejected` (POPI, AlignX,
              PLUS/OpenRLHF) is read as one pair. chosen_persona / rejected_persona are ground truth
              for judging only: never shown to a summarizer, generator or policy.
    options + correct   [str, ...] and the 0-based index of the right option: kind `choice`
              (PersonaMem). Its pairs are (right option, each other option).

LaMP-QA records (narrative, rubric_aspects, profile: data.py) may carry `pairs` too (the
controlled-persona benchmark); validate_file checks both parts.

Published shapes -> ours (SHAPES; hub ids load through `datasets.load_dataset`, then this mapping):

  ours                      POPI (preprocessed)   AlignX                          PersonaMem
  id                        row index             row index                       question_id
  user_id                   -                     -                               persona_id
  question                  question              prompt                          user_question_or_message
  pairs[0].chosen           my_chosen             chosen                          -
  pairs[0].rejected         my_rejected           rejected                        -
  pairs[0].chosen_persona   persona (judge only)  -                               -
  persona (judge only)      persona               -                               -
  user_description          raw                   Demographic Information         -
  history                   (inside raw)          Pair-wise Comparative Feedback  -
  profile                   -                     User-Generated Content          shared context up to
                                                  ("prompt\\ncomment")            end_index_in_shared_context
  options / correct         -                     -                               all_options / correct_answer
                                                                                  ("(c)" -> 2)
PLUS's code (an OpenRLHF fork) reads prompt/chosen/rejected columns with a configurable user-signal
column: load it with shape `ours` and a `field_map` {our name: their column}. The published field
names above were read from public code that loads those sets; a name that is missing on load is a
located error naming the field, never a silent empty value.

Every problem is one line naming the file, the record (index and id) and the field, as in data.py.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data import (HUB_ID, DataError, PreferencePair, ProfileItem, Record, _nonempty_str, _type_name, located_rows,
                   object_items, parse_pairs, read_rows, validate_rows)

KINDS = ("lamp_qa", "pairs", "choice")


@dataclass(frozen=True)
class PastPair:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PreferenceRecord:
    id: str
    question: str
    kind: str  # pairs | choice
    user_id: str | None = None
    user_description: str = ""  # user signal (the model may read it)
    persona: str = ""  # ground truth, judging only
    history: tuple[PastPair, ...] = ()
    profile: tuple[str, ...] = ()
    pairs: tuple[PreferencePair, ...] = ()
    options: tuple[str, ...] = ()
    correct: int | None = None

    def eval_pairs(self) -> tuple[PreferencePair, ...]:
        """(chosen, rejected) pairs to score: the record's pairs, or for a multiple-choice record
        the right option against each other option."""
        if self.kind == "choice":
            right = self.options[self.correct]
            return tuple(PreferencePair(right, o) for i, o in enumerate(self.options) if i != self.correct)
        return self.pairs

    def signal_texts(self) -> list[str]:
        """The user signal as profile texts (what a summarizer or RAG prompt reads): persona,
        then earlier pairs, then profile items. Never the ground-truth persona."""
        out = [f"About me: {self.user_description}"] if self.user_description.strip() else []
        out += [f"Asked: {h.prompt}\nPreferred answer: {h.chosen}\nRejected answer: {h.rejected}" for h in self.history]
        return out + list(self.profile)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_record(self) -> Record:
        """The pipeline's record (data.Record, what `prepare` writes): the user signal becomes the
        profile (signal_texts), eval_pairs the pairs; no narrative or rubric (judge with pairs)."""
        return Record(id=self.id, question=self.question,
                      profile=tuple(ProfileItem(f"s{i}", t) for i, t in enumerate(self.signal_texts())),
                      persona=self.persona or None,
                      pairs=self.eval_pairs())


# ---------------------------------------------------------------- validation


def detect_kind(row: Any) -> str:
    """The data kind a record's fields say: choice (options), lamp_qa (narrative/rubric), pairs."""
    if not isinstance(row, dict):
        return "lamp_qa"
    if "options" in row or "correct" in row:
        return "choice"
    if "rubric_aspects" in row or "narrative" in row:
        return "lamp_qa"
    if "pairs" in row or "chosen" in row or "rejected" in row:
        return "pairs"
    return "lamp_qa"


def _history(value: Any, where, problems: list[str]) -> list[PastPair]:
    out = []
    for _, h, at in object_items(value, "history", where, problems):
        n = len(problems)
        vals = [_nonempty_str(h, k, at, problems) for k in ("prompt", "chosen", "rejected")]
        if len(problems) == n:
            out.append(PastPair(*vals))
    return out


def _profile(value: Any, where, problems: list[str]) -> list[str]:
    """Profile items: strings, or objects with a `text`; blank ones are dropped."""
    out = []
    for _, p, at in object_items(value, "profile", where, problems, strings=True):
        text = p if isinstance(p, str) else p.get("text")
        if not isinstance(text, str):
            problems.append(at("text", "missing" if text is None else f"expected a string, got {_type_name(text)}"))
        elif text.strip():
            out.append(text)
    return out


def validate_preference_rows(rows: list[Any], source: str, kind: str = "auto"
                             ) -> tuple[list[PreferenceRecord], list[str]]:
    """Validate preference records (kind pairs or choice; auto = by each record's fields).
    Returns (records, problems); records is empty if any problem."""
    problems: list[str] = []
    records: list[PreferenceRecord] = []
    seen: dict[str, int] = {}
    for i, rec, label, where in located_rows(rows, source, problems):
        n = len(problems)
        k = detect_kind(rec) if kind == "auto" else kind
        if k not in ("pairs", "choice"):
            problems.append(f"{source}: {label}: not a preference record (no pairs, chosen/rejected or options)")
            continue
        rid = _nonempty_str(rec, "id", where, problems)
        if rid and rid in seen:
            problems.append(where("id", f"duplicate id (also record {seen[rid]})"))
        elif rid:
            seen[rid] = i
        question = _nonempty_str(rec, "question", where, problems)
        uid = rec.get("user_id")
        if uid is not None and not (isinstance(uid, (str, int)) and not isinstance(uid, bool)):
            problems.append(where("user_id", f"expected a string, got {_type_name(uid)}"))
        described = _nonempty_str(rec, "user_description", where, problems, required=False)
        persona = _nonempty_str(rec, "persona", where, problems, required=False)
        history = _history(rec.get("history"), where, problems)
        profile = _profile(rec.get("profile"), where, problems)
        if len(problems) == n and not (described.strip() or history or profile):
            problems.append(where("history", "no user signal: give history (earlier pairs), user_description or "
                                             "profile"))
        pairs: list[Pair] = []
        options: list[str] = []
        correct = None
        if k == "pairs":
            if "pairs" in rec:
                pairs = parse_pairs(rec["pairs"], where, problems)
            else:  # flat chosen/rejected: one pair
                flat = {key: rec.get(key) for key in ("chosen", "rejected", "chosen_persona", "rejected_persona")
                        if rec.get(key) is not None}
                # Problems name the record's own fields (chosen, rejected), not a made-up pairs[0].
                flat_where = lambda f, m: where(f.removeprefix("pairs[0].").replace("pairs[0]", "chosen"), m)
                pairs = parse_pairs([flat], flat_where, problems)
        else:
            opts = rec.get("options")
            if opts is None:
                problems.append(where("options", "missing"))
            elif not isinstance(opts, list):
                problems.append(where("options", f"expected a list, got {_type_name(opts)}"))
            else:
                if len(opts) < 2:
                    problems.append(where("options", f"expected at least 2 options, got {len(opts)}"))
                for j, o in enumerate(opts):
                    if not isinstance(o, str):
                        problems.append(where(f"options[{j}]", f"expected a string, got {_type_name(o)}"))
                    elif not o.strip():
                        problems.append(where(f"options[{j}]", "empty"))
                    else:
                        options.append(o)
            c = rec.get("correct")
            if c is None:
                problems.append(where("correct", "missing"))
            elif not isinstance(c, int) or isinstance(c, bool):
                problems.append(where("correct", f"expected an integer option index, got {_type_name(c)}"))
            elif isinstance(opts, list) and not 0 <= c < len(opts):
                problems.append(where("correct", f"index {c} out of range for {len(opts)} options"))
            else:
                correct = c
        if len(problems) == n:
            records.append(PreferenceRecord(rid, question, k, None if uid is None else str(uid), described, persona,
                                            tuple(history), tuple(profile), tuple(pairs), tuple(options), correct))
    if problems:
        records = []
    return records, problems


@dataclass
class FileCheck:
    kind: str
    n_records: int = 0
    n_pairs: int = 0
    empty_profiles: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validate_file(path: str | Path, kind: str = "auto", require_rubric: bool = True) -> FileCheck:
    """All problems of one local file of any data kind (for `personal-nlf validate-data`). auto:
    the kind of the first record (data kinds are not mixed in one file). LaMP-QA records that
    carry `pairs` have those checked too."""
    try:
        rows = read_rows(path)
    except DataError as e:
        return FileCheck(kind if kind != "auto" else "unknown", problems=[str(e)])
    if kind == "auto":
        kind = detect_kind(rows[0]) if rows else "lamp_qa"
    source = str(path)
    if kind == "lamp_qa":
        records, problems, report = validate_rows(rows, source, require_rubric)
        n_pairs = 0
        for i, rec in enumerate(rows):
            if isinstance(rec, dict) and "pairs" in rec:
                rid = rec.get("id")
                label = f"record {i} (id={rid!r})" if isinstance(rid, str) and rid else f"record {i}"
                n_pairs += len(parse_pairs(rec["pairs"], lambda f, m, _l=label: f"{source}: {_l}: field '{f}': {m}",
                                           problems, required=False))
        problems = list(dict.fromkeys(problems))  # data.validate_rows may check pairs too: report each once
        return FileCheck(kind, 0 if problems else report.n_records, 0 if problems else n_pairs,
                         empty_profiles=report.empty_profiles, problems=problems, warnings=list(report.warnings))
    records, problems = validate_preference_rows(rows, source, kind)
    return FileCheck(kind, len(records), sum(len(r.eval_pairs()) for r in records), problems=problems)


def load_file(path: str | Path, kind: str = "auto") -> list[PreferenceRecord]:
    """Preference records of a local .json/.jsonl/.parquet file. Raises DataError."""
    rows = read_rows(path)
    records, problems = validate_preference_rows(rows, str(path), kind)
    _raise(problems)
    return records


def _raise(problems: list[str]) -> None:
    if problems:
        more = f"\n... and {len(problems) - 20} more problems" if len(problems) > 20 else ""
        raise DataError("\n".join(problems[:20]) + more)


# ---------------------------------------------------------------- published shapes


def _need(row: dict, key: str, i: int, source: str) -> Any:
    if key not in row:
        raise DataError(f"{source}: record {i}: field '{key}': missing (expected by this shape; "
                        f"fields present: {sorted(row)[:12]})")
    return row[key]


def from_popi(row: dict, i: int, source: str) -> dict:
    return {"id": str(row.get("id", i)), "question": _need(row, "question", i, source),
            "user_description": _need(row, "raw", i, source),
            **({"persona": str(row["persona"])} if row.get("persona") else {}),
            "pairs": [{"chosen": _need(row, "my_chosen", i, source), "rejected": _need(row, "my_rejected", i, source),
                       **({"chosen_persona": str(row["persona"])} if row.get("persona") else {})}]}


def from_alignx(row: dict, i: int, source: str) -> dict:
    ugc = row.get("User-Generated Content") or []
    return {"id": str(row.get("id", i)), "question": _need(row, "prompt", i, source),
            "chosen": _need(row, "chosen", i, source), "rejected": _need(row, "rejected", i, source),
            "user_description": row.get("Demographic Information") or "",
            "history": [{"prompt": h.get("prompt"), "chosen": h.get("chosen"), "rejected": h.get("rejected")}
                        for h in row.get("Pair-wise Comparative Feedback") or []],
            "profile": [f"{u.get('prompt', '')}\n{u.get('comment', '')}".strip() for u in ugc]}


_OPTION_LABEL = re.compile(r"^\(?([a-z])\)?$")


def personamem_correct(label: str) -> int:
    """PersonaMem's correct_answer "(c)" -> 2."""
    m = _OPTION_LABEL.match(str(label).strip().lower())
    if not m:
        raise ValueError(f"not an option label like '(c)': {label!r}")
    return ord(m.group(1)) - ord("a")


def from_personamem(row: dict, i: int, source: str, context: list[dict] | None = None) -> dict:
    """One PersonaMem question row; `context` = its shared context (chat messages), cut at
    end_index_in_shared_context; the user's own turns become the profile."""
    opts = _need(row, "all_options", i, source)
    if isinstance(opts, str):
        opts = ast.literal_eval(opts)
    opts = [re.sub(r"^\([a-z]\)\s*", "", str(o)) for o in opts]
    try:
        correct = personamem_correct(_need(row, "correct_answer", i, source))
    except ValueError as e:
        raise DataError(f"{source}: record {i}: field 'correct_answer': {e}") from None
    end = int(row.get("end_index_in_shared_context") or 0)
    turns = [m.get("content", "") for m in (context or [])[:end] if m.get("role") == "user"]
    return {"id": str(_need(row, "question_id", i, source)), "user_id": str(row.get("persona_id", "")) or None,
            "question": _need(row, "user_question_or_message", i, source), "options": opts, "correct": correct,
            "profile": [t for t in turns if t.strip()]}


SHAPES: dict[str, Callable[[dict, int, str], dict]] = {
    "ours": lambda row, i, source: row, "popi": from_popi, "alignx": from_alignx, "personamem": from_personamem}


def map_rows(rows: list[dict], shape: str, source: str, field_map: dict[str, str] | None = None) -> list[dict]:
    """Published rows -> our field names (field_map: {our name: their column}, applied first)."""
    if shape not in SHAPES:
        raise DataError(f"{source}: unknown preference data shape {shape!r} (known: {', '.join(SHAPES)})")
    out = []
    for i, row in enumerate(rows):
        if field_map:
            row = {**row, **{ours: row[theirs] for ours, theirs in field_map.items() if theirs in row}}
        out.append(SHAPES[shape](row, i, source))
    return out


def load_hub(hub_id: str, split: str, config: str | None = None, shape: str = "ours",
             field_map: dict[str, str] | None = None, kind: str = "auto",
             max_records: int | None = None) -> list[PreferenceRecord]:
    """Preference records from the hub (`datasets.load_dataset(hub_id, config, split=split)`),
    mapped from `shape`. PersonaMem's questions need their shared contexts: load those with
    `from_personamem` yourself (they live in a separate JSONL file of the same dataset)."""
    import datasets  # heavy import; only for real data

    name = f"{hub_id}:{config or ''}/{split}"
    if not HUB_ID.match(hub_id):
        raise DataError(f"{hub_id!r}: not a hub id (owner/name)")
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # network/hub errors come in many types
        raise DataError(f"{name}: could not load from the hub ({type(e).__name__}: {e}). Offline? Download it "
                        "once and point at the local file.") from None
    rows = ds.to_list()[:max_records] if max_records else ds.to_list()
    records, problems = validate_preference_rows(map_rows(rows, shape, name, field_map), name, kind)
    _raise(problems)
    return records


def load(source: str, split: str = "test", config: str | None = None, shape: str = "ours",
         field_map: dict[str, str] | None = None, kind: str = "auto") -> list[PreferenceRecord]:
    """A local file (read as it is, after `shape`) or a hub id."""
    if Path(source).exists():
        rows = read_rows(source)
        records, problems = validate_preference_rows(map_rows(rows, shape, source, field_map), source, kind)
        _raise(problems)
        return records
    return load_hub(source, split, config, shape, field_map, kind)


# ---------------------------------------------------------------- pairwise preference accuracy


def answer_json(answer: str) -> str:
    """A response as the generator is asked to write it (prompts.ANSWER_FORMAT): the user's
    chosen and rejected responses are scored in this form, so the comparison is in-format."""
    return json.dumps({"personalized_answer": answer}, ensure_ascii=False)


@dataclass(frozen=True)
class PairCase:
    """One pair to score under one condition: (domain, record id) keys the user for bootstrap and
    paired tests; `prompt` is the condition's generator prompt (summary / rag / none)."""

    domain: str
    id: str
    prompt: list  # Messages
    chosen: str
    rejected: str


def pair_margins(answer_logprobs: Callable[[list, list[str]], list[float]], cases: list[PairCase]) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) per case (summed token log-probs, the
    responses in answer_json form), two answer_logprobs rows per case in one call."""
    prompts_, answers = [], []
    for c in cases:
        prompts_ += [c.prompt, c.prompt]
        answers += [answer_json(c.chosen), answer_json(c.rejected)]
    lp = answer_logprobs(prompts_, answers)
    return [lp[2 * i] - lp[2 * i + 1] for i in range(len(cases))]


def pairwise_accuracy(answer_logprobs: Callable[[list, list[str]], list[float]],
                      conditions: dict[str, list[PairCase]], n_boot: int = 1000, seed: int = 0,
                      baseline: str | None = "none") -> dict[str, Any]:
    """Pairwise preference accuracy per condition (e.g. summary / rag / none): the share of pairs
    where the generator gives the user's chosen response a higher log-likelihood than the rejected
    one (a tie counts 1/2). Per user (record) the score is the mean over its pairs; per domain the
    mean over users; the headline is the macro mean over domains, with a 95% bootstrap CI that
    resamples users within domains (metrics.summarize). Each other condition gets a paired
    sign-flip permutation test against `baseline` on the users both scored (metrics.paired_test).

    answer_logprobs: a backend's `answer_logprobs(prompts, answers)` (hf / vllm)."""
    from . import metrics

    out: dict[str, Any] = {"conditions": {}}
    per_user: dict[str, dict[tuple[str, str], float]] = {}
    for name, cases in conditions.items():
        if not cases:
            continue
        margins = pair_margins(answer_logprobs, cases)
        hits: dict[tuple[str, str], list[float]] = {}
        for c, m in zip(cases, margins):
            hits.setdefault((c.domain, c.id), []).append(1.0 if m > 0 else 0.5 if m == 0 else 0.0)
        qs = {k: math.fsum(v) / len(v) for k, v in hits.items()}
        per_user[name] = qs
        s = metrics.summarize(qs, n_boot=n_boot, seed=seed)
        out["conditions"][name] = {
            "accuracy": s["macro"], "ci95": s["macro_ci95"], "n_users": s["n"], "n_pairs": len(cases),
            "ties": sum(1 for m in margins if m == 0), "mean_margin": round(math.fsum(margins) / len(margins), 4),
            "domains": {d: {"accuracy": v["score"], "n": v["n"], "ci95": v["ci95"]} for d, v in s["domains"].items()}}
    if baseline in per_user:
        out["paired_vs_" + baseline] = {name: metrics.paired_test(qs, per_user[baseline], seed=seed)
                                        for name, qs in per_user.items() if name != baseline}
    out["per_user"] = {name: {f"{d}/{i}": v for (d, i), v in sorted(qs.items())} for name, qs in per_user.items()}
    return out


def pairwise_conditions(eval_records, summaries: dict[str, str] | None = None,
                        conditions: tuple[str, ...] = ("summary", "rag", "none")) -> dict[str, list[PairCase]]:
    """PairCases of every pair of every record (evaluate.EvalRecord: record.pairs, own = its
    retrieved profile texts) under each condition's generator prompt: summary =
    prompts.summary_answer(question, the user's summary) (only when `summaries` {key: text} is
    given; a record without a summary gets the no-summary placeholder), rag = prompts.rag(question,
    retrieved top-k), none = prompts.no_pers(question). Only the question, the summary and profile
    texts reach a prompt: never a persona, narrative or rubric."""
    from . import prompts

    builders = {"summary": lambda er: prompts.summary_answer(er.record.question, (summaries or {}).get(er.key, "")),
                "rag": lambda er: prompts.rag(er.record.question, er.own),
                "none": lambda er: prompts.no_pers(er.record.question)}
    out: dict[str, list[PairCase]] = {}
    for name in conditions:
        if name == "summary" and summaries is None:
            continue
        out[name] = [PairCase(er.domain, er.record.id, builders[name](er), p.chosen, p.rejected)
                     for er in eval_records for p in (getattr(er.record, "pairs", ()) or ())]
    return out
