"""Optional planner training for the PlanPers baseline: LoRA SFT of the planner on
(planner prompt -> the train split's rubric aspects as a plan), with TRL's SFTTrainer and the
`train` settings. The prompt holds only the question and the user's own retrieved profile; the
rubric is the *target*, and only train-split rubrics are used (never the evaluation split's)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import evaluate, prompts, training
from .config import Params
from .io import write_json_atomic, write_jsonl_atomic

log = logging.getLogger("personal_nlf")


def training_rows(recs: list[evaluate.EvalRecord]) -> list[dict]:
    rows = []
    for er in recs:
        if er.split != "train":
            raise ValueError(f"planner training uses the train split only, got {er.split!r} ({er.key})")
        plan = json.dumps({"aspects": [a.aspect for a in er.record.rubric_aspects]}, ensure_ascii=False)
        rows.append(training.sft_row(prompts.planner(er.record.question, er.own), plan))
    return rows


def train_planner(params: Params, prepared, index, models_dir, out: Path) -> dict:
    """Writes out/state.json ({"adapter": path or null}); trains only if planner_sft.enabled."""
    if not params.planner_sft.enabled:
        write_json_atomic(out / "state.json", {"adapter": None, "trained": False})
        return {"trained": 0}
    recs = evaluate.load_eval_records(prepared, index, params.data.domains, "train")
    rows = training_rows(recs)
    write_jsonl_atomic(out / "planner_data.jsonl", rows)
    work = out.parent / f".{out.name}.work.partial"  # beside the output: DVC deletes outs, not this
    result = training.fit_and_export("sft", rows, params.models.planner, models_dir, params.train, out, work,
                                     seed=params.seed, state={"trained": True})
    return {"trained": 1, **result}
