"""VAC logic: best-feedback selection (ties, all-equal, failed judge outputs through the real judge
path), feedback <-> revision alignment, which records give phi and pi training targets, the
feedback temperature of policy training, iteration chaining. Models are faked; the code under
test (modes/nlf.py, modes/loop.py, judge.py) is the production code."""

import json
import re
from pathlib import Path

import pytest

from personal_nlf import evaluate
from personal_nlf.config import Params
from personal_nlf.data import Aspect, Record
from personal_nlf.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from personal_nlf.llm.base import Backend, Generation
from personal_nlf.modes import IterationContext, nlf
from personal_nlf.modes.nlf import select_best


def test_best_revision_wins():
    s = select_best(0.4, [0.3, 0.9, 0.5])
    assert s["best_j"] == 1 and s["improved"] and not s["all_equal"]


def test_ties_go_to_the_first_sampled_feedback():
    assert select_best(0.2, [0.5, 0.7, 0.7, 0.1])["best_j"] == 1


def test_all_equal_picks_feedback_zero_and_is_not_an_improvement():
    s = select_best(0.5, [0.5, 0.5, 0.5])
    assert s["best_j"] == 0 and s["all_equal"] and not s["improved"]




def ctx(tmp_path, t, prev):
    return IterationContext(Params(), t, prev, tmp_path, tmp_path, tmp_path, tmp_path)


def test_iteration_t_loads_iteration_t_minus_1_adapters(tmp_path):
    for t, adapter in (("0", None), ("1", "outputs/nlf/iter_1/train_policy/adapter")):
        for which in ("policy", "feedback"):
            d = tmp_path / f"iter_{t}" / f"train_{which}"
            d.mkdir(parents=True)
            (d / "state.json").write_text(json.dumps({"adapter": adapter and adapter.replace("policy", which)}))
    assert ctx(tmp_path, "1", "0").adapter("policy") is None
    c2 = ctx(tmp_path, "2", "1")
    assert c2.adapter("policy") == "outputs/nlf/iter_1/train_policy/adapter"
    assert c2.adapter("feedback") == "outputs/nlf/iter_1/train_feedback/adapter"
    assert c2.role("policy", c2.adapter("policy")).adapter.endswith("train_policy/adapter")


def test_per_iteration_training_overrides():
    p = Params.model_validate({"train": {"learning_rate": 1e-4, "max_steps": 10},
                               "nlf": {"iterations": {"1": {"prev": "0"}, "2": {"prev": "1", "max_steps": 3}}}})
    assert IterationContext(p, "1", "0", Path("."), Path("."), Path("."), Path(".")).train_config().max_steps == 10
    c = IterationContext(p, "2", "1", Path("."), Path("."), Path("."), Path(".")).train_config()
    assert c.max_steps == 3 and c.learning_rate == 1e-4


# ---------------------------------------------------------------- offline-RL baseline


def test_offline_rl_best_first_worst_last_on_ties():
    from personal_nlf.modes.loop import best_and_worst

    s = best_and_worst([0.2, 0.8, 0.8, 0.2])
    assert (s["best_j"], s["worst_j"]) == (1, 3) and not s["all_equal"]
    assert s["mean_score"] == 0.5 and "improved" not in s  # no initial answer in offline RL


def test_offline_rl_all_equal_samples_give_no_dpo_pair():
    from personal_nlf.modes.loop import best_and_worst

    s = best_and_worst([0.0, 0.0, 0.0])  # e.g. every judge output failed: all scored 0
    assert s["all_equal"] and s["best_j"] == 0 and s["worst_j"] == 2


def test_no_training_examples_carries_the_policy_over(tmp_path):
    from personal_nlf.modes.loop import fit_policy

    d = tmp_path / "iter_1" / "train_policy"
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"adapter": "outputs/offline_rl/iter_1/train_policy/adapter"}))
    c = IterationContext(Params(), "2", "1", tmp_path, tmp_path, tmp_path, tmp_path, loop="offline_rl")
    out = tmp_path / "iter_2" / "train_policy"
    assert fit_policy(c, "dpo", [], out) == {"examples": 0, "skipped": 1}
    state = json.loads((out / "state.json").read_text())
    assert state["adapter"] == "outputs/offline_rl/iter_1/train_policy/adapter" and "no dpo" in state["skipped"]


# ---------------------------------------------------------------- VAC steps with fake models



class ScriptedJudge(Backend):
    """The judge's raw output depends on the response it reads: GOOD -> 2, OK -> 1, anything
    else -> prose without JSON (unparseable at every retry temperature)."""

    name = "scripted"

    def generate(self, prompts_, sampling):
        out = []
        for p in prompts_:
            response = p[-1]["content"].split("Response:\n")[1].split("\n\nAspect to check")[0]
            text = {"GOOD": '{"match_score": 2}', "OK": '{"match_score": 1}'}.get(response, "It reads fine to me.")
            out.append([Generation(text, 10, 5, 0.01)])
        return out

    def describe(self):
        return {"backend": "scripted-judge"}


class FakePool:
    def __init__(self, *a, **k):
        pass

    def get(self, role):
        return ScriptedJudge()

    def keep_only(self, roles):
        pass

    def close(self):
        pass


def eval_record(rid):
    rec = Record(rid, f"Question {rid}?", f"narrative {rid}", (Aspect("aspect", "reason", "evidence"),), ())
    return evaluate.EvalRecord("Art_and_Entertainment", "train", rec, [f"profile {rid}"], [])


def vac_ctx(tmp_path, recs, monkeypatch, **params):
    monkeypatch.setattr(nlf, "train_records", lambda ctx: recs)
    monkeypatch.setattr(evaluate, "BackendPool", FakePool)
    p = Params.model_validate({"judge": {"method": "generate", "retry_temperatures": [0.0, 0.5]}, **params})
    return IterationContext(p, "1", "0", tmp_path, tmp_path, tmp_path, tmp_path)


def write_iteration(c, recs, initial, revisions):
    """rollout answers, N feedbacks per record and the revision written with each (j-th with j-th)."""
    write_jsonl_atomic(c.dir("rollout") / "answers.jsonl",
                       [{"key": er.key, "answer": initial[er.record.id]} for er in recs])
    write_jsonl_atomic(c.dir("signal") / "feedback.jsonl",
                       [{"key": er.key, "j": j, "feedback": f"fb-{er.record.id}-{j}"}
                        for er in recs for j in range(len(revisions[er.record.id]))])
    write_jsonl_atomic(c.dir("refine") / "revisions.jsonl",
                       [{"key": er.key, "j": j, "feedback": f"fb-{er.record.id}-{j}", "answer": a}
                        for er in recs for j, a in enumerate(revisions[er.record.id])])
    for which in ("policy", "feedback"):
        write_json_atomic(c.dir(f"train_{which}", "0") / "state.json", {"adapter": None})


def test_failed_judge_outputs_are_counted_score_zero_and_lose(tmp_path, monkeypatch):
    recs = [eval_record(r) for r in ("a", "b", "c")]
    c = vac_ctx(tmp_path, recs, monkeypatch, nlf={"n_feedback": 3})
    write_iteration(c, recs, initial={"a": "OK", "b": "OK", "c": "BROKEN"},
                    revisions={"a": ["BROKEN", "OK", "BROKEN"], "b": ["BROKEN"] * 3, "c": ["OK", "GOOD", "GOOD"]})
    summary = nlf.judge(c)
    # 6 unparseable outputs, each retried at both temperatures, counted by reason, scored 0.
    assert summary["judge_outcomes"] == {"failed:not_json": 6, "ok": 6}
    scores = read_jsonl(c.dir("judge") / "judge_scores.jsonl")
    assert {(r["candidate"], r["score"], r["attempts"]) for r in scores if r["key"].endswith("/b")} == \
        {("initial", 1.0, 1), *((f"rev{j}", 0.0, 2) for j in range(3))}
    sel = {s["key"].split("/")[-1]: s for s in read_jsonl(c.dir("judge") / "selection.jsonl")}
    # a: the one scored revision beats the failed ones but only ties the initial answer.
    assert (sel["a"]["best_j"], sel["a"]["improved"], sel["a"]["all_equal"]) == (1, False, False)
    # b: every revision failed -> all tied at 0, not an improvement.
    assert (sel["b"]["best_j"], sel["b"]["improved"], sel["b"]["all_equal"]) == (0, False, True)
    # c: ties between the two GOOD revisions go to the first sampled.
    assert (sel["c"]["best_j"], sel["c"]["best_score"], sel["c"]["improved"]) == (1, 1.0, True)
    # Alignment: the selected feedback is the one the best revision was written with.
    assert [sel[r]["feedback"] for r in "abc"] == ["fb-a-1", "fb-b-0", "fb-c-1"]
    assert summary["share_best_beats_initial"] == round(1 / 3, 4) and summary["share_all_equal"] == round(1 / 3, 4)


@pytest.mark.parametrize("rule, kept, dropped", [
    ("best", ["a", "c"], {"dropped_all_tied": 1}),
    ("improved_only", ["c"], {"dropped_all_tied": 1, "dropped_not_improved": 1}),
])
def test_feedback_targets_follow_the_rule_and_drops_are_counted(tmp_path, monkeypatch, rule, kept, dropped):
    recs = [eval_record(r) for r in ("a", "b", "c")]
    c = vac_ctx(tmp_path, recs, monkeypatch, nlf={"n_feedback": 3, "feedback_target": rule})
    write_iteration(c, recs, initial={"a": "OK", "b": "OK", "c": "BROKEN"},
                    revisions={"a": ["BROKEN", "OK", "BROKEN"], "b": ["BROKEN"] * 3, "c": ["OK", "GOOD", "GOOD"]})
    nlf.judge(c)
    seen = {}
    monkeypatch.setattr(nlf, "fit_last", lambda ctx, step, obj, rows, *a, **k: seen.setdefault("rows", rows) and {})
    res = nlf.train_feedback(c)
    targets = [r["completion"][0]["content"] for r in seen["rows"]]
    assert targets == [f"fb-{r}-1" for r in kept]  # the feedback of the best revision, never of a tie
    prompts_seen = [r["prompt"][-1]["content"] for r in seen["rows"]]
    assert all(f"narrative {r}" in p for r, p in zip(kept, prompts_seen))  # phi's own prompt of that record
    assert res == {"targets": len(kept), **dropped}
    assert json.loads((c.dir("train_feedback") / "targets.json").read_text()) == {"rule": rule, **res}


def test_one_feedback_cannot_tie_with_itself():
    sel = {"all_equal": True, "improved": False, "feedback": "x"}
    assert nlf.feedback_target_dropped(sel, "best", n_feedback=1) is None
    assert nlf.feedback_target_dropped(sel, "improved_only", n_feedback=1) == "not_improved"
    assert nlf.feedback_target_dropped({**sel, "all_equal": False, "feedback": ""}, "best", 3) == "empty_feedback"


def fake_run_role(calls, revision_for):
    """feedback role: 'fb:<record id>'; policy role: revision_for(feedback text read from the
    refine prompt). Records each call's role, keys and temperature."""

    def run_role(ctx, pool, role_name, adapter, items, step, name, n=1, temperature=None):
        calls.append({"role": role_name, "keys": [k for k, _ in items], "temperature": temperature, "n": n})
        out = {}
        for key, msgs in items:
            if role_name == "feedback":
                text = "fb:" + key.split("/")[-1]
            else:
                fb = re.search(r"Feedback on it:\n(.*)\n\nRewrite", msgs[-1]["content"], re.DOTALL).group(1)
                text = revision_for(fb)
            out[key] = {"texts": [text], "latency_s": 0.0}
        return out

    return run_role


def test_each_revision_is_written_with_its_own_feedback(tmp_path, monkeypatch):
    recs = [eval_record(r) for r in ("a", "b")]
    calls = []
    monkeypatch.setattr(nlf, "run_role", fake_run_role(calls, lambda fb: json.dumps({"personalized_answer": f"used {fb}"})))
    answers = {er.key: {"answer": f"draft {er.record.id}"} for er in recs}
    # Feedback rows in an order that differs from both record and j order.
    rows = [{"key": recs[1].key, "j": 2, "feedback": "b2"}, {"key": recs[0].key, "j": 0, "feedback": "a0"},
            {"key": recs[1].key, "j": 0, "feedback": "b0"}, {"key": recs[0].key, "j": 1, "feedback": "a1"}]
    out = nlf._revise(Params(), None, recs, answers, rows, "refine", None)
    assert [(r["key"], r["j"], r["feedback"], r["answer"]) for r in out] == \
        [(r["key"], r["j"], r["feedback"], f"used {r['feedback']}") for r in rows]
    assert calls[0]["keys"] == [f"{r['key']}#{r['j']}" for r in rows]


def policy_ctx(tmp_path, monkeypatch, recs, revision_for, **params):
    c = vac_ctx(tmp_path, recs, monkeypatch, **params)
    write_iteration(c, recs, initial={er.record.id: f"draft {er.record.id}" for er in recs},
                    revisions={er.record.id: [] for er in recs})
    write_json_atomic(c.dir("train_feedback") / "state.json", {"adapter": "phi_1"})
    calls, seen = [], {}
    monkeypatch.setattr(nlf, "run_role", fake_run_role(calls, revision_for))
    monkeypatch.setattr(nlf, "fit_policy", lambda ctx, objective, rows, out: seen.update(rows=rows) or {"examples": len(rows)})
    return c, calls, seen


def revision_by_record(fb):
    # a: a proper revision; b: empty; c: no answer JSON (chatter); d: truncated JSON (kept)
    rid = fb.split(":")[1]
    return {"a": json.dumps({"personalized_answer": f"revised with {fb}"}), "b": "",
            "c": "Sure! I will rewrite it.", "d": '{"personalized_answer": "cut sho'}[rid]


def test_policy_targets_drop_empty_and_unformatted_revisions(tmp_path, monkeypatch):
    recs = [eval_record(r) for r in "abcd"]
    c, calls, seen = policy_ctx(tmp_path, monkeypatch, recs, revision_by_record)
    res = nlf.train_policy(c)
    targets = [json.loads(r["completion"][0]["content"])["personalized_answer"] for r in seen["rows"]]
    assert targets == ["revised with fb:a", "cut sho"]
    assert res == {"examples": 2, "targets": 2, "dropped_revision_empty": 1, "dropped_revision_raw": 1}
    data = {d["key"].split("/")[-1]: d for d in read_jsonl(c.dir("train_policy") / "policy_data.jsonl")}
    assert {k: d["dropped"] for k, d in data.items()} == {"a": None, "b": "revision_empty", "c": "revision_raw", "d": None}
    assert data["a"]["feedback"] == "fb:a"  # the record's own feedback, stored with its revision
    # Policy data: phi(t) writes one feedback per record, greedy like the policy at inference.
    fb_call, rev_call = calls
    assert (fb_call["role"], fb_call["n"], fb_call["temperature"]) == ("feedback", 1, 0.0)
    assert rev_call["keys"] == [f"{er.key}#0" for er in recs]


def test_policy_feedback_temperature_is_a_param(tmp_path, monkeypatch):
    recs = [eval_record("a")]
    c, calls, _ = policy_ctx(tmp_path, monkeypatch, recs, revision_by_record, nlf={"policy_feedback_temperature": 0.1})
    nlf.train_policy(c)
    assert calls[0]["temperature"] == 0.1


def test_dpo_pairs_only_where_the_judge_prefers_the_revision(tmp_path, monkeypatch):
    recs = [eval_record(r) for r in "aef"]
    revs = {"a": "GOOD", "e": "OK", "f": "draft f"}  # f: the revision repeats the initial answer
    c, _, seen = policy_ctx(tmp_path, monkeypatch, recs,
                            lambda fb: json.dumps({"personalized_answer": revs[fb.split(":")[1]]}),
                            train={"objective": "dpo"})
    # The judge step scored every initial answer 1 of 2.
    write_jsonl_atomic(c.dir("judge") / "selection.jsonl", [{"key": er.key, "initial_score": 0.5} for er in recs])
    res = nlf.train_policy(c)
    assert [json.loads(r["chosen"][0]["content"])["personalized_answer"] for r in seen["rows"]] == ["GOOD"]
    assert [json.loads(r["rejected"][0]["content"])["personalized_answer"] for r in seen["rows"]] == ["draft a"]
    assert res == {"examples": 1, "targets": 1, "dropped_revision_not_better": 1, "dropped_revision_same_as_initial": 1}
    judged = read_jsonl(c.dir("train_policy") / "judge_scores.jsonl")
    assert sorted(r["key"].split("/")[-1] for r in judged) == ["a", "e"]  # identical pair never judged


# ------------------------------------------------------------------ checkpoint selection


@pytest.mark.parametrize("scores, want", [
    ({2: 0.30, 4: 0.25, 6: 0.28}, "checkpoint-2"),   # the best validation macro
    ({2: 0.30, 4: 0.30, 6: 0.10}, "checkpoint-4"),   # a tie goes to the later checkpoint
    ({2: 0.10, 4: 0.20, 6: 0.30}, "checkpoint-6"),
])
def test_select_checkpoint_picks_the_best_validation_macro(tmp_path, monkeypatch, scores, want):
    from personal_nlf.modes import loop

    for step in scores:
        (tmp_path / f"checkpoint-{step}").mkdir()
    evaluated = []

    def fake_evaluate(method, params, prepared, index, models_dir, out_dir, metrics_path, policy=None, split=None, **_):
        evaluated.append((method, split, Path(policy.adapter).name))
        return {"macro": scores[int(Path(policy.adapter).name.split("-")[1])]}

    monkeypatch.setattr(evaluate, "evaluate_method", fake_evaluate)
    c = ctx(tmp_path, "1", "0")
    best, info = loop.select_checkpoint(c, tmp_path, c.train_config())
    assert best.name == want and info["selected_by"] == "validation_macro"
    assert info["scores"] == {f"checkpoint-{k}": v for k, v in scores.items()}
    # Every checkpoint answered the validation split alone with the RAG prompt (as at evaluation).
    assert evaluated == [("rag", "validation", f"checkpoint-{k}") for k in sorted(scores)]
    off = c.train_config().model_copy(update={"select_on_validation": False})
    assert loop.select_checkpoint(c, tmp_path, off) == (tmp_path / "checkpoint-6", {"selected_by": "last"})
