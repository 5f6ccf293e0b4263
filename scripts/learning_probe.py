"""benchmarks/learning_probes/: does offline RL beat its untrained start with more budget?

    python scripts/learning_probe.py --in CLONE [--setting NAME ...] [--machine TEXT]

Issue 13 asks for the smallest change that makes a trained loop beat its untrained start on the
controlled-persona benchmark, measured. This script measures candidates on the real pipeline.
CLONE is a clone where the committed default run finished (`make repro`, or
`scripts/results_runs.py run persona --in CLONE`), at a revision whose pipeline (src/, stages/,
dvc.yaml, params.yaml, data/) is HEAD's; the script refuses any other. For each setting (SETTINGS
below) it restores the clone's params.yaml and runs
`dvc exp run offline_rl_evaluate@1 baseline_rag -S ...`. DVC reruns offline RL's first iteration
(rollout of N samples per train user, verifier judge, best-of-N LoRA SFT, evaluation on the test
split) and restores the rest from its cache, including the RAG baseline that the iteration starts
from, unless the setting changes the data.

PERSONA_FITTING settings are not pipeline settings: after `dvc exp run baseline_rag baseline_no_pers
-S ...` they run offline RL's selection, training and evaluation code in this process, with the
benchmark's responses as candidates instead of N policy samples (persona_fitting_run), so that every
target fits its user. They also measure issue 13's other two comparisons, for the untrained and the
trained policy alike: the verifier score with the retrieved profile against without it, and the
pairwise preference accuracy under each prompt (personalization). BASELINES settings measure only the
untrained policy's, on another number of test questions (`dvc exp run baseline_no_pers baseline_rag -S ...`).

It writes benchmarks/learning_probes/<clone revision>.json (with --setting, the named settings
replace or join those already recorded there; each keeps its own date and command). For each setting the record holds
offline_rl@1 against RAG with the report's paired tests (sign-flip permutation and t-test on the
same test questions), and the training targets' verifier scores. Both are also given per ground-truth
persona, with the share of answers and targets that are bulleted lists. The personas are read
here, for analysis only; no prompt sees them. `scripts/readme_results.py` tabulates the newest
record in the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from personal_nlf import metrics  # noqa: E402
from personal_nlf.config import load_params  # noqa: E402
from personal_nlf.data import load_split  # noqa: E402
from personal_nlf.io import read_jsonl  # noqa: E402

OUT = ROOT / "benchmarks" / "learning_probes"
# name -> `-S` overrides of params.yaml. N is nlf.n_feedback (offline RL uses VAC's N); train users
# per domain nlf.max_train_records_per_domain.
SETTINGS = {
    "default": [],
    "users24_steps32": ["nlf.max_train_records_per_domain=8", "train.max_steps=32"],
    "users48_steps96": ["nlf.max_train_records_per_domain=16", "train.max_steps=96"],
    "t0.7_n8_users24_steps48": ["offline_rl.temperature=0.7", "nlf.n_feedback=8",
                                "nlf.max_train_records_per_domain=8", "train.max_steps=48"],
    "t0.7_n8_users48_steps96": ["offline_rl.temperature=0.7", "nlf.n_feedback=8",
                                "nlf.max_train_records_per_domain=16", "train.max_steps=96"],
    # Every record of the benchmark: 120 train users, and 120 test questions instead of 48.
    "t0.7_n8_all_records_steps240": ["offline_rl.temperature=0.7", "nlf.n_feedback=8", "data.max_records_per_split=null",
                                     "nlf.max_train_records_per_domain=null", "train.max_steps=240"],
}
# name -> (`-S` overrides, LoRA settings): offline RL's first iteration with persona-fitting targets
# (persona_fitting_run), on the data of the overrides.
PERSONA_FITTING = {
    "fitting_targets_all_records_steps240": (["data.max_records_per_split=null"],
                                             {"max_steps": 240, "learning_rate": 1e-3}),
    "fitting_targets_all_records_steps240_lr3e-3": (["data.max_records_per_split=null"],
                                                    {"max_steps": 240, "learning_rate": 3e-3}),
    "fitting_targets_all_records_steps480_lr3e-3": (["data.max_records_per_split=null"],
                                                    {"max_steps": 480, "learning_rate": 3e-3}),
}
# name -> `-S` overrides: the untrained policy with and without the retrieved profile only (no
# training), on another number of test questions.
BASELINES = {"baselines_records32": ["data.max_records_per_split=32"]}  # 96 questions: the default's 48 doubled
PIPELINE_PATHS = ["src", "stages", "dvc.yaml", "params.yaml", "data", "configs"]
LIST_LINES = 3  # verifier.py's list_form: full marks from 3 list lines


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def clone_revision(clone: Path) -> str:
    """The clone's revision; refused unless its pipeline is HEAD's (its results stand for HEAD)."""
    rev = git(clone, "rev-parse", "HEAD")
    changed = git(ROOT, "diff", "--name-only", rev, "HEAD", "--", *PIPELINE_PATHS)
    if changed:
        raise SystemExit(f"{clone} is at {rev[:7]}, whose pipeline differs from HEAD's: {changed.split()}")
    return rev


def personas(clone: Path) -> dict[tuple[str, str], str]:
    """(domain, record id) -> ground-truth persona id, read with the project's loader from the
    clone's benchmark (analysis only)."""
    source = str(clone / "data/persona")
    return {(domain, rec.id): rec.persona for domain in load_params(clone / "params.yaml").data.domains
            for split in ("train", "test") for rec in load_split(source, domain, split)[0]}


def is_list(row: dict) -> bool | None:
    """Whether a judged answer is a bulleted list, from its list_form / prose_form check's detail."""
    if row.get("check") in ("list_form", "prose_form"):
        return row["detail"]["list_lines"] >= LIST_LINES
    return None


def by_persona(values: dict[tuple[str, str], float], persona: dict) -> dict[str, float]:
    groups = defaultdict(list)
    for key, v in values.items():
        groups[persona[key]].append(v)
    return {p: round(sum(v) / len(v), 3) for p, v in sorted(groups.items())}


def list_share(rows: list[dict], persona: dict, candidate: dict[tuple[str, str], str] | None = None) -> dict[str, float]:
    """Per persona, the share of answers (or of each record's `candidate`) that are lists."""
    lists = {}
    for r in rows:
        key = (r["domain"], r["id"])
        if candidate is not None and r.get("candidate") != candidate.get(key):
            continue
        if (flag := is_list(r)) is not None:
            lists[key] = float(flag)
    return by_persona(lists, persona)


def targets_summary(best: dict, sample_means: list[float], judged: list[dict], chosen: dict, persona: dict) -> dict:
    """The training targets: best[key] the target's score, chosen[key] its candidate in `judged`."""
    return {"mean_best_score": round(sum(best.values()) / len(best), 4),
            "mean_sample_score": round(sum(sample_means) / len(sample_means), 4),
            "best_score_by_persona": by_persona(best, persona),
            "fits_every_check_by_persona": by_persona({k: float(v == 1.0) for k, v in best.items()}, persona),
            "list_share_by_persona": list_share(judged, persona, chosen)}


def paired(a_rows: list[dict], b_rows: list[dict], seed: int) -> dict:
    """Method a against method b on the test questions both answered: macro means and the report's
    paired tests (sign-flip permutation, with params.yaml's seed as the report uses, and t-test)."""
    a, b = metrics.question_scores(a_rows), metrics.question_scores(b_rows)
    return {"n": len(set(a) & set(b)),
            "a_macro": metrics.summarize(a, seed=seed)["macro"], "b_macro": metrics.summarize(b, seed=seed)["macro"],
            "permutation": metrics.paired_test(a, b, seed=seed), "t_test": metrics.paired_t_test(a, b)["macro"]}


def compare(rag_rows: list[dict], trained_rows: list[dict], persona: dict, seed: int) -> dict:
    """The trained policy against its RAG start, also per persona."""
    p = paired(trained_rows, rag_rows, seed)
    return {"n": p["n"], "rag_macro": p["b_macro"], "offline_rl_macro": p["a_macro"],
            "permutation": p["permutation"], "t_test": p["t_test"],
            "rag_by_persona": by_persona(metrics.question_scores(rag_rows), persona),
            "offline_rl_by_persona": by_persona(metrics.question_scores(trained_rows), persona),
            "rag_list_share_by_persona": list_share(rag_rows, persona),
            "offline_rl_list_share_by_persona": list_share(trained_rows, persona)}


def pairwise(metrics_json: dict) -> dict:
    """A RAG evaluation's pairwise preference accuracy: under the retrieved profile, under no
    personalization, and the paired sign-flip test over users between the two."""
    pa = metrics_json["pairwise_accuracy"]
    c, test = pa["conditions"], pa["paired_vs_none"]["rag"]
    return {"n_users": c["rag"]["n_users"], "n_pairs": c["rag"]["n_pairs"], "rag": c["rag"]["accuracy"],
            "none": c["none"]["accuracy"], "diff": test["diff"], "p_value": test["p_value"]}


def personalization(rag_rows, no_pers_rows, rag_metrics: dict, seed: int) -> dict:
    """The two comparisons of issue 13 that hold the policy fixed and vary its prompt: the verifier
    score with the retrieved profile (rag) against without it (no_pers), and the pairwise preference
    accuracy under each."""
    return {"rag_vs_no_pers": paired(rag_rows, no_pers_rows, seed), "pairwise": pairwise(rag_metrics)}


def untrained(clone: Path, seed: int) -> dict:
    """personalization() of the untrained policy: the clone's RAG and no-personalization baselines."""
    return personalization(read_jsonl(clone / "outputs/baselines/rag/judge_scores.jsonl"),
                           read_jsonl(clone / "outputs/baselines/no_pers/judge_scores.jsonl"),
                           json.loads((clone / "metrics/rag.json").read_text()), seed)


def measure(clone: Path, persona: dict, seed: int) -> dict:
    """offline_rl@1 against RAG, and its targets, from the clone's outputs after a run."""
    sel = read_jsonl(clone / "outputs/offline_rl/iter_1/judge/selection.jsonl")
    keys = {r["key"]: (r["key"].split("/")[0], r["key"].split("/")[-1]) for r in sel}
    stats = json.loads((clone / "outputs/offline_rl/iter_1/train_policy/train_stats.json").read_text())
    return {
        "train_users": len(sel),
        "lora_steps": stats.get("steps"),
        "loss_first_last": [stats.get("first_loss"), stats.get("last_loss")],
        "targets": targets_summary({keys[r["key"]]: r["best_score"] for r in sel}, [r["mean_score"] for r in sel],
                                   read_jsonl(clone / "outputs/offline_rl/iter_1/judge/judge_scores.jsonl"),
                                   {keys[r["key"]]: f"s{r['best_j']}" for r in sel}, persona),
        "test": compare(read_jsonl(clone / "outputs/baselines/rag/judge_scores.jsonl"),
                        read_jsonl(clone / "outputs/offline_rl/iter_1/evaluate/judge_scores.jsonl"), persona, seed),
    }


def fitting_targets(users: list, params) -> tuple[dict, list[dict], dict, dict]:
    """Offline RL's selection (the verifier's best candidate, loop.select_best) over the benchmark's
    three responses to each user's question: pair 0's chosen and rejected, pair 1's rejected. The
    verifier picks the one written for the user's persona. Every train-split aspect has a check, so
    no judge model is called. Also tests/test_learning.py's targets. Returns (candidates per user
    key, the verifier's rows, scores per "key|s<j>", select_best's pick per user key)."""
    from personal_nlf import judge
    from personal_nlf.modes.loop import select_best

    cands = {er.key: [er.record.pairs[0].chosen, er.record.pairs[0].rejected, er.record.pairs[1].rejected]
             for er in users}
    answers = [judge.Answer(f"{er.key}|s{j}", er.record.question, er.record.narrative, er.record.rubric_aspects, text,
                            meta={"domain": er.domain, "id": er.record.id, "candidate": f"s{j}"})
               for er in users for j, text in enumerate(cands[er.key])]
    judged, scores = judge.judge_answers(answers, backend=None, params=params)
    picks = {er.key: select_best(None, [scores[f"{er.key}|s{j}"] for j in range(3)]) for er in users}
    return cands, judged, scores, picks


def sft(params, role, rows: list[dict], update: dict, models: Path, out: Path) -> tuple[str, dict]:
    """LoRA SFT of `role` on rows through the pipeline's train-and-export path (training.fit_and_export)
    with params.yaml's train settings updated by `update`, keeping the last checkpoint. Returns (the
    adapter, what it trained with)."""
    from personal_nlf import training

    cfg = params.train.model_copy(update={**update, "save_steps": update["max_steps"]})  # the last checkpoint
    training.fit_and_export("sft", rows, role, models, cfg, out, work_dir=out.parent / f"{out.name}_work", seed=params.seed)
    stats = json.loads((out / "train_stats.json").read_text())
    return json.loads((out / "state.json").read_text())["adapter"], {
        "train_users": len(rows), "lora_steps": cfg.max_steps, "learning_rate": cfg.learning_rate,
        "loss_first_last": [stats.get("first_loss"), stats.get("last_loss")]}


def persona_fitting_run(clone: Path, persona: dict, train_update: dict) -> dict:
    """Offline RL's first iteration with targets that fit each user: the same selection (the
    verifier's best candidate per train user, loop.select_best), training (training.fit_and_export,
    LoRA SFT on the RAG prompt) and evaluation (evaluate.evaluate_method, RAG prompt, verifier), but
    the candidates are the benchmark's three responses to the user's question (pair 0's chosen and
    rejected, pair 1's rejected) instead of N policy samples. It stands in for a policy that can
    sample the right form, and is not a pipeline setting. Reads the clone's prepared data and index
    of the current params (the caller ran `dvc exp run` first) and works in CLONE/.learning_probe/."""
    from personal_nlf import evaluate, preferences, prompts, training

    params = load_params(clone / "params.yaml")
    prepared, index, models = clone / "outputs/prepared", clone / "outputs/index", clone / "models/embedded"
    out = clone / ".learning_probe"
    shutil.rmtree(out, ignore_errors=True)
    users = evaluate.load_eval_records(prepared, index, params.data.domains, "train")
    cands, judged, scores, picks = fitting_targets(users, params)
    rows = [training.sft_row(prompts.rag(er.record.question, er.own),
                             preferences.answer_json(cands[er.key][picks[er.key]["best_j"]])) for er in users]
    adapter, trained_with = sft(params, params.models.policy, rows, train_update, models, out / "train")
    # The trained policy with the retrieved profile (its pairwise accuracy under it and under no
    # personalization comes with it), and without: the same comparisons the untrained policy gets.
    tests = evaluate.load_eval_records(prepared, index, params.data.domains, "test")
    trained = params.models.policy.model_copy(update={"adapter": adapter})
    rag_metrics = evaluate.evaluate_method("rag", params, prepared, index, models, out / "eval", out / "metrics.json",
                                           policy=trained, split="test", records=tests)
    evaluate.evaluate_method("no_pers", params, prepared, index, models, out / "eval_no_pers",
                             out / "metrics_no_pers.json", policy=trained, split="test",
                             records=[dataclasses.replace(er, record=dataclasses.replace(er.record, pairs=()))
                                      for er in tests])  # its pairwise "none" is the rag run's
    rag_rows = read_jsonl(clone / "outputs/baselines/rag/judge_scores.jsonl")
    trained_rows = read_jsonl(out / "eval/judge_scores.jsonl")
    key = {er.key: (er.domain, er.record.id) for er in users}
    return {
        **trained_with,
        "targets": targets_summary({key[k]: v["best_score"] for k, v in picks.items()},
                                   [sum(scores[f"{k}|s{j}"] for j in range(3)) / 3 for k in cands], judged,
                                   {key[k]: f"s{v['best_j']}" for k, v in picks.items()}, persona),
        "test": compare(rag_rows, trained_rows, persona, params.seed),
        "personalization": {
            "untrained": untrained(clone, params.seed),
            "trained": personalization(trained_rows, read_jsonl(out / "eval_no_pers/judge_scores.jsonl"),
                                       rag_metrics, params.seed)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in", dest="clone", type=Path, required=True, help="a clone where the default run finished")
    ap.add_argument("--setting", action="append", choices=[*SETTINGS, *PERSONA_FITTING, *BASELINES],
                    help="default: all")
    ap.add_argument("--machine", default="2-core CPU, 24 GiB, no GPU")
    args = ap.parse_args(argv)
    clone = args.clone.resolve()
    rev = clone_revision(clone)
    dvc = clone / ".venv/bin/dvc"
    persona = personas(clone)
    seed = load_params(clone / "params.yaml").seed
    record = {"date": dt.date.today().isoformat(), "machine": args.machine, "clone_revision": rev,
              "head_revision": git(ROOT, "rev-parse", "HEAD"),
              "command": " ".join(["python scripts/learning_probe.py", *(f"--setting {s}" for s in args.setting or [])]),
              "settings": {}}
    for name in args.setting or [*SETTINGS, *PERSONA_FITTING, *BASELINES]:
        git(clone, "checkout", "params.yaml")  # each setting starts from the committed params
        overrides, lora = PERSONA_FITTING.get(name, ({**SETTINGS, **BASELINES}.get(name), None))  # default's [] too
        # baseline_rag too: offline RL does not depend on it, and a setting that changes the data
        # (more test questions) needs its RAG start on the same questions.
        # baseline_no_pers for the untrained with/without-profile comparisons on the same questions.
        stages = ["offline_rl_evaluate@1"] if name in SETTINGS else ["baseline_no_pers"]
        cmd = [str(dvc), "exp", "run", *stages, "baseline_rag", *[a for s in overrides for a in ("-S", s)]]
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        # No timing: a setting run before in this clone is restored from DVC's run cache.
        subprocess.run(cmd, cwd=clone, check=True, stdout=subprocess.DEVNULL)
        if name in BASELINES:
            record["settings"][name] = {"date": record["date"], "command": record["command"], "overrides": overrides,
                                        "personalization": {"untrained": untrained(clone, seed)}}
            res = record["settings"][name]["personalization"]["untrained"]["rag_vs_no_pers"]
            print(f"[{name}] rag - no_pers {res['permutation']['diff']:+.3f}, p {res['permutation']['p_value']:.3f}")
            continue
        record["settings"][name] = {"date": record["date"], "command": record["command"], "overrides": overrides, "targets_from": "policy samples" if lora is None else
                                    "benchmark responses", **(measure(clone, persona, seed) if lora is None
                                                               else persona_fitting_run(clone, persona, lora))}
        res = record["settings"][name]["test"]
        print(f"[{name}] offline_rl@1 - rag {res['permutation']['diff']:+.3f}, "
              f"p {res['permutation']['p_value']:.3f}", flush=True)
    git(clone, "checkout", "params.yaml")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{rev[:7]}.json"
    if args.setting and path.exists():  # some settings only: they replace or join those recorded before
        old = json.loads(path.read_text())
        record["settings"] = {**old["settings"], **record["settings"]}
        record["command"] = old["command"]  # the record's first run; each setting keeps its own command
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
