"""Faults and bad input: disk full, unwritable outputs, killed training, fuzzed LaMP-QA records.

(Killed generation: tests/test_pipeline_e2e.py; OpenAI-compatible servers that are down, slow,
429/500 or malformed: tests/test_openai_backend.py; unparseable judge outputs: tests/test_judge.py
and the golden files of tests/test_prompts.py.)"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import kill_when, set_params
from personal_nlf import data, io, training

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- disk full, unwritable folder

# A stage that writes one small output, then a big one over the same file: the second write fails.
WRITER = textwrap.dedent("""
    import sys
    from personal_nlf import stage
    from personal_nlf.io import write_text_atomic

    def main(args, params):
        write_text_atomic(args.out, "first version\\n")
        write_text_atomic(args.out, "x" * args.size)

    p = stage.parser("writer")
    p.add_argument("--out")
    p.add_argument("--size", type=int)
    stage.run(main, p)
""")


def run_writer(tmp_path, out, size, prefix=()):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PERSONAL_NLF_QUIET": "1",
           "PERSONAL_NLF_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run([*prefix, sys.executable, str(script), "--params", str(params), "--out", str(out),
                           "--size", str(size)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_disk_full_mid_write_is_one_line_and_keeps_the_earlier_output(tmp_path, monkeypatch):
    """ENOSPC raised by the write itself (as a full disk does): the error names the output, the
    previous version of the file is intact, no temporary file is left."""
    out = tmp_path / "metrics.json"
    io.write_text_atomic(out, "first version\n")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        io.write_text_atomic(out, "second version\n")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert out.read_text() == "first version\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A 64 KiB tmpfs (mounted in a private user+mount namespace): the stage exits 2 with one
    line naming the file; the earlier output is intact and no temporary file is left."""
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:  # no user namespaces on this machine: the monkeypatched test above still runs
        pytest.skip(f"cannot mount a small tmpfs here: {probe.stderr.strip()}")
    out = mnt / "judge_scores.jsonl"
    # mount, run the stage, then report what is left on the (private) filesystem
    inner = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && \"$@\"; rc=$?; "
             f"ls -a {mnt} > {tmp_path}/left.txt; cat {out} > {tmp_path}/content.txt; exit $rc")
    r = run_writer(tmp_path, out, 1 << 20, prefix=("unshare", "-rm", "sh", "-c", inner, "sh"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: cannot write") and str(out) in r.stderr and "No space left" in r.stderr
    assert (tmp_path / "content.txt").read_text() == "first version\n"
    assert (tmp_path / "left.txt").read_text().split() == [".", "..", "judge_scores.jsonl"]


def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the output folder should be")
    r = run_writer(tmp_path, blocker / "metrics.json", 10)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(blocker) in r.stderr, r.stderr


# ---------------------------------------------------------------- training checkpoints


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path):
    work = tmp_path / "work"
    training._claim_work_dir(work, {"lr": 1e-4})
    (work / "checkpoint-1").mkdir()
    training._claim_work_dir(work, {"lr": 1e-4})  # same configuration: kept for resume
    assert [p.name for p in training.checkpoints(work)] == ["checkpoint-1"]
    training._claim_work_dir(work, {"lr": 2e-4})  # another one: discarded
    assert training.checkpoints(work) == []
    assert json.loads((work / "fingerprint.json").read_text())["config"] == {"lr": 2e-4}


TRAINER = textwrap.dedent("""
    import json, logging, sys
    from personal_nlf import training
    from personal_nlf.config import RoleConfig, TrainConfig
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models_dir, work = sys.argv[1], sys.argv[2]
    rows = [training.sft_row([{"role": "user", "content": f"Question {i}: how do I start running?"}],
                             f"Answer {i}: slowly, three times a week.") for i in range(6)]
    cfg = TrainConfig(max_steps=4, save_steps=1, per_device_batch_size=2, max_length=128, warmup_ratio=0.0,
                      select_on_validation=False)
    role = RoleConfig(model="embedded:smollm2-135m-instruct", device="cpu")
    stats = training.train("sft", rows, role, models_dir, cfg, work, seed=7)
    print(json.dumps(stats))
""")


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, embedded_models):
    """kill -9 a LoRA SFT run after its first checkpoint; the rerun resumes from that checkpoint
    (not from step 0) and ends with the adapter of an uninterrupted run."""
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}

    def argv(work):
        return [sys.executable, str(script), str(embedded_models), str(work)]

    def train(work):
        return subprocess.run(argv(work), env=env, capture_output=True, text=True, timeout=600)

    ref = train(tmp_path / "uninterrupted")
    assert ref.returncode == 0, ref.stderr[-3000:]

    work = tmp_path / "killed"
    rc = kill_when(argv(work), (work / "checkpoint-2" / "trainer_state.json").exists, env=env)
    done = [p.name for p in training.checkpoints(work)]
    assert rc == -9 and "checkpoint-4" not in done and done, f"the run was not killed midway: exit {rc}, {done}"

    resumed = train(work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming training from {work}/{done[-1]}" in resumed.stderr
    stats = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert stats["steps"] == 4

    from safetensors.torch import load_file

    a = load_file(tmp_path / "uninterrupted/checkpoint-4/adapter_model.safetensors")
    b = load_file(work / "checkpoint-4/adapter_model.safetensors")
    assert a.keys() == b.keys()
    import torch

    for k in a:  # same data order, RNG and optimizer state restored: the same weights
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- fuzzed LaMP-QA records


def good(i):
    return {"id": f"u{i}", "question": "How do I start?", "narrative": "I am a beginner.",
            "rubric_aspects": [{"aspect": "Beginner friendly", "reason": "new", "evidence": "beginner"}],
            "profile": [{"id": "p1", "text": "Past question one"}, {"id": "p2", "text": "Past question two"}]}


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
    | st.just("") | st.just("   ") | st.just("y" * 100_000),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12)
FIELDS = ["id", "question", "narrative", "rubric_aspects", "profile"]
# a mutation: (record index, path into the record, "delete" or a junk value)
paths = st.sampled_from([(f,) for f in FIELDS] + [("profile", 0), ("profile", 0, "text"), ("profile", 1, "id"),
                                                  ("rubric_aspects", 0), ("rubric_aspects", 0, "aspect"),
                                                  ("rubric_aspects", 0, "evidence")])
mutations = st.lists(st.tuples(st.integers(0, 2), paths, st.one_of(st.just("delete"), junk)), max_size=4)


def mutate(rows, muts):
    for i, path, value in muts:
        node = rows[i]
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) and key < len(node) else None
            if node is None:
                break
        last = path[-1]
        if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
            if value == "delete":
                if isinstance(node, dict):
                    node.pop(last, None)
                else:
                    node.pop(last)
            else:
                node[last] = value
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(muts=mutations, fmt=st.sampled_from(["json", "jsonl"]),
       corrupt=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=3))))
def test_fuzzed_records_load_or_fail_in_one_located_line(tmp_path_factory, muts, fmt, corrupt):
    """Every mutated file either loads into valid records, or fails with DataError lines that each
    name the file and the record (or line) and field; never another exception."""
    rows = mutate([good(i) for i in range(3)], muts)
    folder = tmp_path_factory.mktemp("src")
    path = folder / "Art_and_Entertainment" / f"test.{fmt}"
    path.parent.mkdir()
    text = json.dumps(rows) if fmt == "json" else "".join(json.dumps(r) + "\n" for r in rows)
    raw = text.encode("utf-8")
    if corrupt is not None:  # splice arbitrary bytes in: non-UTF-8, broken JSON
        at, junk_bytes = corrupt
        at %= len(raw) + 1
        raw = raw[:at] + junk_bytes + raw[at:]
    path.write_bytes(raw)
    try:
        records, _ = data.load_split(str(folder), "Art_and_Entertainment", "test", max_item_chars=2000)
    except data.DataError as e:
        lines = [x for x in str(e).splitlines() if not x.startswith("... and ")]
        assert lines
        for line in lines:
            assert line.startswith(str(path)), line
            assert "record" in line or "line" in line or "expected a JSON array" in line, line
        return
    for r in records:  # what loads is usable downstream
        assert isinstance(r.id, str) and r.id.strip() and isinstance(r.question, str) and r.question.strip()
        assert all(isinstance(p.text, str) and p.text.strip() and len(p.text) <= 2000 for p in r.profile)
        assert all(isinstance(a.aspect, str) for a in r.rubric_aspects)
    assert len({r.id for r in records}) == len(records)


def test_prepare_stage_rejects_bad_input_and_leaves_no_prepared_output(tmp_path):
    src = tmp_path / "data"
    shutil.copytree(REPO / "data/sample", src)
    bad = src / "Society_and_Culture" / "test.json"
    rows = data.read_rows(next(bad.parent.glob("test.*")))
    rows[1]["profile"][0] = {"id": "p", "text": {"nested": ["junk"]}}
    for f in bad.parent.glob("test.*"):
        f.unlink()
    bad.write_text(json.dumps(rows))
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    set_params(tmp_path, **{"data.source": str(src), "tracking.enabled": False})
    out = tmp_path / "prepared"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PERSONAL_NLF_QUIET": "1",
           "PERSONAL_NLF_LOG_DIR": str(tmp_path / "logs")}
    r = subprocess.run([sys.executable, str(REPO / "stages/prepare.py"), "--params", str(params), "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert str(bad) in first and "record 1" in first and "profile[0].text" in first, r.stderr
    assert not out.exists()  # validated everything before writing anything
