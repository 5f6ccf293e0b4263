"""The whole benchmark suite in one run: sections 1-3 (bench_generation.py: hf batching, stage
overhead, judge methods) and 4-7 (bench_pipeline.py: llama.cpp server, retrieval caching, summary
mode, DVC caching), one after the other on the same machine, with the headline ratios on top.

    python benchmarks/run_all.py [--install-llama-cpp] [--out benchmarks/RESULTS.md]

About 12-15 minutes on a 2-core CPU (plus ~9 min once with --install-llama-cpp). Needs
`make repro` through `index`. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generation  # noqa: E402
import bench_pipeline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install-llama-cpp", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smallest settings (a smoke run; numbers are noisy)")
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    args = ap.parse_args()
    t0 = time.time()
    repo = Path(__file__).resolve().parent.parent
    rev = bench_generation.git_rev(repo)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        gen_args = (["--n-prompts", "3", "--repeats", "1", "--seq-repeats", "1", "--batch-sizes", "1",
                     "--max-new-tokens", "8", "--judge-records", "1"] if args.quick else
                    ["--n-prompts", "12", "--repeats", "2", "--seq-repeats", "1", "--batch-sizes", "1,4",
                     "--judge-records", "4"])
        bench_generation.main(gen_args + ["--out", f"{tmp}/generation.md"])
        gen_text = Path(f"{tmp}/generation.md").read_text()
    pipe_args = (["--n-prompts", "3", "--repeats", "1", "--max-new-tokens", "8", "--skip", "dvc"] if args.quick
                 else ["--n-prompts", "12", "--repeats", "2"])
    pipe_text, pipe_ratios = bench_pipeline.main(pipe_args + (["--install-llama-cpp"] if args.install_llama_cpp else []))
    ratios = {**bench_generation.RATIOS, **pipe_ratios}
    import torch

    gen_body = gen_text.split("\n", 1)[1]  # its own title goes; its run details stay
    L = ["# Benchmark suite", "",
         f"- Date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
         f"- Machine: {bench_generation.machine()} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
         f"Python {platform.python_version()})",
         f"- Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
         f"- Git revision: {rev}",
         f"- Total runtime: {time.time() - t0:.0f} s; load average at start {load_start[0]:.2f}", "",
         "## Ratios at a glance", "", "| measurement | ratio |", "|---|---:|"]
    L += [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    L += ["", "Sections 1-3 below come from `bench_generation.py`, 4-7 from `bench_pipeline.py`; "
              "benchmarks/README.md explains every row.", "", "# Generation and judge", gen_body, pipe_text]
    text = "\n".join(L) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
