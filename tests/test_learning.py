"""A test that fails when learning breaks (issue 13, item 7).

One offline-RL-style iteration on a tiny slice of the controlled-persona benchmark (data/persona),
through the production pieces: candidates judged by the `verifier` judge (`judge.judge_answers`),
the best per user kept (`loop.select_best`), the policy LoRA-trained on them (`training.fit_and_export`,
TRL SFT) and scored by the evaluation path (`evaluate.evaluate_method`, RAG prompt, verifier judge).

The candidates are the benchmark's responses for the user's question (the one written for the user's
persona and two written for other personas) instead of N policy samples: the 135M policy's own samples
almost never hold the history-implied form, and sampling N of them is too slow for a test on this CPU.
The verifier picks the persona-fitting one, as a perfect rollout would give it.

The slice is 8 train users of one domain: 2 questions, each asked by one user of every persona, so
the question alone cannot tell which answer a user needs; only the profile can. Three policies
answer those 8 users (greedy, RAG prompt) and are scored by the verifier on their rubrics:
- start:    the untrained policy;
- trained:  SFT on (user's RAG prompt -> the verifier's best candidate for that user);
- shuffled: the same run, same prompts and the same set of targets, each target paired with another
            user's prompt (rag_random's seeded derangement, `retrieval.other_user`), so the
            target no longer follows from the profile.

The trained policy must beat its start and the shuffled run by a margin. A bug that trains on the
wrong targets, drops the profile from the prompt, trains nothing, or evaluates the base model instead
of the adapter fails here.

STATUS: at 96 LoRA steps (batch 2, lr 3e-3: 24 epochs over the 8 users) this test PASSES, measured on
this 2-core CPU on 2026-12-02 (a slow AVX2-only day), each run separately with these settings:
start 0.375, trained 1.000 (every user's own form; training loss 0.002), shuffled 0.458 (loss 0.006:
it fits its targets as well, and they are other users' forms). Each training run takes ~22 min
there, the whole test ~50 min, so `make test` leaves it out (marker `learning`; `make test-learning`).
Rerun 2026-12-05 on an AMD EPYC with AVX512-BF16 (bf16 inference, adapters served merged): passed,
the whole test 18.6 min. Rerun 2026-12-06 on a 2-core Intel Xeon with AMX-BF16 (bf16 inference):
start 0.417, trained 1.000, shuffled 0.458; passed, the whole test 16.6 min.
Shorter budgets do not separate the runs:
- 24 steps (5 min): start 0.375, trained 0.542, shuffled 0.458. Both reach a training loss near 0.1,
  yet greedy decoding gives every user of a question the same form (trained: lists for all 8,
  shuffled: prose for all 8): the policy learned question -> form, not profile -> form.
- 24 users of 3 domains, 24 steps of batch 4 at lr 1e-3, scored on 12 held-out users (12 min):
  start 0.403, trained 0.514, shuffled 0.444.
What the test shows at 96 steps: the pipeline trains on the verifier's choices and evaluates the
adapter, and the profile in the prompt is what tells the 4 users of a question apart (the users are
the training users: it measures fitting, not generalization to new users).
The project notes' probe that did learn the form (4/24 -> 24/24) had 3-line histories in which every
line implied one of two forms; here 3 of 8 profile items carry a style remark among 4 personas.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import load_script
from personal_nlf import evaluate, prompts, retrieval, training
from personal_nlf.config import Params
from personal_nlf.data import load_split

learning_probe = load_script("learning_probe")

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ["Art_and_Entertainment"]
USERS = 8  # 2 questions x 4 personas (train split, records 0-7: every rubric aspect carries a check)
SEED = 42
MIN_GAIN = 0.20  # trained - start
MIN_OVER_SHUFFLED = 0.15  # trained - shuffled


def params() -> Params:
    return Params.model_validate({
        "seed": SEED,
        "data": {"source": str(REPO / "data" / "persona"), "domains": DOMAINS},
        "models": {"policy": {"model": "embedded:smollm2-135m-instruct", "temperature": 0.0,
                              "max_new_tokens": 96, "batch_size": 12},
                   "judge": {"model": "embedded:smollm2-135m-instruct", "batch_size": 12}},
        "judge": {"method": "verifier", "fallback_method": "logprob"},
        "baselines": {"bootstrap_samples": 100},
        "train": {"objective": "sft", "learning_rate": 3e-3, "max_steps": 96, "per_device_batch_size": 2,
                  "gradient_accumulation_steps": 1, "save_steps": 96, "max_length": 768,
                  "select_on_validation": False},
        "tracking": {"enabled": False},
    })


def users() -> list[evaluate.EvalRecord]:
    """The first train-split records (question-major, persona-minor) with the whole profile as the
    retrieved context (8 items; the pipeline's k=10 keeps them all)."""
    out = []
    for d in DOMAINS:
        recs, _ = load_split(str(REPO / "data" / "persona"), d, "train", max_records=USERS)
        out.extend(evaluate.EvalRecord(d, "train", r, [p.text for p in r.profile], []) for r in recs)
    return out


def best_candidates(recs: list[evaluate.EvalRecord], p: Params) -> list[str]:
    """Per user, the verifier's best of the benchmark's three responses to its question
    (scripts/learning_probe.py's fitting_targets, which its persona-fitting probes train on)."""
    cands, rows, _, picks = learning_probe.fitting_targets(recs, p)
    # Every train-split aspect carries a check: the verifier never calls the (unused) backend.
    assert {r["outcome"] for r in rows} == {"verified"}
    return [cands[er.key][picks[er.key]["best_j"]] for er in recs]


def sft_rows(recs: list[evaluate.EvalRecord], targets: list[str]) -> list[dict]:
    return [training.sft_row(prompts.rag(er.record.question, er.own),
                             json.dumps({"personalized_answer": t}, ensure_ascii=False))
            for er, t in zip(recs, targets)]


def score(p: Params, recs, models_dir, out: Path, adapter: str | None) -> float:
    policy = p.models.policy.model_copy(update={"adapter": adapter})
    # Pairs left out: the pairwise-accuracy pass is not what this test measures.
    recs = [dataclasses.replace(er, record=dataclasses.replace(er.record, pairs=())) for er in recs]
    m = evaluate.evaluate_method("rag", p, out / "prepared", out / "index", models_dir, out / "eval",
                                 out / "metrics.json", policy=policy, split="train", records=recs)
    assert m["judge_outcomes"] == {"verified": 3 * len(recs)}
    return m["macro"]


def train(p: Params, rows, models_dir, out: Path) -> str:
    training.fit_and_export("sft", rows, p.models.policy, models_dir, p.train, out / "train",
                            work_dir=out / "work", seed=SEED)
    return json.loads((out / "train" / "state.json").read_text())["adapter"]


def assert_learns(p: Params, users, rows, shuffled_rows, models_dir, tmp: Path):
    """Score the untrained policy, the policy trained on `rows` and the one trained on
    `shuffled_rows` (same prompts, targets paired with the wrong users); the first training must
    beat its start and the shuffled control."""
    start = score(p, users, models_dir, tmp / "start", None)
    trained = score(p, users, models_dir, tmp / "trained", train(p, rows, models_dir, tmp / "trained"))
    shuffled = score(p, users, models_dir, tmp / "shuffled", train(p, shuffled_rows, models_dir, tmp / "shuffled"))
    print(f"\nverifier macro on the {len(users)} users: start {start:.3f}, trained {trained:.3f} "
          f"({trained - start:+.3f}), shuffled targets {shuffled:.3f} ({shuffled - start:+.3f})")
    assert trained - start >= MIN_GAIN, f"training on the verifier's best targets gained only {trained - start:+.3f}"
    assert trained - shuffled >= MIN_OVER_SHUFFLED, (
        f"trained {trained:.3f} is not above the shuffled-target run {shuffled:.3f} by {MIN_OVER_SHUFFLED}")


@pytest.mark.slow
@pytest.mark.learning
def test_training_on_verifier_best_targets_raises_the_score_and_shuffled_targets_do_not(tmp_path, embedded_models):
    p = params()
    train_users = users()
    assert len({er.record.persona for er in train_users}) == 4 and len({er.record.question for er in train_users}) == 2
    targets = best_candidates(train_users, p)
    # The verifier picks the response written for the user's own persona.
    assert targets == [er.record.pairs[0].chosen for er in train_users]
    rows = sft_rows(train_users, targets)
    shuffled_rows = sft_rows(train_users, [targets[j] for j in retrieval.other_user(len(targets), SEED)])
    # The control differs from the real run in the pairing only: same prompts, same target set.
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in shuffled_rows]
    assert sorted(json.dumps(r["completion"]) for r in rows) == sorted(json.dumps(r["completion"]) for r in shuffled_rows)

    assert_learns(p, train_users, rows, shuffled_rows, embedded_models, tmp_path)


# ---------------------------------------------------------------- the small version `make test` runs

# One question, two users of opposite personas: persona-ae-train-001 (a brief list, plain words) and
# -004 (full prose, expert terms). Each prompt holds the user's first three history lines that carry a
# remark after their question: the lines that imply the persona (the other lines are bare questions).
# The question cannot tell the two users apart; only the profile can. Measured on this 2-core CPU on
# 2026-12-02 (slow AVX2-only host): at SMALL_STEPS = 16, start 0.417, trained 1.000, shuffled 0.500
# (5.3 min, two trainings of ~2 min each); at 24 steps, trained 1.000 and shuffled 0.000 (training
# loss 0.001, token accuracy 1.0 from step 10 on). 2026-12-06, same host, lr 3e-3 with warmup_ratio 0
# (the test keeps the default 0.1: one warmup step at 16): at 10 steps start 0.417, trained 1.000,
# shuffled 0.500; at 8 steps trained 0.500 (gain +0.083, below MIN_GAIN). So 16 keeps a margin in
# steps, not only in score.
SMALL_USERS = ("persona-ae-train-001", "persona-ae-train-004")
SMALL_STEPS = 16


def remark_lines(record, n: int = 3) -> list[str]:
    """The user's first n history lines with a remark after the question (what implies the persona)."""
    return [p.text for p in record.profile if not p.text.rstrip().endswith("?")][:n]


@pytest.mark.slow
def test_small_two_users_one_question_training_follows_the_profile_and_shuffled_targets_do_not(
        tmp_path, embedded_models):
    """Issue 13, item 7, at the size `make test` can afford: the same pieces as the test above (the
    verifier's best candidate per user, `training.fit_and_export`, `evaluate.evaluate_method`), two
    users, SMALL_STEPS LoRA steps. The shuffled run trains each user's prompt on the other user's
    target."""
    p = params()
    p = p.model_copy(update={"train": p.train.model_copy(
        update={"max_steps": SMALL_STEPS, "save_steps": SMALL_STEPS, "max_length": 512})})
    recs, _ = load_split(str(REPO / "data" / "persona"), DOMAINS[0], "train", max_records=USERS)
    users = [evaluate.EvalRecord(DOMAINS[0], "train", r, remark_lines(r), []) for r in recs if r.id in SMALL_USERS]
    assert [u.record.id for u in users] == list(SMALL_USERS) and all(len(u.own) == 3 for u in users)
    assert len({u.record.question for u in users}) == 1 and len({u.record.persona for u in users}) == 2
    targets = best_candidates(users, p)
    assert targets == [u.record.pairs[0].chosen for u in users]
    rows = sft_rows(users, targets)
    shuffled_rows = sft_rows(users, targets[::-1])

    assert_learns(p, users, rows, shuffled_rows, embedded_models, tmp_path)
