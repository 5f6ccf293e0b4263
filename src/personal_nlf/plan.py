"""Size a run before starting it: model calls per stage for the current params (`personal-nlf plan`).

Counts come from the data (records per split and mean rubric aspects, after the params' caps) or,
with `--scale lamp-qa`, from the benchmark's published sizes. The cost model is the pipeline's own
arithmetic, stage by stage (see dvc.yaml):

  VAC iteration      rollout R  +  signal R*N  +  refine R*N  generations;  judge R*(N+1)*A_tr calls
  offline-RL iter.   rollout R*N generations;  judge R*N*A_tr calls
  summary iteration  rollout R summaries + signal R*n_answers answers, judge R*n_answers*A_tr;
                     GRPO: steps*grad_acc*G summaries, each rewarded by 1 answer + A_tr judge calls
  training           + validation selection: checkpoints * (V generations + V*A_val judge calls)
  evaluate           E generations + E*A_test judge calls (each baseline, each iteration)

R = train records the loops use (loop_train), E = evaluation records, V = validation records. At the paper's
scale (24,333 LaMP-QA train records, ~3 aspects, N=16), one VAC iteration's judge step alone is
24,333 * 17 * 3 ~ 1.24M judge calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import Params

# LaMP-QA sizes (train/validation/test per domain) and mean rubric aspects per split (DESIGN.md).
LAMP_QA_SIZES = {"Art_and_Entertainment": (9349, 801, 767),
                 "Lifestyle_and_Personal_Development": (7370, 892, 989),
                 "Society_and_Culture": (7614, 810, 1074)}
LAMP_QA_ASPECTS = {"train": 3.0, "validation": 5.0, "test": 5.0}
BASELINE_METHODS = ("no_pers", "rag", "rag_random", "planpers")


@dataclass
class SplitCounts:
    records: int
    aspects: float  # mean rubric aspects per record


@dataclass
class Row:
    stage: str
    generations: int = 0
    judge_calls: int = 0
    train_steps: int = 0
    note: str = ""


@dataclass
class Plan:
    rows: list[Row] = field(default_factory=list)
    counts: dict[str, SplitCounts] = field(default_factory=dict)

    def add(self, stage, generations=0.0, judge_calls=0.0, train_steps=0, note=""):
        self.rows.append(Row(stage, round(generations), round(judge_calls), train_steps, note))

    def totals(self) -> Row:
        return Row("total", sum(r.generations for r in self.rows), sum(r.judge_calls for r in self.rows),
                   sum(r.train_steps for r in self.rows))


def counts_from_data(params: Params) -> dict[str, SplitCounts]:
    """Records and mean aspects per split over the configured domains, after the params' caps;
    `loop_train` = the train records the loops use (the first nlf.max_train_records_per_domain of
    each domain, as modes/loop.train_records takes them)."""
    from .data import load_split

    cap = params.nlf.max_train_records_per_domain
    recs_of = {}
    for split in params.data.splits:
        recs_of[split] = []
        for domain in params.data.domains:
            recs, _ = load_split(params.data.source, domain, split, require_rubric=True,
                                 max_records=params.data.max_records_per_split)
            recs_of[split].append(recs)
    if "train" in recs_of:
        recs_of["loop_train"] = [recs[:cap] if cap else recs for recs in recs_of["train"]]
    out = {}
    for split, per_domain in recs_of.items():
        flat = [r for recs in per_domain for r in recs]
        out[split] = SplitCounts(len(flat), sum(len(r.rubric_aspects) for r in flat) / len(flat) if flat else 0.0)
    return out


def counts_lamp_qa(params: Params) -> dict[str, SplitCounts]:
    caps = {"loop_train": params.nlf.max_train_records_per_domain}
    out = {}
    for split, i in (("train", 0), ("validation", 1), ("test", 2), ("loop_train", 0)):
        n = 0
        for d in params.data.domains:
            full = LAMP_QA_SIZES[d][i]
            n += min(full, params.data.max_records_per_split or full, caps.get(split) or full)
        out[split] = SplitCounts(n, LAMP_QA_ASPECTS["train" if split == "loop_train" else split])
    return out


def estimate(params: Params, counts: dict[str, SplitCounts]) -> Plan:
    plan = Plan(counts=counts)
    p = params
    tr, val, ev = counts["loop_train"], counts["validation"], counts[p.baselines.eval_split]
    R, N = tr.records, p.nlf.n_feedback

    def evaluate(stage, extra_gens=0.0):
        plan.add(stage, ev.records + extra_gens, ev.records * ev.aspects)

    for m in BASELINE_METHODS:
        evaluate(f"baseline_{m}", extra_gens=ev.records if m == "planpers" else 0)  # planpers: + a plan each

    def training(stage, steps, select: bool):
        n_ckpt = math.ceil(steps / p.train.save_steps) if select and p.train.select_on_validation else 1
        if n_ckpt > 1:
            plan.add(stage, n_ckpt * val.records, n_ckpt * val.records * val.aspects, steps,
                     f"{n_ckpt} checkpoints scored on validation")
        else:
            plan.add(stage, train_steps=steps)

    for t, it in p.nlf.iterations.items():
        steps = it.max_steps or p.train.max_steps
        if p.mode == "nlf":
            plan.add(f"vac@{t} rollout", R)
            plan.add(f"vac@{t} signal", R * N, note=f"N={N} feedbacks per answer")
            plan.add(f"vac@{t} refine", R * N)
            plan.add(f"vac@{t} judge", judge_calls=R * (N + 1) * tr.aspects, note="N revisions + the initial answer")
            if p.nlf.train_feedback:
                training(f"vac@{t} train_feedback", steps, select=False)
            training(f"vac@{t} train_policy", steps, select=True)
            evaluate(f"vac@{t} evaluate")
        else:
            s = p.summary
            G, acc = s.num_generations, p.train.gradient_accumulation_steps
            plan.add(f"summary@{t} rollout", R, note="one summary per train record")
            plan.add(f"summary@{t} signal", R * s.n_answers)
            plan.add(f"summary@{t} judge", judge_calls=R * s.n_answers * tr.aspects)
            grpo_summaries = steps * acc * G
            if s.reward == "judge":
                plan.add(f"summary@{t} train_feedback (GRPO)", 2 * grpo_summaries, grpo_summaries * tr.aspects, steps,
                         f"{grpo_summaries} summaries (G={G}), one answer + A judge calls each")
            else:
                plan.add(f"summary@{t} train_feedback (GRPO)", grpo_summaries, 0, steps,
                         f"{grpo_summaries} summaries; 4 log-likelihood passes each, no judge")
            if s.train_generator:
                training(f"summary@{t} train_policy (DPO)", steps, select=False)
            evaluate(f"summary@{t} evaluate", extra_gens=ev.records)  # + a summary per user
        # The offline-RL baseline runs beside either mode, with the same N and budget.
        plan.add(f"offline_rl@{t} rollout", R * N)
        plan.add(f"offline_rl@{t} judge", judge_calls=R * N * tr.aspects)
        training(f"offline_rl@{t} train_policy", steps, select=True)
        evaluate(f"offline_rl@{t} evaluate")
    if p.mode == "summary":
        for name in p.transfer.generators:
            plan.add(f"transfer {name}", 3 * ev.records, 3 * ev.records * ev.aspects, note="summary, no_pers, rag")
    return plan


def render(plan: Plan, judge_per_s: float | None = None, gen_per_s: float | None = None) -> str:
    c = plan.counts
    lines = ["records (mean rubric aspects): " + ", ".join(f"{k} {v.records} ({v.aspects:.1f})" for k, v in c.items()), "",
             "| stage | generations | judge calls | train steps | note |", "|---|---:|---:|---:|---|"]
    for r in plan.rows + [plan.totals()]:
        bold = "**" if r.stage == "total" else ""
        lines.append(f"| {bold}{r.stage}{bold} | {r.generations:,} | {r.judge_calls:,} | {r.train_steps:,} | {r.note} |")
    if judge_per_s or gen_per_s:
        t = plan.totals()
        hours = (t.judge_calls / judge_per_s if judge_per_s else 0) + (t.generations / gen_per_s if gen_per_s else 0)
        lines += ["", f"at {judge_per_s or '-'} judge calls/s and {gen_per_s or '-'} generations/s: "
                      f"about {hours / 3600:.1f} h of inference (training steps not included)"]
    return "\n".join(lines)


def as_dict(plan: Plan) -> dict[str, Any]:
    return {"counts": {k: vars(v) for k, v in plan.counts.items()}, "rows": [vars(r) for r in plan.rows],
            "total": vars(plan.totals())}
