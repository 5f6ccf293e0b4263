"""scripts/fresh_clone_run.py writes the records that scripts/readme_results.py turns into the
README's tables of fresh-clone `make test` and `make repro` runs: the two must agree."""

import pytest
from conftest import load_script

fresh_clone_run = load_script("fresh_clone_run")
readme_results = load_script("readme_results")

CPU = "cpu: Some CPU, 2 cores, AVX-512 with AVX512-BF16"
TEST_OUTPUT = """\
setup_vllm_cpu: done in 300 s; venv size 4.8G
noise
============================= slowest 25 durations =============================
600.50s setup    tests/test_pipeline_e2e.py::test_repro_writes_declared_outputs
300.00s call     tests/test_learning.py::test_small
====== 470 passed, 3 skipped in 1500.25s (0:25:00) ======
"""
REPRO_OUTPUT = "".join(f"Running stage 'stage_{i}':\n> python stages/x.py\n" for i in range(33)) + \
    "Stage 'offline_rl_init' is cached - skipping run, checking out outputs\nUpdating lock file 'dvc.lock'\nUse `dvc push` to send your updates to remote storage.\n"


def test_a_test_record_becomes_a_table_row(tmp_path):
    (tmp_path / "benchmarks" / "test_runs").mkdir(parents=True)
    text = fresh_clone_run.record_text("test", "2026-12-06T12:00:00Z", "abc1234", 0, 1712.4, CPU, [], TEST_OUTPUT)
    assert "noise" not in text and "setup_vllm_cpu: done in 300 s" in text
    (tmp_path / "benchmarks" / "test_runs" / "abc1234.txt").write_text(text)
    row = readme_results.test_runs(tmp_path).splitlines()[2]
    assert row.startswith("| 2026-12-06 | abc1234 | Some CPU, 2 cores, AVX-512 with AVX512-BF16 | 0 | 28.5 | 25.0 | 470 |")
    assert "test_pipeline_e2e.py::test_repro_writes_declared_outputs 600 s" in row


def test_a_repro_record_becomes_a_table_row(tmp_path):
    (tmp_path / "benchmarks" / "repro_runs").mkdir(parents=True)
    extra = ["torch CPU capability AVX512_BF16", "make setup: 210 s, exit 0", "command: make repro", "repro: 1290 s"]
    text = fresh_clone_run.record_text("repro", "2026-12-06T12:00:00Z", "abc1234", 0, 1500, CPU, extra, REPRO_OUTPUT)
    assert "stages run: 33, restored from DVC's run cache: 1" in text
    (tmp_path / "benchmarks" / "repro_runs" / "abc1234.txt").write_text(text)
    row = readme_results.repro_runs(tmp_path).splitlines()[2]
    assert row == ("| 2026-12-06 | abc1234 | Some CPU, 2 cores, AVX-512 with AVX512-BF16 | `make repro` | 0 | 3.5 | 21.5 "
                   "| 25.0 | 33 (1) |")


def test_a_record_without_its_lines_is_refused(tmp_path):
    (tmp_path / "benchmarks" / "repro_runs").mkdir(parents=True)
    (tmp_path / "benchmarks" / "repro_runs" / "abc1234.txt").write_text("2026-12-06T12:00:00Z abc1234 rc=0 wall=10s\n")
    with pytest.raises(SystemExit, match="abc1234.txt"):
        readme_results.repro_runs(tmp_path)
