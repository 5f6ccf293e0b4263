"""VAC logic: best-feedback selection (ties, all-equal, failed judge outputs), iteration chaining."""

import json
from pathlib import Path

from personal_nlf.config import Params
from personal_nlf.modes import IterationContext
from personal_nlf.modes.nlf import select_best


def test_best_revision_wins():
    s = select_best(0.4, [0.3, 0.9, 0.5])
    assert s["best_j"] == 1 and s["improved"] and not s["all_equal"]


def test_ties_go_to_the_first_sampled_feedback():
    assert select_best(0.2, [0.5, 0.7, 0.7, 0.1])["best_j"] == 1


def test_all_equal_picks_feedback_zero_and_is_not_an_improvement():
    s = select_best(0.5, [0.5, 0.5, 0.5])
    assert s["best_j"] == 0 and s["all_equal"] and not s["improved"]


def test_failed_judge_outputs_score_zero_and_lose():
    # The judge turns a failed output into score 0 (counted); such a revision never wins a tie
    # against a scored one, and an all-failed record does not count as improved.
    assert select_best(0.25, [0.0, 0.25, 0.0])["best_j"] == 1
    assert not select_best(0.25, [0.0, 0.0])["improved"]


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
    from personal_nlf.modes.offline_rl import best_and_worst

    s = best_and_worst([0.2, 0.8, 0.8, 0.2])
    assert (s["best_j"], s["worst_j"]) == (1, 3) and not s["all_equal"]
    assert s["mean_score"] == 0.5 and "improved" not in s  # no initial answer in offline RL


def test_offline_rl_all_equal_samples_give_no_dpo_pair():
    from personal_nlf.modes.offline_rl import best_and_worst

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
