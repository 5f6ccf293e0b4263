"""Per-user preference summaries (summary mode): what the summarizer reads, and the privacy guard
on what it writes.

- `select_profile`: profiles can be far longer than a small model's context; the project cuts them
  (TRL no longer truncates prompts) to a token budget, most recent items first, items kept whole.
- `scrub`: a summary is exported and sent to other models and APIs, so it must not carry raw
  profile text. Any run of SCRUB_NGRAM or more words copied from a profile item is replaced by
  "[...]" and counted; the generator, the exports and the logs only ever see scrubbed summaries.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .io import stable_hash

SCRUB_NGRAM = 6  # words: shorter shared runs are ordinary phrases ("the best way to learn")
SCRUB_MARK = "[...]"
_WORD = re.compile(r"\w+", re.UNICODE)


def select_profile(texts: list[str], count_tokens: Callable[[str], int], budget: int) -> list[str]:
    """Profile items to show the summarizer: the latest items (LaMP-QA profiles are in time
    order) that fit in `budget` tokens together, returned in their original order. An item
    longer than the whole budget is cut to fit when nothing else fits."""
    kept: list[str] = []
    used = 0
    for text in reversed(texts):
        n = count_tokens(text) + 2  # the "- " bullet and the blank line between items
        if used + n > budget:
            if not kept:
                # Keep a prefix of the latest item rather than show the summarizer nothing.
                ratio = budget / max(1, n)
                kept.append(text[: max(1, int(len(text) * ratio) - 1)])
            break
        kept.append(text)
        used += n
    return list(reversed(kept))


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def scrub(summary: str, profile_texts: list[str], n: int = SCRUB_NGRAM) -> tuple[str, int]:
    """(summary without copied profile text, number of spans replaced)."""
    grams = set()
    for t in profile_texts:
        w = [x[0] for x in _words(t)]
        grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    words = _words(summary)
    hit = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(x[0] for x in words[i:i + n]) in grams:
            for j in range(i, i + n):
                hit[j] = True
    if not any(hit):
        return summary, 0
    out, pos, spans, i = [], 0, 0, 0
    while i < len(words):
        if not hit[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(words) and hit[j + 1]:
            j += 1
        out.append(summary[pos:words[i][1]])
        out.append(SCRUB_MARK)
        pos = words[j][2]
        spans += 1
        i = j + 1
    out.append(summary[pos:])
    return "".join(out), spans


def profile_hash(profile_texts: list[str]) -> str:
    """Identifies the profile a summary came from without carrying any of its text."""
    return stable_hash({"profile": profile_texts}, n=32)
