"""benchmarks/summary_probes/: what summary-conditioned pairwise accuracy takes, measured in parts.

    python scripts/summary_probe.py --in CLONE [--steps SUMMARIZER GENERATOR] [--machine TEXT]

Issue 13's third comparison: given the user's summary, the generator gives the user's chosen
response a higher likelihood than the rejected one more often than with no summary. The committed
summary-mode run does not show it. This probe splits the comparison into its two halves and
measures each on every record of the benchmark (120 train users, 120 test users), in the clone of
the committed run (CLONE as for scripts/learning_probe.py: the pipeline equals HEAD's):

- The generator: does it read a summary that states what the user wants? The *stated* summary is
  the benchmark's plain-language description of the user's ground-truth persona
  (data/persona/manifest.json), the best summary a summarizer could write. No pipeline prompt ever
  sees it; here the test users' is an oracle, for analysis, and the train users' a training target
  (the summarizer's) and input (the generator's). Measured on the untrained generator, and on one
  trained with LoRA SFT (training.fit_and_export, the pipeline's one train-and-export path) on the
  train users' chosen responses given their stated summary.
- The summarizer: does it write such a summary from the user's history? The untrained summarizer's
  summaries (summary mode's prompt and sampling settings, scrubbed of copied profile text, as its evaluate step
  writes them), and those of a summarizer trained with LoRA SFT on the train users' stated
  summaries. Those are targets that fit each user, as in learning_probe.py's persona-fitting
  settings; the test users' summaries come from their history alone.

Each summary source is scored under each generator: pairwise accuracy (preferences.pairwise_accuracy,
the report's) against no summary with the same generator, paired sign-flip test over users. The
record also holds how many test summaries are exactly the user's persona description, or one with
its answer form.
It writes benchmarks/summary_probes/<clone revision>.json (with other --steps than the defaults:
<clone revision>_s<summarizer steps>_g<generator steps>.json); `scripts/readme_results.py` tabulates
the newest default record in the README, and summarizes the other step counts of its clone. The LoRA work goes to CLONE/.summary_probe/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from learning_probe import clone_revision, git, sft  # noqa: E402

from personal_nlf.config import load_params  # noqa: E402

OUT = ROOT / "benchmarks" / "summary_probes"
OVERRIDES = ["data.max_records_per_split=null"]  # every record: 120 train and 120 test users
# LoRA SFT of each role (the rest: params.yaml's train section). 480 steps at 3e-3 is what the
# policy needed to pick the answer form from the history (learning_probe.py's last persona-fitting setting).
# The generator reads an explicit statement instead of inferring it: half the summarizer's steps.
GENERATOR_TRAIN = {"max_steps": 240, "learning_rate": 3e-3}
SUMMARIZER_TRAIN = {"max_steps": 480, "learning_rate": 3e-3}


def style(persona_id: str) -> str:
    return persona_id.split("+")[0]  # list_brief | prose_full


def states(summaries: dict[str, str], users: list, persona: dict[str, str], descriptions: dict[str, str]) -> dict:
    """How many summaries are one of the benchmark's persona descriptions: the user's own, or one
    with the user's answer form (style) whatever its register."""
    named = {text.strip(): pid for pid, text in descriptions.items()}
    own = form = 0
    for er in users:
        pid = named.get(summaries[er.key].strip())
        own += pid == persona[er.key]
        form += pid is not None and style(pid) == style(persona[er.key])
    n = len(users)
    return {"users": n, "states_own_persona": round(own / n, 4), "states_own_answer_form": round(form / n, 4)}


def write_summaries(params, users: list, role, models: Path) -> dict[str, str]:
    """One summary per user from summary mode's summarizer prompt and sampling settings (as its
    evaluate step writes them), scrubbed as the pipeline does."""
    from personal_nlf import evaluate
    from personal_nlf.llm import sampling_for
    from personal_nlf.modes.summary import summarizer_prompt, token_counter
    from personal_nlf.summaries import scrub

    count = token_counter(role, models)
    pool = evaluate.BackendPool(models, params.seed)
    try:
        gens = pool.get(role).generate([summarizer_prompt(params, er, count)[0] for er in users],
                                       sampling_for(role, seed=params.seed))
    finally:
        pool.close()
    return {er.key: scrub(g[0].text.strip(), [p.text for p in er.record.profile])[0] for er, g in zip(users, gens)}


def pairwise(params, users: list, role, models: Path, sources: dict[str, dict[str, str]]) -> dict:
    """Pairwise accuracy of one generator under each summary source and under no summary, with the
    paired test of each source against none."""
    from personal_nlf import evaluate, preferences

    conds = {name: preferences.pairwise_conditions(users, s, ("summary",))["summary"] for name, s in sources.items()}
    conds["none"] = preferences.pairwise_conditions(users, None, ("none",))["none"]
    pool = evaluate.BackendPool(models, params.seed)
    try:
        pa = preferences.pairwise_accuracy(pool.get(role).answer_logprobs, conds,
                                           n_boot=params.baselines.bootstrap_samples, seed=params.seed)
    finally:
        pool.close()
    c = pa["conditions"]
    return {name: {"accuracy": c[name]["accuracy"], "ci95": c[name]["ci95"], "n_users": c[name]["n_users"],
                   "n_pairs": c[name]["n_pairs"], "mean_margin": c[name]["mean_margin"],
                   **({} if name == "none" else {"diff": pa["paired_vs_none"][name]["diff"],
                                                 "p_value": pa["paired_vs_none"][name]["p_value"]})}
            for name in conds}


def run(clone: Path, summarizer_train: dict, generator_train: dict) -> dict:
    from personal_nlf import evaluate, preferences, prompts, training
    from personal_nlf.modes.summary import summarizer_prompt, token_counter

    params = load_params(clone / "params.yaml")
    prepared, index, models = clone / "outputs/prepared", clone / "outputs/index", clone / "models/embedded"
    out = clone / ".summary_probe"
    shutil.rmtree(out, ignore_errors=True)
    train = evaluate.load_eval_records(prepared, index, params.data.domains, "train")
    test = evaluate.load_eval_records(prepared, index, params.data.domains, "test")
    persona = {er.key: er.record.persona for er in [*train, *test]}  # oracle, targets and analysis only
    described = json.loads((clone / "data/persona/manifest.json").read_text())["personas"]
    stated = {er.key: described[persona[er.key]] for er in [*train, *test]}
    generator, summarizer = params.models.generator, params.models.summarizer

    # The summarizer: untrained, and trained on the train users' stated summaries.
    count = token_counter(summarizer, models)
    untrained_summaries = write_summaries(params, test, summarizer, models)
    s_adapter, s_train = sft(params, summarizer, [training.sft_row(summarizer_prompt(params, er, count)[0], stated[er.key])
                                                  for er in train], summarizer_train, models, out / "summarizer")
    trained_summaries = write_summaries(params, test, summarizer.model_copy(update={"adapter": s_adapter}), models)
    (out / "test_summaries.json").write_text(json.dumps({"untrained": untrained_summaries,
                                                          "trained": trained_summaries}, indent=1))

    # The generator: untrained, and trained on the chosen responses given the stated summary.
    g_adapter, g_train = sft(params, generator,
                             [training.sft_row(prompts.summary_answer(er.record.question, stated[er.key]),
                                               # every pair of a record has the same chosen response
                                               preferences.answer_json(er.record.pairs[0].chosen)) for er in train],
                             generator_train, models, out / "generator")
    sources = {"stated": {er.key: stated[er.key] for er in test}, "untrained_summarizer": untrained_summaries,
               "trained_summarizer": trained_summaries}
    return {
        "train_users": len(train), "test_users": len(test),
        "summarizer_training": s_train, "generator_training": g_train,
        "summaries": {"untrained_summarizer": states(untrained_summaries, test, persona, described),
                      "trained_summarizer": states(trained_summaries, test, persona, described)},
        "pairwise": {"untrained_generator": pairwise(params, test, generator, models, sources),
                     "trained_generator": pairwise(params, test, generator.model_copy(update={"adapter": g_adapter}),
                                                   models, sources)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in", dest="clone", type=Path, required=True, help="a clone where the default run finished")
    ap.add_argument("--steps", type=int, nargs=2, metavar=("SUMMARIZER", "GENERATOR"),
                    default=[SUMMARIZER_TRAIN["max_steps"], GENERATOR_TRAIN["max_steps"]],
                    help="LoRA steps of the two trainings (default: %(default)s)")
    ap.add_argument("--machine", default="2-core CPU, 24 GiB, no GPU")
    args = ap.parse_args(argv)
    clone = args.clone.resolve()
    rev = clone_revision(clone)
    s_steps, g_steps = args.steps
    default = [s_steps, g_steps] == [SUMMARIZER_TRAIN["max_steps"], GENERATOR_TRAIN["max_steps"]]
    git(clone, "checkout", "params.yaml")
    # The prepared data and index of every record (restored from DVC's cache after a run that made them).
    cmd = [str(clone / ".venv/bin/dvc"), "exp", "run", "baseline_rag", *[a for o in OVERRIDES for a in ("-S", o)]]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=clone, check=True, stdout=subprocess.DEVNULL)
    started = dt.datetime.now()
    try:
        result = run(clone, {**SUMMARIZER_TRAIN, "max_steps": s_steps}, {**GENERATOR_TRAIN, "max_steps": g_steps})
    finally:
        git(clone, "checkout", "params.yaml")
    command = "python scripts/summary_probe.py" + ("" if default else f" --steps {s_steps} {g_steps}")
    record = {"date": dt.date.today().isoformat(), "machine": args.machine, "clone_revision": rev,
              "head_revision": git(ROOT, "rev-parse", "HEAD"), "command": command,
              "overrides": OVERRIDES, "minutes": round((dt.datetime.now() - started).total_seconds() / 60, 1), **result}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / (f"{rev[:7]}.json" if default else f"{rev[:7]}_s{s_steps}_g{g_steps}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps({k: record[k] for k in ("summaries", "pairwise")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
