"""The controlled-persona benchmark (data/persona, scripts/make_persona_benchmark.py): the committed
files are the generator's output, the pipeline's loader accepts them, every preference pair agrees
with the machine checks, profiles imply the persona, and the ground truth (persona, narrative,
rubric, pairs) never reaches a policy, planner, generator or summarizer prompt."""

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from personal_nlf import data, evaluate, prompts, verifier
from leakcheck import recording_pool
from personal_nlf.config import DOMAINS, SPLITS, Params

ROOT = Path(__file__).resolve().parents[1]
PERSONA = ROOT / "data" / "persona"
sys.path.insert(0, str(ROOT / "scripts"))
import make_persona_benchmark as gen
import persona_bank as bank


def load(domain, split):
    recs, _ = data.load_split(str(PERSONA), domain, split, require_rubric=True, max_item_chars=2000)
    return recs


ALL = {(d, s): load(d, s) for d in DOMAINS for s in SPLITS}


def test_committed_files_are_the_generators_output(tmp_path):
    assert gen.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    shipped = sorted(p.relative_to(PERSONA) for p in PERSONA.rglob("*.json"))
    assert written == shipped
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (PERSONA / rel).read_bytes(), rel


def test_sizes_balance_and_aspect_counts():
    n = {s: sum(len(ALL[(d, s)]) for d in DOMAINS) for s in SPLITS}
    assert n == {"train": 120, "validation": 24, "test": 120}
    for (d, s), recs in ALL.items():
        # Question-major, persona-minor: every prefix of 4 records holds each persona once.
        for i in range(0, len(recs), 4):
            assert sorted(r.persona for r in recs[i:i + 4]) == sorted(gen.PERSONAS), (d, s, i)
        assert len({r.question for r in recs}) == len(recs) // 4
        for r in recs:
            assert len(r.rubric_aspects) == (3 if s == "train" else 5)
            assert len(r.pairs) == 2 and len(r.profile) == 8
    # Topics never cross splits.
    for d in DOMAINS:
        qs = {s: {r.question for r in ALL[(d, s)]} for s in SPLITS}
        assert not (qs["train"] & qs["test"]) and not (qs["train"] & qs["validation"]) and not (qs["validation"] & qs["test"])


def test_pairs_agree_with_the_checks_and_the_contract():
    for recs in ALL.values():
        for r in recs:
            checks = [a.check for a in r.rubric_aspects if a.check]
            assert checks and all(verifier.validate_check(c) is None for c in checks)
            for p in r.pairs:
                assert p.chosen_persona == gen.describe(r.persona) and p.rejected_persona != p.chosen_persona
                assert all(verifier.evaluate(c, p.chosen)[0] == 2 for c in checks), (r.id, p.chosen)
                assert any(verifier.evaluate(c, p.rejected)[0] < 2 for c in checks), (r.id, p.rejected)
    raw = json.loads((PERSONA / DOMAINS[0] / "test.json").read_text())
    assert set(raw[0]["pairs"][0]) == {"chosen", "rejected", "chosen_persona", "rejected_persona"}


def test_no_fixed_answer_fits_every_user():
    """A perfect answer for one persona, given to every user of a question, scores at most ~0.6
    on the checked aspects: the benchmark rewards personalization, not a house style."""
    for d in DOMAINS:
        qs = {q.question: q for q in bank.BANK[d]}
        for fixed in gen.PERSONAS:
            scores = []
            for r in ALL[(d, "test")]:
                ans = gen.render(qs[r.question], fixed, __import__("random").Random(0))
                s = [verifier.evaluate(a.check, ans)[0] for a in r.rubric_aspects if a.check]
                scores.append(sum(s) / (2 * len(s)))
            assert sum(scores) / len(scores) <= 0.65, (d, fixed)


def test_profiles_imply_the_persona_without_stating_the_need():
    for recs in ALL.values():
        for r in recs:
            style, register = r.persona.split("+")
            texts = [p.text for p in r.profile]
            joined = "\n".join(texts)

            def hit(pool, joined=joined):
                return sum(h in joined for h in pool)

            assert hit(bank.STYLE_HINTS[style]) == 3 and hit(bank.REGISTER_HINTS[register]) == 3
            other_style = next(s for s in bank.STYLE_HINTS if s != style)
            other_reg = next(s for s in bank.REGISTER_HINTS if s != register)
            assert hit(bank.STYLE_HINTS[other_style]) == 0 and hit(bank.REGISTER_HINTS[other_reg]) == 0
            assert r.question not in " ".join(texts)


def test_prepared_frame_keeps_checks_persona_and_pairs():
    recs = ALL[(DOMAINS[1], "test")]
    back = data.frame_to_records(data.records_to_frame(recs, DOMAINS[1], "test"))
    assert back == recs and back[0].rubric_aspects[0].check and back[0].persona and back[0].pairs


def test_validation_names_a_bad_check_and_a_bad_pair():
    row = json.loads((PERSONA / DOMAINS[0] / "test.json").read_text())[0]
    row["rubric_aspects"][1]["check"] = {"type": "max_words"}
    row["pairs"][1]["rejected"] = row["pairs"][1]["chosen"] + " "  # the same text up to spaces
    row["persona"] = 3
    _, problems, _ = data.validate_rows([row], "f.json")
    text = "\n".join(problems)
    assert "field 'rubric_aspects[1].check': check type 'max_words' needs 'value'" in text
    assert "field 'pairs[1]': chosen and rejected are the same text" in text
    assert "field 'persona': expected a string, got int" in text


# ------------------------------------------------------------------ the ground truth never reaches a prompt


def secrets_of(r: data.Record) -> list[str]:
    """Strings only the judge and the training signal may see: the persona label and texts, the
    narrative's need sentences, every rubric field, and the pairs' responses."""
    need = [r.rubric_aspects[0].evidence, r.rubric_aspects[2].evidence]  # the style and register sentences
    out = [r.persona, r.narrative, *need, *(p.chosen_persona for p in r.pairs), *(p.rejected_persona for p in r.pairs),
           *(p.chosen for p in r.pairs), *(p.rejected for p in r.pairs)]
    for a in r.rubric_aspects:
        out += [a.aspect, a.reason, json.dumps(a.check) if a.check else ""]
    return [s for s in out if s]


def eval_records(split="test", n=8):
    out = []
    for d in DOMAINS:
        recs = ALL[(d, split)][:n]
        for i, r in enumerate(recs):
            other = recs[(i + 1) % len(recs)]
            out.append(evaluate.EvalRecord(d, split, r, [p.text for p in r.profile], [p.text for p in other.profile]))
    return out


def leaks(prompt_json: str, er: evaluate.EvalRecord) -> list[str]:
    return [s for s in secrets_of(er.record) if s in prompt_json]


def test_pairwise_accuracy_on_a_backend_without_likelihoods_is_refused_before_answering(tmp_path):
    """Records with preference pairs and an openai policy: a ConfigError before any model is
    loaded or answer generated (the pairwise pass would need the policy's log-likelihoods)."""
    from personal_nlf.config import ConfigError, RoleConfig, load_params

    params = load_params(ROOT / "params.yaml")
    policy = RoleConfig(backend="openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match=r"rag: the test records carry preference pairs.*openai backend cannot"):
        evaluate.evaluate_method("rag", params, None, "unused-index", None, tmp_path / "out", tmp_path / "m.json",
                                 policy=policy, records=eval_records(n=1))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("method", evaluate.METHODS)
def test_evaluation_prompts_never_carry_the_persona(method, tmp_path):
    ers, log = eval_records(), []
    params = Params.model_validate({"models": {r: {"model": r} for r in ("policy", "planner", "judge")}})
    summaries = {er.key: "The user likes short answers." for er in ers}
    evaluate.answer(method, ers, params, recording_pool(log)(), tmp_path, policy=params.models.policy, summaries=summaries)
    seen = [p for who, p in log if who in ("policy", "planner")]
    assert len(seen) == len(ers) * (2 if method == "planpers" else 1)
    for er in ers:
        mine = json.dumps([p for p in seen if er.record.question in json.dumps(p)])
        assert leaks(mine, er) == [], er.record.id
    # The same check sees the ground truth where it legitimately goes (the feedback model's prompt).
    er = ers[0]
    fb = json.dumps(prompts.feedback(er.record.question, er.own, er.record.narrative, "draft"))
    assert er.record.narrative in fb and er.record.rubric_aspects[0].evidence in fb


@pytest.mark.parametrize("condition", ["profile", "question", "retrieved"])
def test_summarizer_and_generator_prompts_never_carry_the_persona(condition):
    from personal_nlf.modes.summary import summarizer_prompt

    params = Params.model_validate({"summary": {"condition": condition}})
    for er in eval_records("train"):
        msgs, shown = summarizer_prompt(params, er, lambda text: len(text.split()))
        assert shown and leaks(json.dumps(msgs), er) == []
        gen_msgs = prompts.summary_answer(er.record.question, "The user skims and likes lists.")
        assert leaks(json.dumps(gen_msgs), er) == []


def test_vac_revision_prompt_never_carries_the_persona():
    for er in eval_records("train"):
        msgs = prompts.refine(er.record.question, er.own, "A first answer.", "Use bullet points.")
        assert leaks(json.dumps(msgs), er) == []
        assert leaks(json.dumps(prompts.rag(er.record.question, er.own)), er) == []
        assert leaks(json.dumps(prompts.no_pers(er.record.question)), er) == []


def test_persona_labels_are_not_words_a_profile_uses():
    texts = " ".join(p.text for recs in ALL.values() for r in recs for p in r.profile)
    for label in gen.PERSONAS:
        assert label not in texts
    assert Counter(r.persona for recs in ALL.values() for r in recs) == {p: 66 for p in gen.PERSONAS}
