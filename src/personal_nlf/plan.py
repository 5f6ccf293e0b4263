"""Size a run before starting it (`personal-nlf plan`): model calls per stage for the current
params and, with `--gpus`, which models each stage holds at once and whether they fit.

Counts come from the data (records per split and mean rubric aspects, after the params' caps) or,
with `--scale lamp-qa`, from the benchmark's published sizes. The cost model is the pipeline's own
arithmetic, stage by stage, for the default pipeline (dvc.yaml: baselines, VAC, offline RL) or,
with `--pipeline summary`, the summary one (pipelines/summary/dvc.yaml: baselines, summary loop,
transfer):

  VAC iteration      rollout R  +  signal R*N  +  refine R*N  generations;  judge R*(N+1)*A_tr calls;
                     train_policy 2R generations (phi(t) writes one feedback per answer, pi(t-1)
                     revises once), with objective dpo + up to R*A_tr judge calls (each revision judged)
  offline-RL iter.   rollout R*N generations;  judge R*N*A_tr calls
  summary iteration  summarize R summaries + answer R*n_answers answers, rank R*n_answers*A_tr;
                     GRPO: steps*grad_acc*G summaries, each rewarded by 1 answer + A_tr judge calls
  training           + validation selection: checkpoints * (V generations + V*A_val judge calls)
  evaluate           E generations + E*A_test judge calls (each baseline, each iteration)

R = train records the loops use (loop_train), E = evaluation records, V = validation records. At the
paper's scale (24,333 LaMP-QA train records, ~3 aspects, N=16), one VAC iteration's judge step alone
is 24,333 * 17 * 3 ~ 1.24M judge calls.

GPU memory (`gpu_plan`): which models each stage holds at once is read off the stage code (see
`phases`); their sizes come from a local model's config.json, from `--model-config`, or from the
documented table `KNOWN_MODELS`. Formulas are at `need()`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import Params, RoleConfig

# LaMP-QA sizes (train, validation, test) per domain: the split sizes (num_examples) of the hub
# dataset alireza7/LaMP-QA, one config per domain.
LAMP_QA_SIZES = {"Art_and_Entertainment": (9349, 801, 767),
                 "Lifestyle_and_Personal_Development": (7370, 892, 989),
                 "Society_and_Culture": (7614, 810, 1074)}
# Mean rubric aspects per record: approximate figures recorded when the project was designed (train
# records carry ~3, validation/test ~5); not re-measured here. `--scale data` with
# data.source: alireza7/LaMP-QA counts them exactly.
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


def estimate(params: Params, counts: dict[str, SplitCounts], pipeline: str = "default") -> Plan:
    plan = Plan(counts=counts)
    p = params
    tr, val, ev = counts["loop_train"], counts["validation"], counts[p.baselines.eval_split]
    R, N = tr.records, p.nlf.n_feedback

    def evaluate(stage, extra_gens=0.0):
        plan.add(stage, ev.records + extra_gens, ev.records * ev.aspects)

    for m in BASELINE_METHODS:
        evaluate(f"baseline_{m}", extra_gens=ev.records if m == "planpers" else 0)  # planpers: + a plan each

    def training(stage, steps, select: bool, gens=0.0, judge=0.0, note=""):
        # A checkpoint every save_steps plus the final one (training.train saves it when max_steps
        # is not a multiple): ceil(steps / save_steps) checkpoints, each scored on validation.
        n_ckpt = math.ceil(steps / p.train.save_steps) if select and p.train.select_on_validation else 1
        notes = [note] if note else []
        if n_ckpt > 1:
            gens, judge = gens + n_ckpt * val.records, judge + n_ckpt * val.records * val.aspects
            notes.append(f"{n_ckpt} checkpoints scored on validation")
        plan.add(stage, gens, judge, steps, "; ".join(notes))

    for t, it in p.nlf.iterations.items():
        steps = it.max_steps or p.train.max_steps
        if pipeline == "default":
            plan.add(f"vac@{t} rollout", R)
            plan.add(f"vac@{t} signal", R * N, note=f"N={N} feedbacks per answer")
            plan.add(f"vac@{t} refine", R * N)
            plan.add(f"vac@{t} judge", judge_calls=R * (N + 1) * tr.aspects, note="N revisions + the initial answer")
            if p.nlf.train_feedback:
                training(f"vac@{t} train_feedback", steps, select=False)
            dpo = p.train.objective == "dpo"
            training(f"vac@{t} train_policy", steps, select=True, gens=2 * R, judge=R * tr.aspects if dpo else 0,
                     note="2R: a feedback by phi(t) + a revision per record" + (", <=R revisions judged" if dpo else ""))
            evaluate(f"vac@{t} evaluate")
            # The offline-RL baseline runs beside VAC, with the same N and budget.
            plan.add(f"offline_rl@{t} rollout", R * N)
            plan.add(f"offline_rl@{t} judge", judge_calls=R * N * tr.aspects)
            training(f"offline_rl@{t} train_policy", steps, select=True)
            evaluate(f"offline_rl@{t} evaluate")
        else:
            s = p.summary
            G, acc = s.num_generations, p.train.gradient_accumulation_steps
            plan.add(f"summary@{t} summarize", R, note="one summary per train record")
            plan.add(f"summary@{t} answer", R * s.n_answers)
            plan.add(f"summary@{t} rank", judge_calls=R * s.n_answers * tr.aspects)
            # training.train sets per_device_train_batch_size = G and TRL samples per_device_batch *
            # grad_acc completions per optimizer step (one process): steps * acc * G summaries.
            grpo_summaries = steps * acc * G
            if s.reward == "judge":
                plan.add(f"summary@{t} train_summarizer (GRPO)", 2 * grpo_summaries, grpo_summaries * tr.aspects, steps,
                         f"{grpo_summaries} summaries (G={G}), one answer + A judge calls each")
            else:
                plan.add(f"summary@{t} train_summarizer (GRPO)", grpo_summaries, 0, steps,
                         f"{grpo_summaries} summaries; no judge: rewards.PreferenceReward scores 2 answers "
                         "per summary (+2 without it, once per record)")
            if s.train_generator:
                training(f"summary@{t} train_generator (DPO)", steps, select=False)
            evaluate(f"summary@{t} evaluate", extra_gens=ev.records)  # + a summary per user
    if pipeline == "summary":
        for name in p.transfer.generators:
            # stages/transfer.py answers with 3 methods per generator: summary, no_pers, rag.
            plan.add(f"transfer {name}", 3 * ev.records, 3 * ev.records * ev.aspects, note="summary, no_pers, rag")
    return plan


def hours(row: Row, judge_per_s=None, gen_per_s=None, train_s_per_step=None) -> float | None:
    """Hours of a stage at the given throughputs (None when none is given)."""
    if not (judge_per_s or gen_per_s or train_s_per_step):
        return None
    return ((row.judge_calls / judge_per_s if judge_per_s else 0) + (row.generations / gen_per_s if gen_per_s else 0)
            + (row.train_steps * train_s_per_step if train_s_per_step else 0)) / 3600


def render(plan: Plan, judge_per_s: float | None = None, gen_per_s: float | None = None,
           train_s_per_step: float | None = None) -> str:
    c = plan.counts
    timed = bool(judge_per_s or gen_per_s or train_s_per_step)
    lines = ["records (mean rubric aspects): " + ", ".join(f"{k} {v.records} ({v.aspects:.1f})" for k, v in c.items()), "",
             "| stage | generations | judge calls | train steps |" + (" hours |" if timed else "") + " note |",
             "|---|---:|---:|---:|" + ("---:|" if timed else "") + "---|"]
    for r in plan.rows + [plan.totals()]:
        bold = "**" if r.stage == "total" else ""
        h = f" {hours(r, judge_per_s, gen_per_s, train_s_per_step):,.1f} |" if timed else ""
        lines.append(f"| {bold}{r.stage}{bold} | {r.generations:,} | {r.judge_calls:,} | {r.train_steps:,} |{h} {r.note} |")
    if timed:
        lines += ["", (f"hours at {judge_per_s or '-'} judge calls/s, {gen_per_s or '-'} generations/s, "
                       f"{train_s_per_step or '-'} s per train step (a missing rate counts as 0 h): "
                       f"about {hours(plan.totals(), judge_per_s, gen_per_s, train_s_per_step):,.1f} h in all")]
    return "\n".join(lines)


def as_dict(plan: Plan) -> dict[str, Any]:
    return {"counts": {k: vars(v) for k, v in plan.counts.items()}, "rows": [vars(r) for r in plan.rows],
            "total": vars(plan.totals())}


# ---------------------------------------------------------------- GPU memory (`--gpus`)

GIB = 1024 ** 3  # --gpu-memory-gb is in GiB, as nvidia-smi's MiB / 1024 (an "80 GB" A100 has 80 GiB)


class PlanError(ValueError):
    """A plan that cannot be made (unknown model size)."""


@dataclass(frozen=True)
class Shape:
    """What memory planning needs of a model. Encoders (retrievers) need only `params`."""

    params: int
    layers: int = 0
    hidden: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    intermediate: int = 0
    vocab: int = 0
    max_positions: int = 0
    source: str = ""

    def kv_bytes_per_token(self, tp: int = 1, dtype_bytes: int = 2) -> int:
        """K and V (2 tensors) per layer, kv_heads x head_dim values each. Under tensor parallelism
        a GPU keeps kv_heads / tp heads, and one replicated head when tp > kv_heads (vLLM)."""
        return 2 * self.layers * max(1, self.kv_heads // tp) * self.head_dim * dtype_bytes

    def lora_params(self, r: int, targets: str | list[str]) -> int:
        """LoRA adds r x (in + out) parameters per adapted linear layer (A: in x r, B: r x out).
        `all-linear` in PEFT = every linear layer of the blocks, not the output head."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        names = list(shapes) if targets == "all-linear" else [t for t in targets if t in shapes]
        return self.layers * sum(r * sum(shapes[n]) for n in names)


# The paper's hub models, and the embedded defaults for when they are not materialized, from each
# model's public config.json on the Hugging Face hub (hidden_size, num_hidden_layers,
# num_attention_heads, num_key_value_heads, head_dim or hidden/heads, intermediate_size, vocab_size,
# max_position_embeddings). Decoder parameter counts are decoder_params() of those configs, e.g.
# Qwen2.5-7B: 2 x 152064 x 3584 (untied embeddings + head) + 28 x 233,057,792 per block + 3584
# = 7,615,616,512 (the model card says 7.61B). Encoders: the BERT formula, pooler included.
KNOWN_MODELS = {
    "Qwen/Qwen2.5-7B-Instruct": Shape(7_615_616_512, 28, 3584, 28, 4, 128, 18944, 152064, 32768,
                                      "table: Qwen/Qwen2.5-7B-Instruct config.json"),
    # The model card rounds to 32.5B; the config's own count is 32.76B.
    "Qwen/Qwen2.5-32B-Instruct": Shape(32_763_876_352, 64, 5120, 40, 8, 128, 27648, 152064, 32768,
                                       "table: Qwen/Qwen2.5-32B-Instruct config.json"),
    # BERT-base: 12 layers, hidden 768, vocab 30522 (an encoder: no KV cache).
    "facebook/contriever-msmarco": Shape(109_482_240, source="table: facebook/contriever-msmarco (BERT-base)"),
    "embedded:smollm2-135m-instruct": Shape(134_515_008, 30, 576, 9, 3, 64, 1536, 49152, 8192,
                                            "table: HuggingFaceTB/SmolLM2-135M-Instruct config.json"),
    "embedded:gemma3-270m": Shape(268_098_176, 18, 640, 4, 1, 256, 2048, 262144, 32768,
                                  "table: google/gemma-3-270m config.json"),
    "embedded:all-minilm-l6-v2": Shape(22_713_216, source="table: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384)"),
}


def decoder_params(cfg: dict) -> int:
    """Parameters of a Llama/Qwen2-style decoder from its config.json: embeddings (+ an untied
    output head), per block q/k/v/o projections (+ q/k/v biases where the architecture has them:
    attention_bias, or Qwen2), a gated MLP (gate, up, down) and two RMSNorm weights; a final norm."""
    h, layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv, hd = cfg.get("num_key_value_heads", heads), cfg.get("head_dim") or h // heads
    v, i = cfg["vocab_size"], cfg["intermediate_size"]
    bias = bool(cfg.get("attention_bias")) or cfg.get("model_type") == "qwen2"
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h + (heads * hd + 2 * kv * hd if bias else 0)
    block = attn + 3 * h * i + 2 * h
    tied = cfg.get("tie_word_embeddings", True)  # transformers' PretrainedConfig default
    return v * h * (1 if tied else 2) + layers * block + h


def safetensors_params(folder: Path) -> int | None:
    """Exact parameter count from the safetensors headers (8-byte length + JSON of shapes), without
    reading the weights; None if the folder has no safetensors files."""
    total, files = 0, sorted(folder.glob("*.safetensors"))
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total if files else None


def shape_from_config(path: str | Path, source: str | None = None) -> Shape:
    """Shape from a config.json (a file, or the folder holding it; the folder's safetensors
    headers give the exact parameter count when present)."""
    path = Path(path)
    folder, cfg_file = (path.parent, path) if path.is_file() else (path, path / "config.json")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PlanError(f"{cfg_file}: cannot read a model config ({e})") from None
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
    counted = safetensors_params(folder)
    if "num_key_value_heads" not in cfg and "intermediate_size" in cfg and cfg.get("model_type") in ("bert", "roberta"):
        return Shape(counted or 0, source=source or str(cfg_file))  # an encoder: weights only
    try:
        heads = cfg["num_attention_heads"]
        return Shape(counted or decoder_params(cfg), cfg["num_hidden_layers"], cfg["hidden_size"], heads,
                     cfg.get("num_key_value_heads", heads), cfg.get("head_dim") or cfg["hidden_size"] // heads,
                     cfg.get("intermediate_size", 0), cfg.get("vocab_size", 0), cfg.get("max_position_embeddings", 0),
                     source or str(cfg_file))
    except KeyError as e:
        raise PlanError(f"{cfg_file}: no {e.args[0]} in the model config") from None


def model_shape(ref: str, models_dir=None, overrides: dict[str, str] | None = None) -> Shape:
    """A model's shape: --model-config first, then a local folder's config.json (embedded: names
    resolved with models.resolve), then KNOWN_MODELS."""
    from . import models

    if overrides and ref in overrides:
        return shape_from_config(overrides[ref], f"--model-config {overrides[ref]}")
    try:
        local = Path(models.resolve(ref, models_dir))
    except models.ModelError:
        local = None  # an embedded model not materialized yet: the table has it
    if local is not None and (local / "config.json").exists():
        return shape_from_config(local)
    if ref in KNOWN_MODELS:
        return KNOWN_MODELS[ref]
    raise PlanError(f"size of model {ref!r} unknown: pass --model-config '{ref}=path/to/config.json'")


@dataclass
class Load:
    """One model resident on the GPU during a phase of a stage."""

    role: str  # as printed, e.g. "policy pi(1)"
    cfg: RoleConfig | None  # the role's settings (None for the retriever)
    kind: str  # "generate" | "train" | "encode"
    model: str = ""
    objective: str = ""  # train: sft | dpo | grpo
    shared: list[RoleConfig] = field(default_factory=list)  # other roles served by this engine

    @property
    def backend(self) -> str:
        return "trainer" if self.kind == "train" else "encoder" if self.kind == "encode" else self.cfg.backend


@dataclass
class Phase:
    stage: str
    what: str
    loads: list[Load]


def _dedupe(loads: list[Load]) -> list[Load]:
    """Roles that evaluate.BackendPool serves from one engine count once (same engine_key)."""
    from .evaluate import BackendPool
    from .io import stable_hash

    # BackendPool.engine_key where it exists (hf roles of one model share weights), else the
    # pool's older rule: everything but sampling equal.
    engine_key = getattr(BackendPool, "engine_key", None) or (
        lambda role: stable_hash(role.model_dump(exclude=BackendPool.SAMPLING_FIELDS)))
    out, seen = [], {}
    for ld in loads:
        if ld.kind != "generate":
            out.append(ld)
            continue
        key = engine_key(ld.cfg)
        if key in seen:
            seen[key].role += " = " + ld.role
            seen[key].shared.append(ld.cfg)
        else:
            seen[key] = replace(ld)  # a copy: the same Load object appears in many phases
            out.append(seen[key])
    return out


def phases(params: Params, pipeline: str = "default") -> list[Phase]:
    """Models resident at once, per stage and phase, as the stage code holds them. A stage's
    evaluate.BackendPool releases what the next phase does not use (keep_only): evaluation answers,
    then judges; VAC's train_policy frees phi(t) before pi(t-1) revises; training starts after the
    stage's pool is closed. Adapters are written as pi(t) / phi(t) (None at t=0: the base model)."""
    p, m = params, params.models
    out: list[Phase] = []

    def gen(name: str, adapter: str | None = None, role: RoleConfig | None = None) -> Load:
        cfg = (role or getattr(m, name)).model_copy(update={"adapter": adapter})
        return Load(name + (f" {adapter}" if adapter else ""), cfg, "generate", cfg.model)

    def train(name: str, objective: str) -> Load:
        cfg = getattr(m, name)
        return Load(f"{name} ({objective})", cfg, "train", cfg.model, objective)

    def add(stage, what, *loads):
        out.append(Phase(stage, what, _dedupe(list(loads))))

    judge = gen("judge")
    # stages/index.py: the retriever encodes profiles and questions, alone.
    add("index", "encode", Load("retriever", None, "encode", p.retrieval.encoder))
    # evaluate.evaluate_method: the policy answers; its engine is released; the judge scores.
    for meth in BASELINE_METHODS:
        if meth == "planpers":
            if p.planner_sft.enabled:  # planner.train_planner: LoRA SFT of the planner, alone
                add("train_planner", "train", train("planner", "sft"))
            planner = gen("planner", "planner_sft" if p.planner_sft.enabled else None)
            add("baseline_planpers", "plan + answer", planner, gen("policy"))
            add("baseline_planpers", "judge", judge)
        else:
            add(f"baseline_{meth}", "answer", gen("policy"))
            add(f"baseline_{meth}", "judge", judge)

    def adapter(kind: str, t: str) -> str | None:
        return None if t == "0" else f"{kind}({t})"

    select = p.train.select_on_validation
    for t, it in p.nlf.iterations.items():
        prev = it.prev
        steps = it.max_steps or p.train.max_steps
        validate = select and math.ceil(steps / p.train.save_steps) > 1
        if pipeline == "default":
            pi, phi = adapter("pi", prev), adapter("phi", prev)
            phi_t = f"phi({t})" if p.nlf.train_feedback else None  # frozen: phi stays the base model
            s = f"vac@{t}"
            add(f"{s} rollout", "answer", gen("policy", pi))
            add(f"{s} signal", "N feedbacks", gen("feedback", phi))
            add(f"{s} refine", "N revisions", gen("policy", pi))
            add(f"{s} judge", "judge", judge)
            if p.nlf.train_feedback:
                add(f"{s} train_feedback", "train", train("feedback", "sft"))
            # modes/nlf.train_policy: phi(t) writes the feedback, is released, pi(t-1) revises.
            add(f"{s} train_policy", "feedback", gen("feedback", phi_t))
            add(f"{s} train_policy", "revision", gen("policy", pi))
            if p.train.objective == "dpo":
                add(f"{s} train_policy", "judge revisions", judge)
            add(f"{s} train_policy", "train", train("policy", p.train.objective))
            if validate:  # loop.select_checkpoint: evaluate_method per checkpoint
                add(f"{s} train_policy", "validation answer", gen("policy", "checkpoint"))
                add(f"{s} train_policy", "validation judge", judge)
            add(f"{s} evaluate", "answer", gen("policy", f"pi({t})"))
            add(f"{s} evaluate", "judge", judge)
            o, pi = f"offline_rl@{t}", adapter("pi_rl", prev)
            add(f"{o} rollout", "N answers", gen("policy", pi))
            add(f"{o} judge", "judge", judge)
            add(f"{o} train_policy", "train", train("policy", p.train.objective))
            if validate:
                add(f"{o} train_policy", "validation answer", gen("policy", "checkpoint"))
                add(f"{o} train_policy", "validation judge", judge)
            add(f"{o} evaluate", "answer", gen("policy", f"pi_rl({t})"))
            add(f"{o} evaluate", "judge", judge)
        else:
            gp, sp = adapter("gen", prev), adapter("sum", prev)
            s = f"summary@{t}"
            add(f"{s} summarize", "summaries", gen("summarizer", sp))
            add(f"{s} answer", "answers", gen("generator", gp))
            add(f"{s} rank", "judge", judge)
            # modes/summary.train_summarizer: the reward's generator (+ judge) beside the GRPO trainer.
            reward = [gen("generator", gp)] + ([judge] if p.summary.reward == "judge" else [])
            add(f"{s} train_summarizer (GRPO)", "train", *reward, train("summarizer", "grpo"))
            if p.summary.train_generator:
                add(f"{s} train_generator (DPO)", "train", train("generator", "dpo"))
            add(f"{s} evaluate", "summaries", gen("summarizer", f"sum({t})"))
            add(f"{s} evaluate", "answer", gen("generator", f"gen({t})"))
            add(f"{s} evaluate", "judge", judge)
    if pipeline == "summary":
        for name, role in p.transfer.generators.items():
            add(f"transfer {name}", "answer", gen(name, role=role))
            add(f"transfer {name}", "judge", judge)
    return out


@dataclass
class Need:
    """GiB on each GPU a load occupies (GPUs 0..tp-1)."""

    load: Load
    tp: int = 1
    weights: float = 0.0
    kv: float = 0.0
    train: float = 0.0
    held: float = 0.0  # what it holds on each of its GPUs (vLLM: its gpu_memory_utilization share)
    problem: str = ""
    note: str = ""


def _dtype_bytes(cfg: RoleConfig | None) -> int:
    # "auto" loads bf16 on CUDA (llm/hf.pick_dtype; vLLM takes the config's bfloat16 for these models).
    return 4 if cfg is not None and cfg.dtype == "float32" else 2


def need(ld: Load, shape: Shape, params: Params, gpus: int, gpu_gib: float, kv_seqs: int | None = None) -> Need:
    """Memory of one load. Formulas (bytes; P params, b bytes per weight, L layers, h hidden,
    V vocab, s tokens per sequence, B sequences):
      weights   P * b / tp
      KV cache  B * s * 2 * L * kv_heads/tp * head_dim * b          (Shape.kv_bytes_per_token)
      vLLM      holds gpu_memory_utilization * GPU memory on each of its tp GPUs, and refuses to
                start unless weights + one max_model_len sequence's KV fit in it
      training  (LoRA, bf16 base, one process per GPU)
                base weights P*b
                + 16 bytes per LoRA parameter: fp32 weight 4 + gradient 4 + Adam's two moments 8
                  (PEFT keeps adapter weights in fp32; torch AdamW keeps exp_avg and exp_avg_sq)
                + activations, gradient checkpointing on: 2*L*s*B*h (each block's bf16 input) +
                  34*s*B*h (one block recomputed: Korthikanti et al. 2022, "Reducing Activation
                  Recomputation in Large Transformer Models", eq. 1, without the 5*a*s/h attention-
                  score term that fused attention kernels do not store); off: 34*s*B*h*L
                + logits: s*B*V*(2 + 4) (bf16 logits and the fp32 copy the loss makes)
                B = per_device_batch_size (x2 for DPO: chosen and rejected), s = train.max_length;
                GRPO: B = G completions of summarizer max_input_tokens + max_new_tokens, plus the KV
                cache of their generation."""
    b, cfg = _dtype_bytes(ld.cfg), ld.cfg
    n = Need(ld)
    if ld.kind == "encode":  # sentence-transformers loads float32 weights
        n.weights = n.held = shape.params * 4 / GIB
        return n
    if cfg.backend == "openai":
        n.note = "remote server: no local GPU memory"
        return n
    if ld.kind == "train":
        t = params.train
        colocated = 0.0
        if ld.objective == "grpo":
            B, s = params.summary.num_generations, cfg.max_input_tokens + cfg.max_new_tokens
            if cfg.backend != "vllm":  # the trainer samples with transformers: its KV cache
                n.kv = B * s * shape.kv_bytes_per_token(1, b) / GIB
            elif params.summary.grpo_vllm_mode == "colocate":
                # TRL's vLLM engine in the training process: a second copy of the weights and its
                # KV cache, in the summarizer's gpu_memory_utilization share of the GPU.
                colocated = cfg.gpu_memory_utilization * gpu_gib
                n.kv = colocated - shape.params * b / GIB
                n.note = f"+ TRL's colocated vLLM engine ({cfg.gpu_memory_utilization:g} of the GPU)"
                one_seq = shape.params * b / GIB + s * shape.kv_bytes_per_token(1, b) / GIB
                if colocated < one_seq:
                    n.problem = (f"TRL's colocated vLLM gets {colocated:.1f} GiB (gpu_memory_utilization "
                                 f"{cfg.gpu_memory_utilization:g}) < {one_seq:.1f} GiB of weights + one {s}-token "
                                 "sequence's KV; raise the summarizer's gpu_memory_utilization")
                if cfg.tensor_parallel_size != 1:
                    n.problem = (f"GRPO trains in one process, so TRL's colocated vLLM cannot use tensor_parallel_size "
                                 f"{cfg.tensor_parallel_size}; set it to 1, or summary.grpo_vllm_mode: server")
            else:
                n.note = "samples through `trl vllm-serve` (its own GPUs)"
        else:
            B, s = t.per_device_batch_size * (2 if ld.objective == "dpo" else 1), t.max_length
        checkpointing = getattr(t, "gradient_checkpointing", "auto") in ("auto", True)  # auto = on with CUDA
        acts = (2 * shape.layers + 34) * s * B * shape.hidden if checkpointing else 34 * s * B * shape.hidden * shape.layers
        lora = shape.lora_params(t.lora_r, t.target_modules) * 16
        n.weights = shape.params * b / GIB
        n.train = (lora + acts + s * B * shape.vocab * 6) / GIB
        n.held = n.weights + n.train + (colocated or n.kv)  # the colocated share holds its own weights
        if n.held > gpu_gib and not n.problem:
            n.problem = (f"LoRA training needs {n.held:.1f} GiB ({n.weights:.1f} weights + {n.train:.1f} adapter, optimizer, "
                         f"activations, logits{f' + {colocated:.1f} colocated vLLM' if colocated else ''}) > {gpu_gib:g} GiB per GPU")
        return n
    # Generation: one sequence is the engine's context (vLLM: max_model_len, else the model's
    # maximum; hf: the prompt budget + new tokens).
    if cfg.backend == "vllm":
        s = cfg.max_model_len or shape.max_positions or cfg.max_input_tokens + cfg.max_new_tokens
        n.tp = tp = cfg.tensor_parallel_size
        share = cfg.gpu_memory_utilization * gpu_gib

        def fits(tp):
            return shape.params * b / tp / GIB + s * shape.kv_bytes_per_token(tp, b) / GIB <= share

        while not fits(tp) and tp * 2 <= gpus and shape.heads % (tp * 2) == 0:
            tp *= 2  # vLLM splits the attention heads evenly: tp must divide them
        if tp > gpus:
            n.problem = (f"tensor_parallel_size {tp} needs {tp} GPUs, --gpus is {gpus} "
                         f"(its weights alone: {shape.params * b / GIB:.1f} GiB)")
        n.weights, n.held = shape.params * b / tp / GIB, share
        n.kv = share - n.weights  # what vLLM gives its KV cache (less its activation peak)
        if not fits(tp) and not n.problem:
            n.problem = (f"{n.weights:.1f} GiB of weights + one {s}-token sequence's KV "
                         f"({s * shape.kv_bytes_per_token(tp, b) / GIB:.1f} GiB) > its share "
                         f"{cfg.gpu_memory_utilization:g} x {gpu_gib:g} GiB" + ("" if gpus > tp else
                                                                                 " (tensor parallel needs more GPUs)"))
        if tp > cfg.tensor_parallel_size:
            n.note = f"split over {tp} GPUs: set tensor_parallel_size: {tp}"
        n.tp = tp
        if not n.problem:
            n.note = (n.note + "; " if n.note else "") + f"KV room ~{n.kv / (s * shape.kv_bytes_per_token(tp, b) / GIB):.0f} x {s} tokens"
        return n
    # hf: one GPU; the cache of one batch (the largest of the roles sharing the model).
    tokens = max((kv_seqs or c.batch_size) * (c.max_input_tokens + c.max_new_tokens) for c in [cfg, *ld.shared])
    n.weights, n.kv = shape.params * b / GIB, tokens * shape.kv_bytes_per_token(1, b) / GIB
    n.held = n.weights + n.kv
    if n.held > gpu_gib:
        n.problem = f"hf backend: {n.held:.1f} GiB on one GPU > {gpu_gib:g} GiB (no tensor parallelism: use vllm)"
    return n


@dataclass
class PhasePlan:
    phase: Phase
    needs: list[Need]
    gpu0: float  # GiB on GPU 0, which every resident model uses
    failure: str = ""  # "stage S, role R: why"; empty when it fits


def gpu_plan(params: Params, gpus: int, gpu_gib: float, models_dir=None, overrides=None,
             kv_seqs: int | None = None, pipeline: str = "default") -> list[PhasePlan]:
    """Each phase's models on the GPUs. In-process engines (vLLM `LLM`, hf models) all start on
    device 0, so what a phase holds at once adds up on GPU 0; further GPUs serve only tensor-parallel
    shards and training processes. The first load that overflows a GPU names the failure."""
    shapes: dict[str, Shape] = {}
    out = []
    for ph in phases(params, pipeline):
        needs = []
        for ld in ph.loads:
            if ld.model not in shapes:
                shapes[ld.model] = model_shape(ld.model, models_dir, overrides)
            needs.append(need(ld, shapes[ld.model], params, gpus, gpu_gib, kv_seqs))
        gpu0, failure = 0.0, ""
        for n in needs:
            gpu0 += n.held
            why = n.problem or (f"{gpu0:.1f} GiB resident at once on GPU 0 > {gpu_gib:g} GiB" if gpu0 > gpu_gib + 1e-9 else "")
            if why and not failure:
                failure = f"stage {ph.stage} ({ph.what}), role {n.load.role}: {why}"
        out.append(PhasePlan(ph, needs, gpu0, failure))
    return out


def _short(ref: str) -> str:
    return ref.split(":")[-1].rstrip("/").split("/")[-1]


def render_gpu(plan: list[PhasePlan], gpus: int, gpu_gib: float, row_hours: dict[str, float] | None = None) -> str:
    lines = [f"GPU memory on {gpus} x {gpu_gib:g} GiB (GiB per GPU; models resident at once share GPU 0):", "",
             "| stage | phase | resident at once | weights | KV cache | training | GPU 0 | fits |" +
             (" hours |" if row_hours else ""), "|---|---|---|---:|---:|---:|---:|---|" + ("---:|" if row_hours else "")]
    notes, shown = [], set()
    for pp in plan:
        res = "; ".join(f"{n.load.role}: {_short(n.load.model)} {n.load.backend}" +
                        (f" tp{n.tp}" if n.tp > 1 else "") +
                        (f" ({n.load.cfg.gpu_memory_utilization:g})" if n.load.backend == "vllm" else "")
                        for n in pp.needs)
        tot = {a: sum(getattr(n, a) for n in pp.needs) for a in ("weights", "kv", "train")}
        h = ""
        if row_hours:
            first = pp.phase.stage not in shown
            h = f" {row_hours.get(pp.phase.stage, 0.0):,.1f} |" if first else " |"
        shown.add(pp.phase.stage)
        lines.append(f"| {pp.phase.stage} | {pp.phase.what} | {res} | {tot['weights']:.1f} | {tot['kv']:.1f} | "
                     f"{tot['train']:.1f} | {pp.gpu0:.1f} | {'no' if pp.failure else 'yes'} |{h}")
        for n in pp.needs:
            share = f" {n.load.cfg.gpu_memory_utilization:g}" if n.load.backend == "vllm" else ""
            what = f"{_short(n.load.model)} ({n.load.backend}{share})"
            if n.note and (what, n.note) not in notes:
                notes.append((what, n.note))
    used = max((n.tp for pp in plan for n in pp.needs), default=1)
    lines += [""] + [f"- {r}: {t}" for r, t in notes] + [
              (f"- GPUs in use: at most {min(used, gpus)} of {gpus} (tensor-parallel shards; the stages run their "
               "engines in one process, so further GPUs help only training processes or `vllm serve` replicas "
               "via backend: openai)"),
              ("- vLLM rows hold gpu_memory_utilization x GPU memory (weights + what it leaves to the KV cache); "
               "training = LoRA states, activations (gradient checkpointing) and logits; formulas: plan.need().")]
    return "\n".join(lines)
