"""Time one of the README's two commands on a fresh clone, and keep the record the README's tables
are generated from (scripts/readme_results.py).

    python scripts/fresh_clone_run.py test    # git clone, CI=true bash .ci/run (= make test)
    python scripts/fresh_clone_run.py repro   # git clone, make setup, then make repro (dvc repro)
    python scripts/fresh_clone_run.py repro -S data.source=data/sample   # make setup, then dvc exp run -S ...

The clone is of this repository's HEAD (commit first: uncommitted changes are not in it), in
--workdir (default /tmp/personal_nlf-fresh-<command>, removed first). The command's whole output
goes to <workdir>.log. The record, written to benchmarks/test_runs/<rev>.txt or
benchmarks/repro_runs/<rev>.txt here, keeps a header, the record line (finished, revision, exit
status, wall seconds) and the output's lines that the README's table reads (verbatim):
- test: the CPU line of `make test`, the vLLM venv's setup time, pytest's slowest durations and
  summary;
- repro: the CPU, torch's CPU capability, `make setup`'s and `make repro`'s seconds, how many stages
  DVC ran, and the command's last lines.
Run it on an otherwise idle machine: on 2 shared cores, timings under load mean little.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from results_runs import venv_env  # noqa: E402  (make repro's environment, for dvc exp run -S)
HEADERS = {
    "test": "# Fresh-clone CI rehearsal: git clone of main, CI=true bash .ci/run. First line: the wrapper's "
            "record (finished, revision, exit status, wall seconds); then .ci/run's own output (excerpts, verbatim).",
    "repro": "# Fresh-clone `make repro`: git clone of main, `make setup`, then `make repro` (or `dvc exp run -S ...`: the "
             "command line) (scripts/fresh_clone_run.py). "
             "First line: the record (finished, revision, exit status, wall seconds of both); then the CPU, "
             "each command's seconds, the stages DVC ran and the output's last lines (verbatim).",
}
RECORD_DIRS = {"test": "test_runs", "repro": "repro_runs"}


def fresh_shell_env() -> dict[str, str]:
    """This environment without an active venv: the clone makes and uses its own venvs."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None)
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(venv))
    return env


def run_logged(cmd: list[str], cwd: Path, log, env: dict[str, str]) -> tuple[int, float]:
    """Run cmd in cwd with env, its output appended to log; (exit status, seconds)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    start = time.monotonic()
    rc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.monotonic() - start


def cpu_line() -> str:
    """The CPU, from /proc/cpuinfo (Linux): model, cores, widest vector extension."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown CPU")
    flags = next((l for l in info.splitlines() if l.startswith("flags")), "") + " "
    avx = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    bf16 = [name for flag, name in ((" avx512_bf16 ", "AVX512-BF16"), (" amx_bf16 ", "AMX-BF16")) if flag in flags]
    return f"cpu: {model}, {os.cpu_count()} cores, {avx}" + (f" with {', '.join(bf16)}" if bf16 else "")


def excerpt(command: str, output: str) -> list[str]:
    """The lines of the command's output that the record keeps."""
    lines = output.splitlines()
    if command == "test":
        keep = [l for l in lines if l.startswith("make test: this CPU")]
        keep += [l for l in lines if l.startswith("setup_vllm_cpu: done in")]
        start = next((i for i, l in enumerate(lines) if "slowest 25 durations" in l), None)
        if start is not None:
            keep += lines[start:]
        else:  # no durations (pytest never got that far): its last lines say why
            keep += lines[-40:]
        return keep
    ran = [l for l in lines if l.startswith("Running stage '")]
    cached = [l for l in lines if re.match(r"^Stage '.*' is cached - skipping run", l)]
    return [f"stages run: {len(ran)}, restored from DVC's run cache: {len(cached)}"] + lines[-15:]


def record_text(command: str, finished: str, rev: str, rc: int, wall: float, cpu: str, extra: list[str],
                output: str) -> str:
    """The record file's text: header, record line, CPU, the command's own lines, the excerpt."""
    return "\n".join([HEADERS[command], f"{finished} {rev} rc={rc} wall={wall:.0f}s", cpu, *extra,
                      *excerpt(command, output)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["test", "repro"])
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="repro only: run `dvc exp run -S KEY=VALUE ...` after make setup instead of make repro")
    ap.add_argument("--workdir", type=Path, help="where to clone (default /tmp/personal_nlf-fresh-<command>)")
    args = ap.parse_args(argv)
    if args.overrides and args.command != "repro":
        ap.error("-S is for repro")

    work = args.workdir or Path(f"/tmp/personal_nlf-fresh-{args.command}")
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, check=True,
                         capture_output=True, text=True).stdout.strip()
    log_path = work.with_name(work.name + ".log")
    extra = []
    with log_path.open("w") as log:
        if args.command == "test":
            rc, wall = run_logged(["bash", ".ci/run"], work, log, {**fresh_shell_env(), "CI": "true"})
        else:
            rc_setup, setup_s = run_logged(["make", "setup"], work, log, fresh_shell_env())
            repro, env = ((["make", "repro"], fresh_shell_env()) if not args.overrides else
                          (["dvc", "exp", "run", *[a for kv in args.overrides for a in ("-S", kv)]],
                           venv_env(work)))
            rc, repro_s = (rc_setup, 0.0) if rc_setup else run_logged(repro, work, log, env)
            wall = setup_s + repro_s
            torch_cap = subprocess.run([str(work / ".venv/bin/python"), "-c",
                                        "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                       capture_output=True, text=True).stdout.strip() or "unknown"
            extra = [f"torch CPU capability {torch_cap}", f"make setup: {setup_s:.0f} s, exit {rc_setup}",
                     f"command: {'make repro' if not args.overrides else 'dvc exp run ' + ' '.join('-S ' + kv for kv in args.overrides)}",
                     f"repro: {repro_s:.0f} s"]
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    # One record per revision and command; -S overrides name theirs apart
    suffix = "".join("_" + re.sub(r"[^\w.=-]+", "-", kv) for kv in args.overrides)
    out = ROOT / "benchmarks" / RECORD_DIRS[args.command] / f"{rev}{suffix}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    output = log_path.read_text(errors="replace")
    vllm_setup = work / ".venv-vllm-setup.log"  # make test builds .venv-vllm in the background, logged here
    if vllm_setup.exists():
        output += vllm_setup.read_text(errors="replace")
    out.write_text(record_text(args.command, finished, rev, rc, wall, cpu_line(), extra, output))
    print(f"{args.command} at {rev}: exit {rc}, {wall / 60:.1f} min; record {out.relative_to(ROOT)}, "
          f"whole output {log_path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
