"""scripts/learning_probe.py's measurement: which target and which answers count per persona."""

import json
import shutil
from pathlib import Path

from conftest import load_script

learning_probe = load_script("learning_probe")

DOMAIN = "Art_and_Entertainment"
REPO = Path(__file__).resolve().parent.parent


def first_ids(split: str) -> dict[str, str]:
    """u1 / u2: the split's first list_brief+plain and prose_full+plain users of DOMAIN."""
    recs = json.loads((REPO / "data/persona" / DOMAIN / f"{split}.json").read_text())
    return {u: next(r["id"] for r in recs if r["persona"] == p)
            for u, p in (("u1", "list_brief+plain"), ("u2", "prose_full+plain"))}


def aspect(uid, candidate, check, score, list_lines):
    row = {"domain": DOMAIN, "id": uid, "aspect_index": 0 if check.endswith("form") else 1, "score": score,
           "check": check, "detail": {"list_lines": list_lines} if check.endswith("form") else {}}
    return row | ({"candidate": candidate} if candidate else {})


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_clone(tmp_path):
    """A clone with the real benchmark and params (personas are read through the data loader) and
    fabricated offline-RL outputs for two users per split: u1 a list persona, u2 a prose persona."""
    shutil.copytree(REPO / "data/persona", tmp_path / "data/persona")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    test, train = first_ids("test"), first_ids("train")
    # Test answers: RAG writes a list for the prose user only; the trained policy for the list user only.
    write_jsonl(tmp_path / "outputs/baselines/rag/judge_scores.jsonl",
                [aspect(test["u1"], None, "list_form", 0, 0), aspect(test["u1"], None, "max_words", 2, 0),
                 aspect(test["u2"], None, "prose_form", 0, 4), aspect(test["u2"], None, "min_words", 0, 0)])
    write_jsonl(tmp_path / "outputs/offline_rl/iter_1/evaluate/judge_scores.jsonl",
                [aspect(test["u1"], None, "list_form", 2, 5), aspect(test["u1"], None, "max_words", 2, 0),
                 aspect(test["u2"], None, "prose_form", 2, 0), aspect(test["u2"], None, "min_words", 2, 0)])
    # Targets: u1's best sample is s1 (a list; s0 is prose), u2's is s0 (prose; s1 a list).
    write_jsonl(tmp_path / "outputs/offline_rl/iter_1/judge/selection.jsonl",
                [{"key": f"{DOMAIN}/train/{train['u1']}", "best_j": 1, "best_score": 1.0, "mean_score": 0.5},
                 {"key": f"{DOMAIN}/train/{train['u2']}", "best_j": 0, "best_score": 0.5, "mean_score": 0.25}])
    write_jsonl(tmp_path / "outputs/offline_rl/iter_1/judge/judge_scores.jsonl",
                [aspect(train["u1"], "s0", "list_form", 0, 0), aspect(train["u1"], "s1", "list_form", 2, 3),
                 aspect(train["u2"], "s0", "prose_form", 2, 0), aspect(train["u2"], "s1", "prose_form", 0, 6)])
    (tmp_path / "outputs/offline_rl/iter_1/train_policy/train_stats.json").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "outputs/offline_rl/iter_1/train_policy/train_stats.json").write_text(
        json.dumps({"steps": 8, "first_loss": 2.0, "last_loss": 1.0}))
    return tmp_path


def test_measure_counts_the_selected_target_and_each_users_answer_by_persona(tmp_path):
    clone = fake_clone(tmp_path)
    m = learning_probe.measure(clone, learning_probe.personas(clone), seed=0)
    assert m["train_users"] == 2 and m["lora_steps"] == 8
    tg = m["targets"]
    assert tg["list_share_by_persona"] == {"list_brief+plain": 1.0, "prose_full+plain": 0.0}  # s1 for u1, s0 for u2
    assert tg["fits_every_check_by_persona"] == {"list_brief+plain": 1.0, "prose_full+plain": 0.0}
    assert tg["mean_best_score"] == 0.75 and tg["mean_sample_score"] == 0.375
    t = m["test"]
    assert t["rag_list_share_by_persona"] == {"list_brief+plain": 0.0, "prose_full+plain": 1.0}
    assert t["offline_rl_list_share_by_persona"] == {"list_brief+plain": 1.0, "prose_full+plain": 0.0}
    assert t["rag_by_persona"] == {"list_brief+plain": 0.5, "prose_full+plain": 0.0}
    assert t["offline_rl_by_persona"] == {"list_brief+plain": 1.0, "prose_full+plain": 1.0}
    assert t["n"] == 2 and t["permutation"]["diff"] == 0.75


def test_personalization_compares_the_same_policy_with_and_without_the_profile(tmp_path):
    clone = fake_clone(tmp_path)
    test = first_ids("test")
    rag_rows = [json.loads(line) for line in (clone / "outputs/offline_rl/iter_1/evaluate/judge_scores.jsonl")
                .read_text().splitlines()]  # both users fully fit: 1.0
    no_pers_rows = [aspect(test["u1"], None, "list_form", 2, 5), aspect(test["u1"], None, "max_words", 2, 0),
                    aspect(test["u2"], None, "prose_form", 0, 5), aspect(test["u2"], None, "min_words", 0, 0)]
    pa = {"conditions": {"rag": {"accuracy": 0.9, "n_users": 2, "n_pairs": 4},
                         "none": {"accuracy": 0.5, "n_users": 2, "n_pairs": 4}},
          "paired_vs_none": {"rag": {"n": 2, "diff": 0.4, "p_value": 0.5}}}
    p = learning_probe.personalization(rag_rows, no_pers_rows, {"pairwise_accuracy": pa}, seed=0)
    v = p["rag_vs_no_pers"]  # u1 1.0 both ways, u2 1.0 with the profile and 0.0 without
    assert (v["n"], v["a_macro"], v["b_macro"], v["permutation"]["diff"]) == (2, 1.0, 0.5, 0.5)
    assert p["pairwise"] == {"n_users": 2, "n_pairs": 4, "rag": 0.9, "none": 0.5, "diff": 0.4, "p_value": 0.5}


def test_untrained_reads_the_clones_two_baselines_and_rags_pairwise_accuracy(tmp_path):
    clone = fake_clone(tmp_path)
    test = first_ids("test")
    write_jsonl(clone / "outputs/baselines/no_pers/judge_scores.jsonl",  # RAG's u1 0.5, u2 0.0; these 0.0 and 0.0
                [aspect(test["u1"], None, "list_form", 0, 0), aspect(test["u1"], None, "max_words", 0, 0),
                 aspect(test["u2"], None, "prose_form", 0, 0), aspect(test["u2"], None, "min_words", 0, 0)])
    pa = {"conditions": {c: {"accuracy": 0.5, "n_users": 2, "n_pairs": 4} for c in ("rag", "none")},
          "paired_vs_none": {"rag": {"n": 2, "diff": 0.0, "p_value": 1.0}}}
    (clone / "metrics").mkdir()
    (clone / "metrics/rag.json").write_text(json.dumps({"pairwise_accuracy": pa}))
    v = learning_probe.untrained(clone, seed=0)["rag_vs_no_pers"]
    assert (v["a_macro"], v["b_macro"], v["permutation"]["diff"]) == (0.25, 0.0, 0.25)
