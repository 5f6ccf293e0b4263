"""`personal-nlf` command line: data validation, rescoring of kept judge outputs, exporting learned
summaries and answering questions with them through any OpenAI-compatible API."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import data
from .io import numbered_jsonl


class CliError(Exception):
    """An input the command cannot use: reported in one line, exit 2."""


def cmd_validate_data(args) -> int:
    """LaMP-QA or preference-pair files (kind by each file's fields, or --kind): one located line
    per problem on stderr, exit 1 if any file is invalid."""
    from . import preferences

    worst = 0
    for path in args.paths:
        check = preferences.validate_file(path, kind=args.kind, require_rubric=not args.no_rubric)
        for p in check.problems:
            print(p, file=sys.stderr)
        if check.problems:
            n = len(check.problems)
            print(f"{path}: INVALID ({n} problem{'s' if n != 1 else ''})", file=sys.stderr)
            worst = 1
        else:
            extra = f", {check.empty_profiles} empty profile(s)" if check.empty_profiles else ""
            extra += f", {check.n_pairs} preference pair(s)" if check.n_pairs else ""
            print(f"{path}: OK ({check.kind}: {check.n_records} records{extra})")
            for w in check.warnings:
                print(f"warning: {w}", file=sys.stderr)
    return worst


# --- rescore ---------------------------------------------------------------------------------

# Where a metrics file may record the bootstrap sample count, first match wins.
_BOOTSTRAP_KEYS = (("provenance", "bootstrap_samples"), ("provenance", "baselines", "bootstrap_samples"),
                   ("bootstrap_samples",))


def _dig(d: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def read_judge_rows(path: str | Path) -> list[dict[str, Any]]:
    """Per-aspect judge rows (domain, id, score in [0, 2], optional aspect_index), checked."""
    numbered, seen = numbered_jsonl(path, error=CliError), set()
    rows = [row for _, row in numbered]
    for n, row in numbered:
        missing = [k for k in ("domain", "id", "score") if k not in row]
        if missing:
            raise CliError(f"{path}: line {n}: missing field(s) {', '.join(missing)}")
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or not 0.0 <= score <= 2.0:
            raise CliError(f"{path}: line {n}: score must be a number in [0, 2], got {score!r}")
        if "aspect_index" in row:
            key = (row["domain"], row["id"], row.get("split"), row["aspect_index"])
            if key in seen:
                raise CliError(f"{path}: line {n}: duplicate aspect {row['aspect_index']} of "
                               f"{row['domain']}/{row['id']} (a concatenated or re-appended file?)")
            seen.add(key)
    if not rows:
        raise CliError(f"{path}: no judge rows")
    return rows


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise CliError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(m, dict):
        raise CliError(f"{path}: expected a JSON object, got {type(m).__name__}")
    return m


def compare(recomputed: dict[str, Any], stored: dict[str, Any], prefix: str = "") -> list[str]:
    """Fields of `recomputed` that `stored` lacks or holds with another value (dotted paths).
    Only the fields rescoring produces are compared; the rest of the metrics file is ignored."""
    diffs = []
    for k, v in recomputed.items():
        field = f"{prefix}{k}"
        if not isinstance(stored, dict) or k not in stored:
            diffs.append(f"{field}: missing from the metrics file (recomputed {json.dumps(v)})")
        elif isinstance(v, dict) and isinstance(stored[k], dict):
            diffs.extend(compare(v, stored[k], field + "."))
            extra = sorted(set(stored[k]) - set(v))
            if extra and prefix == "" and k == "domains":
                diffs.extend(f"{field}.{d}: in the metrics file but not in the judge scores" for d in extra)
        elif v != stored[k]:
            diffs.append(f"{field}: recomputed {json.dumps(v)} != stored {json.dumps(stored[k])}")
    return diffs


def cmd_rescore(args) -> int:
    from . import metrics
    from .config import BaselinesConfig, Params

    stored = read_metrics(args.metrics) if args.metrics else None
    n_boot, seed, notes = args.bootstrap, args.seed, []
    if n_boot is None:
        recorded = next((v for v in (_dig(stored, p) for p in _BOOTSTRAP_KEYS) if v is not None), None)
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            n_boot = recorded
        else:
            n_boot = BaselinesConfig().bootstrap_samples
            if stored is not None:
                notes.append(f"{args.metrics} does not record the bootstrap sample count; using {n_boot} "
                             "(pass --bootstrap N if the run used another)")
    if seed is None:
        recorded = _dig(stored, ("provenance", "seed"))
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            seed = recorded
        else:
            seed = Params().seed
            if stored is not None:
                notes.append(f"{args.metrics} does not record the seed; using {seed} (pass --seed S)")
    if n_boot < 1:
        raise CliError(f"--bootstrap must be at least 1, got {n_boot}")
    rows = read_judge_rows(args.judge_scores)
    summary = metrics.summarize(metrics.question_scores(rows), n_boot=n_boot, seed=seed)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({**summary, "bootstrap_samples": n_boot, "seed": seed}, indent=1))
    if stored is None:
        return 0
    diffs = compare(summary, stored)
    if diffs:
        for d in diffs:
            print(f"mismatch: {d}", file=sys.stderr)
        print(f"{args.metrics}: DIFFERS from {args.judge_scores} in {len(diffs)} field(s), first: "
              f"{diffs[0].split(':', 1)[0]}", file=sys.stderr)
        return 1
    print(f"{args.metrics}: reproduced from {args.judge_scores} ({summary['n']} questions, "
          f"{n_boot} bootstrap samples, seed {seed})", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from . import export
    from .config import load_params

    params = load_params(args.params)
    iteration = (args.iteration or params.summary.export_iteration
                 or sorted(params.nlf.iterations, key=lambda t: (len(t), t))[-1])
    try:
        stats = export.export_iteration(params, args.root, args.prepared, iteration, args.out)
    except export.ExportError as e:
        raise CliError(str(e)) from None
    print(f"{args.out}/summaries.jsonl: {stats['users']} users (mean {stats['mean_summary_tokens']} tokens), "
          f"iteration {iteration}; {args.out}/summaries.openai.jsonl: the same as OpenAI system messages")
    return 0


def cmd_apply(args) -> int:
    import logging

    from . import apply, export
    from .config import RoleConfig, load_params
    from .stage import setup_logging

    setup_logging(quiet=False)
    logging.getLogger("personal_nlf").setLevel(logging.INFO)
    role = RoleConfig(backend="openai", base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                      timeout_s=args.timeout_s, max_retries=args.max_retries, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, batch_size=args.concurrency)
    judge_params = load_params(args.params) if args.judge else None
    try:
        result = apply.run(args.summaries, args.questions, role, args.out, domain=args.domain,
                           judge_params=judge_params, models_dir=args.models_dir)
    except (apply.ApplyError, export.ExportError, data.DataError) as e:
        raise CliError(str(e)) from None
    print(json.dumps(result, indent=1))
    return 0


def cmd_plan(args) -> int:
    from . import plan
    from .config import load_params

    params = load_params(args.params)
    scale = args.scale
    if scale == "auto":  # counting a hub dataset would download it: use its published sizes
        scale = "lamp-qa" if params.data.source == "alireza7/LaMP-QA" and not Path(params.data.source).exists() else "data"
    counts = plan.counts_lamp_qa(params) if scale == "lamp-qa" else plan.counts_from_data(params)
    est = plan.estimate(params, counts, args.pipeline)
    rates = (args.judge_calls_per_s, args.generations_per_s, args.train_s_per_step)
    gpu = None
    if args.gpus:
        overrides = {}
        for item in args.model_config:
            ref, sep, path = item.rpartition("=")
            if not sep or not ref:
                raise CliError(f"--model-config {item!r}: expected MODEL=PATH (a config.json or its folder)")
            overrides[ref] = path
        gpu = plan.gpu_plan(params, args.gpus, args.gpu_memory_gb, args.models_dir, overrides, args.kv_seqs,
                            args.pipeline)
    if args.json:
        out = plan.as_dict(est)
        if gpu is not None:
            out["gpu"] = [{"stage": pp.phase.stage, "phase": pp.phase.what, "gpu0_gib": round(pp.gpu0, 2),
                           "failure": pp.failure,
                           "models": [{"role": n.load.role, "model": n.load.model, "backend": n.load.backend, "tp": n.tp,
                                       "weights_gib": round(n.weights, 2), "kv_gib": round(n.kv, 2),
                                       "train_gib": round(n.train, 2), "note": n.note} for n in pp.needs]}
                          for pp in gpu]
        print(json.dumps(out, indent=1))
    else:
        source = "LaMP-QA's published sizes" if scale == "lamp-qa" else params.data.source
        print(f"plan for {args.params} ({args.pipeline} pipeline, {len(params.nlf.iterations)} iterations, data: {source})")
        print(plan.render(est, *rates))
        if gpu is not None:
            row_hours = ({r.stage: plan.hours(r, *rates) for r in est.rows} if any(rates) else None)
            print()
            print(plan.render_gpu(gpu, args.gpus, args.gpu_memory_gb, row_hours))
    failed = [pp.failure for pp in gpu or [] if pp.failure]
    if failed:
        print(f"does not fit: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personal-nlf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate-data", help="check LaMP-QA or preference-pair files (.json/.jsonl/.parquet)")
    v.add_argument("paths", nargs="+")
    v.add_argument("--no-rubric", action="store_true",
                   help="questions-only file (no narrative/rubric_aspects required)")
    v.add_argument("--kind", choices=("auto", "lamp_qa", "pairs", "choice"), default="auto",
                   help="data kind (default: from the first record's fields: options -> choice, "
                        "narrative/rubric_aspects -> lamp_qa, pairs or chosen/rejected -> pairs)")
    v.set_defaults(func=cmd_validate_data)
    r = sub.add_parser("rescore", help="recompute per-domain scores, macro and CIs from kept judge scores",
                       description="Recompute per-domain scores, the macro score and bootstrap CIs from a "
                                   "judge_scores.jsonl (one row per rubric aspect). With --metrics, compare "
                                   "with a stored metrics JSON: exit 1 naming the first differing field.")
    r.add_argument("judge_scores", metavar="JUDGE_SCORES_JSONL")
    r.add_argument("--metrics", metavar="METRICS_JSON", help="stored metrics file to check against")
    r.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="bootstrap samples (default: the metrics file's record, else 1000)")
    r.add_argument("--seed", type=int, default=None, metavar="S",
                   help="bootstrap seed (default: the metrics file's provenance.seed, else 42)")
    r.set_defaults(func=cmd_rescore)
    e = sub.add_parser("export", help="write a summary-mode iteration's per-user summaries to exports/",
                       description="Write exports/summaries.jsonl (one line per user: summary, summarizer model "
                                   "and adapter, iteration, profile hash; never profile text) and "
                                   "exports/summaries.openai.jsonl (a system message per user).")
    e.add_argument("--params", default="params.yaml")
    e.add_argument("--iteration", default=None, help="default: params summary.export_iteration, else the last iteration")
    e.add_argument("--root", default="outputs/summary", help="the summary mode's outputs folder")
    e.add_argument("--prepared", default="outputs/prepared")
    e.add_argument("--out", default="exports")
    e.set_defaults(func=cmd_export)
    a = sub.add_parser("apply", help="answer questions through an OpenAI-compatible API with exported summaries",
                       description="Answer each question of a LaMP-QA-format file through an OpenAI-compatible "
                                   "chat API, the user's exported summary as the system message. Answers are kept "
                                   "as they arrive: rerun after an interruption to answer only the rest.")
    a.add_argument("--summaries", required=True, help="exports/summaries.jsonl")
    a.add_argument("--questions", required=True, help="LaMP-QA-format file (.json/.jsonl/.parquet)")
    a.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    a.add_argument("--model", required=True)
    a.add_argument("--out", default="apply_answers.jsonl")
    a.add_argument("--domain", default=None, help="domain of the questions (default: the file's folder name)")
    a.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the variable holding the key")
    a.add_argument("--timeout-s", type=float, default=60.0)
    a.add_argument("--max-retries", type=int, default=5)
    a.add_argument("--max-new-tokens", type=int, default=256)
    a.add_argument("--temperature", type=float, default=0.0)
    a.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    a.add_argument("--judge", action="store_true",
                   help="judge the answers on the questions' rubrics with the params' judge role")
    a.add_argument("--params", default="params.yaml", help="judge settings (with --judge)")
    a.add_argument("--models-dir", default="models/embedded", help="where embedded judge models live")
    a.set_defaults(func=cmd_apply)
    pl = sub.add_parser("plan", help="model calls, GPU memory and hours per stage (size a run before starting it)",
                        description="Count the generations, judge calls and training steps every stage of "
                                    "`dvc repro` (--pipeline summary: `dvc repro pipelines/summary/dvc.yaml`) will "
                                    "make with these params, from the data's record and rubric "
                                    "counts (or LaMP-QA's published sizes with --scale lamp-qa). With --gpus: the "
                                    "models each stage holds at once, their weights, KV cache and training memory "
                                    "per GPU; exit 1 naming the first stage and role that cannot fit.")
    pl.add_argument("--params", default="params.yaml")
    pl.add_argument("--pipeline", choices=["default", "summary"], default="default",
                    help="default: dvc.yaml (baselines, VAC, offline RL); summary: pipelines/summary/dvc.yaml")
    pl.add_argument("--scale", choices=["auto", "data", "lamp-qa"], default="auto",
                    help="data: count data.source (after the caps); lamp-qa: the full benchmark's sizes; "
                         "auto (default): lamp-qa when data.source is the hub's alireza7/LaMP-QA, else data")
    pl.add_argument("--judge-calls-per-s", type=float, default=None, help="measured judge throughput, for hours")
    pl.add_argument("--generations-per-s", type=float, default=None, help="measured generation throughput")
    pl.add_argument("--train-s-per-step", type=float, default=None, help="measured seconds per optimizer step")
    pl.add_argument("--gpus", type=int, default=None, help="check GPU memory on this many GPUs")
    pl.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
    pl.add_argument("--models-dir", default="models/embedded", help="where embedded models are materialized")
    pl.add_argument("--model-config", action="append", default=[], metavar="MODEL=PATH",
                    help="size a model from this config.json (or folder), e.g. a hub model not in plan's table")
    pl.add_argument("--kv-seqs", type=int, default=None,
                    help="hf backend: sequences whose KV cache is held at once (default: the role's batch_size)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except ValueError as e:  # e.g. metrics.summarize on nothing usable
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
