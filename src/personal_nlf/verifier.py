"""Deterministic checks for rubric aspects that carry one (the `verifier` judge method).

An aspect may carry `check: {"type": ..., ...}`; `score(check, response)` returns 0, 1 or 2 on the
same scale as the LLM judge, with no model call. Types and their scoring rules:

- max_words {value}: 2 if 1 <= words <= value; 1 if words <= 1.25 * value; else 0.
- min_words {value}: 2 if words >= value; 1 if words >= 0.75 * value; else 0.
- list_form: 2 if >= 3 list lines (starting with -, *, •, or 1. / 1)); 1 if 2; else 0.
- prose_form: 2 if no list line and one paragraph; 1 if no list line but several paragraphs, or
  exactly one list line; 0 if >= 2 list lines.
- forbidden_terms {terms}: 2 if none of the terms occurs; 1 if exactly one distinct term; else 0.
- required_any {terms, min_count=1}: 2 if >= min_count distinct terms occur; 1 if some but fewer;
  else 0 (with min_count 1 there is no partial credit).
- max_grade_level {value}: Flesch-Kincaid grade (textstat; list lines count as sentences):
  2 if <= value; 1 if <= value + 2; else 0.

Words are runs of letters/digits (with inner ' or -); list markers are not words. Terms match
case-insensitively on word boundaries, with an optional plural "s"/"es". An empty (or
whitespace-only) response scores 0 on every check, so saying nothing never passes a length bound.
"""

from __future__ import annotations

import re
from typing import Any

WORD = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*")
LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+\S")

# type -> (required params, optional params)
CHECK_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "max_words": (("value",), ()),
    "min_words": (("value",), ()),
    "list_form": ((), ()),
    "prose_form": ((), ()),
    "forbidden_terms": (("terms",), ()),
    "required_any": (("terms",), ("min_count",)),
    "max_grade_level": (("value",), ()),
}


def validate_check(check: Any) -> str | None:
    """None when `check` is a usable check, else a one-line description of what is wrong."""
    if not isinstance(check, dict):
        return f"expected an object, got {type(check).__name__}"
    kind = check.get("type")
    if kind not in CHECK_TYPES:
        return f"unknown check type {kind!r} (known: {', '.join(CHECK_TYPES)})"
    required, optional = CHECK_TYPES[kind]
    extra = sorted(set(check) - {"type", *required, *optional})
    if extra:
        return f"check type {kind!r} takes no {extra}"
    for k in required:
        if k not in check:
            return f"check type {kind!r} needs '{k}'"
    if "value" in check:
        v = check["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            return f"'value' must be a positive number, got {v!r}"
    if "terms" in check:
        t = check["terms"]
        if not isinstance(t, list) or not t or not all(isinstance(s, str) and s.strip() for s in t):
            return "'terms' must be a non-empty list of non-empty strings"
    if "min_count" in check:
        m = check["min_count"]
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            return f"'min_count' must be a positive integer, got {m!r}"
    return None


def words(text: str) -> int:
    return len(WORD.findall(text or ""))


def list_lines(text: str) -> int:
    return sum(bool(LIST_LINE.match(ln)) for ln in (text or "").splitlines())


def paragraphs(text: str) -> int:
    return len([p for p in re.split(r"\n\s*\n", (text or "").strip()) if p.strip()])


def terms_found(text: str, terms: list[str]) -> list[str]:
    """The distinct terms that occur in text (case-insensitive, word boundaries, optional plural)."""
    low = (text or "").lower()
    found = []
    for t in terms:
        pat = r"(?<![A-Za-z0-9])" + re.escape(t.lower().strip()) + r"(?:s|es)?(?![A-Za-z0-9])"
        if re.search(pat, low):
            found.append(t)
    return found


def grade_level(text: str) -> float:
    """Flesch-Kincaid grade of text; each non-empty line is a sentence (lists have no periods)."""
    try:
        import textstat
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RuntimeError("the max_grade_level check needs the `textstat` package (pip install textstat)") from e
    lines = [_strip_marker(ln).strip() for ln in text.splitlines()]
    body = " ".join(ln if ln.endswith((".", "!", "?")) else ln + "." for ln in lines if ln)
    return float(textstat.flesch_kincaid_grade(body))


def _strip_marker(line: str) -> str:
    return re.sub(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+", "", line)


def evaluate(check: dict[str, Any], response: str) -> tuple[int, dict[str, Any]]:
    """(score 0/1/2, measured detail) of one response against one check."""
    problem = validate_check(check)
    if problem:
        raise ValueError(f"invalid check {check!r}: {problem}")
    kind = check["type"]
    text = response or ""
    if not text.strip():
        return 0, {"empty": True}
    if kind in ("max_words", "min_words"):
        n, v = words(text), check["value"]
        if kind == "max_words":
            s = 2 if 1 <= n <= v else 1 if n <= 1.25 * v else 0
        else:
            s = 2 if n >= v else 1 if n >= 0.75 * v else 0
        return s, {"words": n}
    if kind == "list_form":
        k = list_lines(text)
        return (2 if k >= 3 else 1 if k == 2 else 0), {"list_lines": k}
    if kind == "prose_form":
        k, p = list_lines(text), paragraphs(text)
        s = 0 if k >= 2 else 1 if (k == 1 or p > 1) else 2
        return s, {"list_lines": k, "paragraphs": p}
    if kind == "forbidden_terms":
        f = terms_found(text, check["terms"])
        return (2 if not f else 1 if len(f) == 1 else 0), {"found": f}
    if kind == "required_any":
        f, need = terms_found(text, check["terms"]), check.get("min_count", 1)
        return (2 if len(f) >= need else 1 if f else 0), {"found": f}
    if kind == "max_grade_level":
        g = grade_level(text)
        v = check["value"]
        return (2 if g <= v else 1 if g <= v + 2 else 0), {"grade": round(g, 2)}
    raise AssertionError(kind)  # validate_check rejects unknown types


def score(check: dict[str, Any], response: str) -> dict[str, Any]:
    """A judge result row for one checked aspect: score, outcome "verified", the check and detail."""
    s, detail = evaluate(check, response)
    return {"score": float(s), "outcome": "verified", "attempts": 0, "check": check["type"], "detail": detail}
