"""Write the controlled-persona benchmark (data/persona/) from the text bank in persona_bank.py.

    python scripts/make_persona_benchmark.py [--out data/persona] [--seed 20261202]

Deterministic: the same seed and version write byte-identical files. LaMP-QA layout and schema
(<domain>/<split>.json with id, question, narrative, rubric_aspects, profile), plus two judge-only
fields: `persona` (the user's ground-truth persona id) and `pairs` (preference pairs). Every rubric
aspect that a machine can check carries `check` (personal_nlf.verifier). See data/persona/README.md.

A persona is a style (list_brief: a bulleted list of at most SHORT_MAX words; prose_full: one
paragraph of at least LONG_MIN words) crossed with a register (plain: none of the question's
technical terms, reading grade at most GRADE; expert: uses them). Every question is asked by one
user of each persona, so an answer that ignores the profile cannot fit all of them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from persona_bank import (
    BANK,
    NARRATIVE_REGISTER,
    NARRATIVE_STYLE,
    PAST_QUESTIONS,
    PROSE_CLOSERS,
    PROSE_LINKS,
    PROSE_OPENERS,
    REGISTER_HINTS,
    STYLE_HINTS,
    Q,
)

from personal_nlf import verifier

VERSION = "persona-v1"
SEED = 20261202
SHORT_MAX = 35   # words, list_brief
LONG_MIN = 55    # words, prose_full
GRADE = 8        # Flesch-Kincaid grade, plain
SPLITS = {"train": range(10), "validation": range(10, 12), "test": range(12, 22)}
STYLES = ("list_brief", "prose_full")
REGISTERS = ("plain", "expert")
PERSONAS = [f"{s}+{r}" for s in STYLES for r in REGISTERS]
ABBREV = {"Art_and_Entertainment": "ae", "Lifestyle_and_Personal_Development": "lp", "Society_and_Culture": "sc"}

DESCRIPTION = {
    "list_brief": f"wants a bulleted list of at most {SHORT_MAX} words",
    "prose_full": f"wants one paragraph of connected prose of at least {LONG_MIN} words",
    "plain": f"is a beginner: no technical terms, reading grade {GRADE} or lower",
    "expert": "is an expert: expects the field's technical terms",
}


def describe(persona: str) -> str:
    style, register = persona.split("+")
    return f"The user {DESCRIPTION[style]} and {DESCRIPTION[register]}."


# ---------------------------------------------------------------- responses (for preference pairs)


def render(q: Q, persona: str, rng: random.Random) -> str:
    style, register = persona.split("+")
    points = q.plain if register == "plain" else q.expert
    if style == "list_brief":
        return "\n".join(f"- {p}." for p in points)
    opener, closer = rng.choice(PROSE_OPENERS), rng.choice(PROSE_CLOSERS)
    links = rng.sample(PROSE_LINKS, 2)
    body = [opener, f"{points[0]}.", links[0], f"{points[1]}.", links[1], f"{points[2]}.", closer]
    return " ".join(body)


# ---------------------------------------------------------------- rubric


def aspects(q: Q, persona: str, narrative_parts: dict[str, str], split: str, unchecked: bool) -> list[dict]:
    style, register = persona.split("+")
    ev_style, ev_reg, ev_topic = narrative_parts["style"], narrative_parts["register"], narrative_parts["topic"]
    out = []
    if style == "list_brief":
        out.append({"aspect": "Bulleted list format", "reason": "They skim and asked for points, not paragraphs.",
                    "evidence": ev_style, "check": {"type": "list_form"}})
        out.append({"aspect": f"Brief: at most {SHORT_MAX} words", "reason": "They want only the essentials.",
                    "evidence": ev_style, "check": {"type": "max_words", "value": SHORT_MAX}})
    else:
        out.append({"aspect": "One paragraph of connected prose", "reason": "They asked for an explanation, not a list.",
                    "evidence": ev_style, "check": {"type": "prose_form"}})
        out.append({"aspect": f"Thorough: at least {LONG_MIN} words", "reason": "They want the full reasoning.",
                    "evidence": ev_style, "check": {"type": "min_words", "value": LONG_MIN}})
    if register == "plain":
        out.append({"aspect": "No technical jargon", "reason": "They are new to the field and lose track at its terms.",
                    "evidence": ev_reg, "check": {"type": "forbidden_terms", "terms": list(q.terms)}})
    else:
        out.append({"aspect": "Uses the field's technical vocabulary", "reason": "They know the field and expect its terms.",
                    "evidence": ev_reg, "check": {"type": "required_any", "terms": list(q.terms)}})
    if split == "train":
        return out  # LaMP-QA train records have about 3 aspects, validation/test about 5
    if register == "plain":
        out.append({"aspect": f"Easy reading level (grade {GRADE} or lower)", "reason": "They need everyday wording.",
                    "evidence": ev_reg, "check": {"type": "max_grade_level", "value": GRADE}})
    else:
        out.append({"aspect": "Precise terminology (two or more terms)", "reason": "Vague wording would not help an expert.",
                    "evidence": ev_reg, "check": {"type": "required_any", "terms": list(q.terms), "min_count": 2}})
    if unchecked:  # no machine check: the verifier sends it to the LLM judge (judge.fallback_method)
        out.append({"aspect": "Answers the actual question", "reason": "The answer must be useful for this task.",
                    "evidence": ev_topic})
    return out


# ---------------------------------------------------------------- users


def profile(domain: str, persona: str, rng: random.Random, rid: str) -> list[dict]:
    """8 earlier questions: 3 with a style hint, 3 with a register hint, 2 without a hint."""
    style, register = persona.split("+")
    past = rng.sample(PAST_QUESTIONS[domain], 8)
    hints = rng.sample(STYLE_HINTS[style], 3) + rng.sample(REGISTER_HINTS[register], 3) + ["", ""]
    rng.shuffle(hints)
    return [{"id": f"{rid}-p{j}", "text": f"{p} {h}".strip(), "category": domain} for j, (p, h) in enumerate(zip(past, hints))]


def record(domain: str, split: str, qi: int, q: Q, persona: str, n: int, rng: random.Random, unchecked: bool) -> dict:
    style, register = persona.split("+")
    rid = f"persona-{ABBREV[domain]}-{split}-{n:03d}"
    parts = {
        "topic": f"I'm asking because I want to know: {q.question[0].lower() + q.question[1:]}",
        "style": rng.choice(NARRATIVE_STYLE[style]).format(max_words=SHORT_MAX, min_words=LONG_MIN),
        "register": rng.choice(NARRATIVE_REGISTER[register]),
    }
    narrative = " ".join([parts["topic"], parts["style"], parts["register"]])
    other_style = f"{STYLES[1 - STYLES.index(style)]}+{register}"
    other_register = f"{style}+{REGISTERS[1 - REGISTERS.index(register)]}"
    chosen = render(q, persona, rng)
    pairs = [{"chosen": chosen, "rejected": render(q, other, rng), "chosen_persona": describe(persona),
              "rejected_persona": describe(other)} for other in (other_style, other_register)]
    return {"id": rid, "question": q.question, "narrative": narrative,
            "rubric_aspects": aspects(q, persona, parts, split, unchecked),
            "profile": profile(domain, persona, rng, rid), "persona": persona, "pairs": pairs}


def check_record(rec: dict) -> None:
    """The generator's own guarantees: the chosen response passes every check of the record,
    every rejected one fails at least one, and the narrative quotes every evidence."""
    checks = [a["check"] for a in rec["rubric_aspects"] if "check" in a]
    for a in rec["rubric_aspects"]:
        assert a["evidence"] in rec["narrative"], (rec["id"], a["evidence"])
    for pair in rec["pairs"]:
        got = [verifier.evaluate(c, pair["chosen"])[0] for c in checks]
        assert all(s == 2 for s in got), (rec["id"], "chosen fails", list(zip(checks, got)), pair["chosen"])
        bad = [verifier.evaluate(c, pair["rejected"])[0] for c in checks]
        assert any(s < 2 for s in bad), (rec["id"], "rejected passes every check", pair["rejected"])


def build(seed: int = SEED, unchecked: bool = True) -> dict[tuple[str, str], list[dict]]:
    out = {}
    for domain, bank in BANK.items():
        assert len(bank) == 22, (domain, len(bank))
        for split, idx in SPLITS.items():
            rng = random.Random(f"{seed}/{VERSION}/{domain}/{split}")
            recs = []
            # Question-major, persona-minor: any prefix of 4k records holds k questions x 4 personas
            # (so data.max_records_per_split slices stay balanced).
            for qi in idx:
                for persona in PERSONAS:
                    rec = record(domain, split, qi, bank[qi], persona, len(recs) + 1, rng, unchecked)
                    check_record(rec)
                    recs.append(rec)
            out[(domain, split)] = recs
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/persona")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-unchecked-aspect", action="store_true",
                    help="leave out the one aspect per val/test record that has no machine check")
    args = ap.parse_args(argv)
    data = build(args.seed, unchecked=not args.no_unchecked_aspect)
    for (domain, split), recs in data.items():
        path = Path(args.out) / domain / f"{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    meta = {"version": VERSION, "seed": args.seed, "short_max_words": SHORT_MAX, "long_min_words": LONG_MIN,
            "max_grade_level": GRADE, "personas": {p: describe(p) for p in PERSONAS},
            "unchecked_aspect": not args.no_unchecked_aspect,
            "counts": {f"{d}/{s}": len(r) for (d, s), r in data.items()}}
    (Path(args.out) / "manifest.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(meta["counts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
