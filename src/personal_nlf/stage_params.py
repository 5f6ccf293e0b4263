"""Which params each stage reads, in one table, and a guard that holds stages to it.

`reads(argv)` gives the dotted params keys that the stage started with `argv` (its
`python stages/<x>.py ...` command line) reads. tests/test_dvc_graph.py checks that the `params` of
every stage of both pipelines (dvc.yaml, pipelines/summary/dvc.yaml) equal this set, so `dvc exp
run -S key=value` reruns exactly the stages whose result can change. `guard(params, keys)` wraps
the validated Params so that reading an undeclared key raises `UndeclaredParamError` (on with
PERSONAL_NLF_PARAMS_GUARD=1, see stage.run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Never a DVC param: MLflow logging changes no stage output.
EXEMPT = frozenset({"tracking"})

_BASELINE = {"seed", "data.domains", "models.policy", "models.judge", "judge", "baselines"}
_LOOP_COMMON = {"seed", "data.domains", "nlf.max_train_records_per_domain"}
# Per loop and step; "{t}" is the iteration (--t).
_STEPS: dict[str, dict[str, set[str]]] = {
    "nlf": {
        "rollout": _LOOP_COMMON | {"models.policy"},
        "signal": _LOOP_COMMON | {"models.feedback", "nlf.n_feedback"},
        "refine": _LOOP_COMMON | {"models.policy"},
        "judge": _LOOP_COMMON | {"models.judge", "judge", "nlf.n_feedback"},
        "train_feedback": _LOOP_COMMON | {"models.feedback", "train", "nlf.train_feedback", "nlf.iterations.{t}",
                                          "nlf.feedback_target", "nlf.n_feedback"},
        "train_policy": _LOOP_COMMON | {"models.policy", "models.feedback", "models.judge", "judge", "train",
                                        "baselines", "nlf.iterations.{t}", "nlf.policy_feedback_temperature"},
        "evaluate": _LOOP_COMMON | {"models.policy", "models.judge", "judge", "baselines"},
    },
    "offline_rl": {
        "rollout": _LOOP_COMMON | {"nlf.n_feedback", "models.policy", "offline_rl"},
        "judge": _LOOP_COMMON | {"nlf.n_feedback", "models.judge", "judge"},
        "train_policy": _LOOP_COMMON | {"models.policy", "models.judge", "judge", "train", "baselines",
                                        "nlf.iterations.{t}"},
        "evaluate": {"seed", "data.domains", "models.policy", "models.judge", "judge", "baselines"},
    },
}
# Summary mode: every step reads its section; the summarizer's GRPO reward judges the generator's
# answers; evaluation compares the context with RAG's at k.
_SUMMARY = _LOOP_COMMON | {"summary"}
_STEPS["summary"] = {
    "summarize": _SUMMARY | {"models.summarizer"},
    "answer": _SUMMARY | {"models.generator"},
    "rank": _SUMMARY | {"models.judge", "judge"},
    "train_summarizer": _SUMMARY | {"models.summarizer", "models.generator", "models.judge", "judge", "train",
                                    "nlf.iterations.{t}"},
    "train_generator": _SUMMARY | {"models.generator", "train", "nlf.iterations.{t}"},
    "evaluate": _SUMMARY | {"models.summarizer", "models.generator", "models.judge", "judge", "baselines",
                            "retrieval.k"},
}


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def reads(argv: list[str]) -> set[str]:
    """Params keys read by the stage `python <argv...>`."""
    script = Path(argv[0]).stem
    if script == "base_model":
        return {"base_model", "transfer"} if "--for-transfer" in argv else {"base_model"}
    if script == "prepare":
        return {"data"}
    if script == "index":
        return {"seed", "retrieval", "data.domains", "data.splits"}
    if script == "baseline":
        return _BASELINE | ({"models.planner"} if _flag(argv, "--method") == "planpers" else set())
    if script == "train_planner":
        return {"seed", "data.domains", "models.planner", "train", "planner_sft"}
    if script == "iteration":
        loop, step = _flag(argv, "--loop"), _flag(argv, "--step")
        if step == "init":  # the untrained models
            return set()
        keys = _STEPS[loop][step]
        if "nlf.iterations.{t}" not in keys:  # every step looks up which iteration it continues
            keys = keys | {"nlf.iterations.{t}.prev"}
        return {k.format(t=_flag(argv, "--t")) for k in keys}
    if script == "export":
        return {"nlf.iterations", "summary", "models.summarizer"}
    if script == "transfer":
        return _BASELINE | {"transfer"}
    if script == "report":
        return {"seed", "nlf.iterations", "data.source", "models.policy.model", "models.judge.model",
                "judge.method", "baselines.eval_split"}
    raise KeyError(f"stage script {script!r} has no entry in stage_params.reads")


STAGE_SCRIPTS = {"base_model", "prepare", "index", "baseline", "train_planner", "iteration", "export", "transfer",
                 "report"}


def is_stage(argv: list[str]) -> bool:
    """Whether `argv` runs one of the pipeline's stage scripts (others, e.g. test drivers, are not guarded)."""
    return Path(argv[0]).stem in STAGE_SCRIPTS and Path(argv[0]).parent.name == "stages"


class UndeclaredParamError(RuntimeError):  # not AttributeError: hasattr() must not hide it
    """A stage read a params key it does not declare (stage_params.reads, dvc.yaml)."""


class Guarded:
    """Read-only view of a params subtree: declared keys pass, others raise.

    A declared key returns the real value; a key with declared keys below it returns another
    view; `model_dump()` gives only the declared part (what a stage may log)."""

    def __init__(self, obj: Any, keys: frozenset[str], path: str = ""):
        self._obj, self._keys, self._path = obj, keys, path

    def _child(self, name: str, value: Any) -> Any:
        full = f"{self._path}.{name}" if self._path else name
        if full in EXEMPT or any(full == k or full.startswith(k + ".") for k in self._keys):
            return value
        if any(k.startswith(full + ".") for k in self._keys):
            return Guarded(value, self._keys, full)
        raise UndeclaredParamError(
            f"stage reads params key '{full}' but does not declare it: add it to "
            f"src/personal_nlf/stage_params.py and to the stage's params in dvc.yaml")

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("_", "model_")):  # pydantic internals
            return getattr(self._obj, name)
        return self._child(name, getattr(self._obj, name))

    def __getitem__(self, key: str) -> Any:  # dict sections, e.g. nlf.iterations["1"]
        return self._child(key, self._obj[key])

    def __contains__(self, key: str) -> bool:  # membership of a dict's keys is not a read of values
        return key in self._obj

    def __iter__(self):
        return iter(self._obj)

    def model_dump(self, **kw) -> dict:
        is_dict = isinstance(self._obj, dict)
        out: dict = {}
        for name in (self._obj if is_dict else type(self._obj).model_fields):
            try:
                child = self._child(name, self._obj[name] if is_dict else getattr(self._obj, name))
            except UndeclaredParamError:
                continue
            out[name] = child.model_dump(**kw) if hasattr(child, "model_dump") else child
        return out


def guard(params: Any, keys: set[str]) -> Any:
    return Guarded(params, frozenset(keys))
