"""The pipelines tell DVC the truth: each stage's deps (dvc.yaml and pipelines/summary/dvc.yaml)
list the files of its script's import closure within src/personal_nlf (lazy imports inside
functions included), and its params are exactly what src/personal_nlf/stage_params.py says the
stage reads. Stages come from DVC's own parser, so foreach and `${...}` templating expand exactly
as `dvc repro` expands them."""

from __future__ import annotations

import ast
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from personal_nlf import stage_params
from personal_nlf.config import load_params

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = "personal_nlf"
# Deps that are data, models or results, not code: not part of this check.
DATA_PREFIXES = ("data", "models/", "outputs/", "metrics/", "exports")
PIPELINES = ("dvc.yaml", "pipelines/summary/dvc.yaml")


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def imported_modules(file: Path, module: str) -> set[str]:
    """Modules of personal_nlf that `file` (module `module`) imports anywhere in its body."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . / .. / .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # kept below only if a module
    return {m for m in found if m.split(".")[0] == PKG and module_file(m)}


def closure(script: Path, extra: set[str] = frozenset()) -> set[str]:
    """Repo-relative files run by `python script`: its own file, every personal_nlf module it
    imports transitively, and the packages (__init__.py) those live in."""
    todo = imported_modules(script, "__main__") | set(extra)
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parents = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
        todo |= parents | imported_modules(module_file(m), m)
    return {str(script.relative_to(ROOT))} | {str(module_file(m).relative_to(ROOT)) for m in seen}


def dynamic_imports(argv: list[str]) -> set[str]:
    # modes.get() imports the loop named by --loop (importlib).
    if Path(argv[0]).stem == "iteration" and "--loop" in argv:
        return {f"{PKG}.modes.{argv[argv.index('--loop') + 1]}"}
    return set()


def dvc_stages(tmp_path: Path, params_file: Path = ROOT / "params.yaml") -> list[tuple[str, list[str], list[str], list[str]]]:
    """(name, argv, deps, params) of every stage of both pipelines (a stage of the summary
    pipeline is named `pipelines/summary/dvc.yaml:<stage>`), as DVC expands them with
    `params_file` as params.yaml."""
    from dvc.repo import Repo

    work = tmp_path / "repo"
    (work / ".dvc").mkdir(parents=True)
    for f in PIPELINES:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, work / f)
    shutil.copy(params_file, work / "params.yaml")
    out = []
    for s in Repo(str(work), uninitialized=True).index.stages:
        deps = [d.def_path for d in s.deps if not hasattr(d, "params")]
        params = [k for d in s.deps if hasattr(d, "params") for k in d.params]
        file = Path(s.dvcfile.path).relative_to(work).as_posix()
        out.append((s.name if file == "dvc.yaml" else f"{file}:{s.name}", shlex.split(s.cmd)[1:], deps, params))
    return out


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return dvc_stages(tmp_path_factory.mktemp("dvc"))


def test_both_pipelines_are_parsed(stages):
    names = {name for name, *_ in stages}
    assert {"rollout@1", "offline_rl_evaluate@2", "report"} <= names
    assert {"pipelines/summary/dvc.yaml:summarize@1", "pipelines/summary/dvc.yaml:export"} <= names


def test_paper_preset_holds_every_param_a_stage_declares(tmp_path):
    """`cp configs/paper.yaml params.yaml && dvc repro` (the README's GPU recipe): DVC fails a stage
    whose declared params are missing from params.yaml (after running it), so the preset must hold
    every key that a stage of either pipeline declares, as its iterations expand."""
    preset = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())

    def holds(key: str) -> bool:
        node = preset
        for part in key.split("."):
            if not (isinstance(node, dict) and part in node):
                return False
            node = node[part]
        return True

    stages = dvc_stages(tmp_path, ROOT / "configs/paper.yaml")
    assert "evaluate@3" in {name for name, *_ in stages}  # the preset's T = 3
    missing = sorted({k for name, _, _, params in stages for k in params if not holds(k)})
    assert missing == [], f"configs/paper.yaml lacks params that stages declare: {missing}"


def test_closure_follows_relative_lazy_and_package_imports(tmp_path):
    # iteration.py -> modes (package) -> ..config; evaluate imports llm, whose hf backend is lazy.
    files = closure(ROOT / "stages" / "iteration.py", {f"{PKG}.modes.nlf"})
    for f in ("src/personal_nlf/__init__.py", "src/personal_nlf/modes/__init__.py", "src/personal_nlf/modes/nlf.py",
              "src/personal_nlf/config.py", "src/personal_nlf/llm/__init__.py", "src/personal_nlf/llm/hf.py"):
        assert f in files
    assert "src/personal_nlf/modes/summary.py" not in files


def code_deps(stages) -> dict[str, tuple[set[str], set[str]]]:
    """stage -> (the closure it needs, its code deps in its dvc.yaml)."""
    return {name: (closure(ROOT / argv[0], dynamic_imports(argv)), {d for d in deps if not d.startswith(DATA_PREFIXES)})
            for name, argv, deps, _ in stages if argv[0].startswith("stages/")}


def test_deps_cover_the_import_closure_and_nothing_else(stages):
    problems = set()
    for name, (need, listed) in code_deps(stages).items():
        problems |= {f"{name}: missing dep {f}" for f in need - listed}
        problems |= {f"{name}: dep {f} is not imported (a folder? list its files)" for f in listed - need}
    assert not problems, "deps differ from the import closure:\n" + "\n".join(sorted(problems))


def test_params_are_what_each_stage_reads(stages):
    problems = set()
    for name, argv, _, params in stages:
        if not argv[0].startswith("stages/"):
            continue
        want = stage_params.reads(argv)
        problems |= {f"{name}: declares {k} but never reads it" for k in set(params) - want}
        problems |= {f"{name}: reads {k} but does not declare it" for k in want - set(params)}
    assert not problems, "params differ from stage_params.reads:\n" + "\n".join(sorted(problems))


def test_vac_reads_nothing_of_summary_mode():
    vac = ["stages/iteration.py", "--loop", "nlf", "--step", "rollout", "--t", "1"]
    assert not stage_params.reads(vac) & {"summary", "models.summarizer", "models.generator"}
    assert "summary" in stage_params.reads(["stages/iteration.py", "--loop", "summary", "--step", "summarize",
                                            "--t", "1"])


def test_guard_passes_declared_keys_and_raises_on_others():
    params = load_params(ROOT / "params.yaml")
    g = stage_params.guard(params, {"seed", "models.policy", "nlf.iterations.1", "data.domains"})
    assert g.seed == params.seed
    assert g.models.policy == params.models.policy
    assert g.nlf.iterations["1"] == params.nlf.iterations["1"]
    assert "2" in g.nlf.iterations  # which iterations exist is the foreach, not a value
    assert g.tracking == params.tracking  # MLflow only: never a DVC param
    for read in (lambda: g.summary, lambda: g.models.summarizer, lambda: g.nlf.iterations["2"],
                 lambda: g.nlf.n_feedback, lambda: g.data.source, lambda: g.models.judge):
        with pytest.raises(stage_params.UndeclaredParamError, match="does not declare"):
            read()
    # What a stage may log: the declared part only.
    assert g.models.model_dump() == {"policy": params.models.policy.model_dump()}
    assert g.data.model_dump() == {"domains": params.data.domains}


def test_every_stage_script_has_an_entry():
    for script in sorted((ROOT / "stages").glob("*.py")):
        try:
            stage_params.reads([f"stages/{script.name}", "--loop", "nlf", "--step", "init", "--method", "rag"])
        except KeyError as e:
            pytest.fail(str(e))


def test_stage_run_applies_the_guard_when_asked(monkeypatch, tmp_path):
    from personal_nlf import stage

    seen = []
    argv = ["stages/prepare.py", "--params", str(ROOT / "params.yaml"), "--log-file", str(tmp_path / "log")]
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.setenv("PERSONAL_NLF_PARAMS_GUARD", "1")
    stage.run(lambda args, params: seen.append(params.data.source), stage.parser("t"))  # prepare reads data
    with pytest.raises(stage_params.UndeclaredParamError, match="'seed'"):
        stage.run(lambda args, params: params.seed, stage.parser("t"))
    monkeypatch.delenv("PERSONAL_NLF_PARAMS_GUARD")
    stage.run(lambda args, params: seen.append(params.seed), stage.parser("t"))
    assert seen == ["data/persona", 42]


def test_run_records_are_outside_dvcs_view_and_results_are_not():
    """Wall-clock run records sit beside the metrics files, inside folders that the report stage
    depends on: DVC must not hash them (a rerun would change dvc.lock), but must hash the results."""
    from dvc.repo import Repo

    from personal_nlf import provenance

    with Repo(str(ROOT)) as repo:
        ignored = repo.dvcignore.is_ignored_file
        for metrics in ("metrics/nlf/iter_1.json", "metrics/rag.json"):
            assert ignored(str(ROOT / provenance.run_record_path(metrics)))
            assert not ignored(str(ROOT / metrics))


# Stage arguments that name what a stage reads: each must be a dep (or lie inside one), or DVC
# would not rerun the stage when it changes (e.g. every stage that retrieves reruns when
# `retrieval.k` rebuilds outputs/index, only because it lists outputs/index).
INPUT_FLAGS = ("--index", "--prepared", "--models-dir", "--planner-state", "--summaries", "--extra-models-dir",
               "--transfer")


def input_paths(argv: list[str]) -> set[str]:
    paths = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in INPUT_FLAGS}
    # NAME=PATH (transfer's baselines) and NAME=METRICS:JUDGE_SCORES (the report's rows).
    for i, a in enumerate(argv[:-1]):
        if a in ("--baseline", "--row"):
            paths |= set(argv[i + 1].split("=", 1)[1].split(":"))
    return paths


def is_init(argv: list[str]) -> bool:
    return "--step" in argv and argv[argv.index("--step") + 1] == "init"


def test_every_input_a_command_names_is_a_dep(stages):
    problems = set()
    for name, argv, deps, _ in stages:
        if is_init(argv):
            continue  # a loop's init writes iteration 0's empty state; it reads nothing it is given
        for path in input_paths(argv):
            if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps):
                problems.add(f"{name}: reads {path} but does not list it in deps")
    assert not problems, "\n".join(sorted(problems))
    # The check sees the inputs of every stage that retrieves.
    assert sum("--index" in argv for _, argv, _, _ in stages) >= 10
