"""Which params each stage reads, in one table, and a guard that holds stages to it.

`reads(argv, mode)` gives the dotted params keys that the stage started with `argv` (its
`python stages/<x>.py ...` command line) reads. tests/test_dvc_graph.py checks that dvc.yaml's
`params` of every stage equals this set, so `dvc exp run -S key=value` reruns exactly the stages
whose result can change. `guard(params, keys)` wraps the validated Params so that reading an
undeclared key raises `UndeclaredParamError` (on with PERSONAL_NLF_PARAMS_GUARD=1, see stage.run).

The loop stages of dvc.yaml run the loop named by the `mode` param (`${mode}` templating); DVC
cannot make a stage's params list depend on a param's value, so dvc.yaml declares for them the
union over the modes, while `reads` (and so the guard) gives what the running mode reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Never a DVC param: MLflow logging changes no stage output.
EXEMPT = frozenset({"tracking"})
MODES = ("nlf", "summary")

_BASELINE = {"seed", "data.domains", "models.policy", "models.judge", "judge", "baselines"}
_LOOP_COMMON = {"seed", "data.domains", "nlf.max_train_records_per_domain"}
_SUMMARY = {"summary", "models.summarizer", "models.generator"}
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
# Summary mode: the same skeleton as VAC (refine does nothing) plus its own section and roles.
_STEPS["summary"] = {s: k | _SUMMARY if s != "refine" else k for s, k in _STEPS["nlf"].items()}
# The summarizer's GRPO reward judges the generator's answers; evaluation compares with RAG at k.
_STEPS["summary"]["train_feedback"] |= {"models.judge", "judge"}
_STEPS["summary"]["evaluate"] |= {"retrieval.k"}


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def reads(argv: list[str], mode: str) -> set[str]:
    """Params keys read by the stage `python <argv...>` when params `mode` is `mode`."""
    script = Path(argv[0]).stem
    if script == "base_model":
        return {"mode", "base_model", "transfer"} if "--for-transfer" in argv else {"base_model"}
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
        if step == "init":  # the untrained models: only which loop (params `mode` unless --loop)
            return set() if loop else {"mode"}
        keys = _STEPS[loop or mode][step]
        if "nlf.iterations.{t}" not in keys:  # every step looks up which iteration it continues
            keys = keys | {"nlf.iterations.{t}.prev"}
        return {k.format(t=_flag(argv, "--t")) for k in keys} | (set() if loop else {"mode"})
    if script == "export":
        return {"mode", "nlf.iterations", "summary", "models.summarizer"}
    if script == "transfer":
        return _BASELINE | {"mode", "transfer"}
    if script == "report":
        return {"seed", "mode", "nlf.iterations", "data.source", "models.policy.model", "models.judge.model",
                "judge.method", "baselines.eval_split"}
    raise KeyError(f"stage script {script!r} has no entry in stage_params.reads")


STAGE_SCRIPTS = {"base_model", "prepare", "index", "baseline", "train_planner", "iteration", "export", "transfer",
                 "report"}


def is_stage(argv: list[str]) -> bool:
    """Whether `argv` runs one of the pipeline's stage scripts (others, e.g. test drivers, are not guarded)."""
    return Path(argv[0]).stem in STAGE_SCRIPTS and Path(argv[0]).parent.name == "stages"


def declared_union(argv: list[str]) -> set[str]:
    """What dvc.yaml must declare: a `${mode}` stage can run any mode's loop."""
    return set().union(*(reads(argv, m) for m in MODES))


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
