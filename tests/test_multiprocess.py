"""Training under `accelerate launch` (train.processes > 1), the trainer arguments that follow the
trained role's device, and GRPO's sampling through TRL's vLLM integration.

The slow tests start real ranks: 2 processes on CPU over gloo (accelerate 1.15's own `--cpu`
would start one process; see personal_nlf/launch.py)."""

import json
from pathlib import Path

import pytest
from conftest import LAMP_QA_SAMPLE, REPO, copy_worktree, dvc, run, set_params
from test_reference import tiny  # noqa: F401  (fixture: a tiny random Llama with a byte-level tokenizer)

from personal_nlf import launch, training
from personal_nlf.config import ConfigError, RoleConfig, TrainConfig
from personal_nlf.stage import StageError


def _fake_cuda(monkeypatch, available: bool, bf16: bool = True):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize("device,cuda_present,use_cpu,bf16", [
    ("cpu", True, True, False),        # role forced to CPU on a GPU machine: no bf16, use_cpu
    ("cuda:0", True, False, True),     # role on a GPU
    ("cuda:1", True, False, True),
])
def test_trainer_device_follows_the_role(tmp_path, monkeypatch, device, cuda_present, use_cpu, bf16):
    _fake_cuda(monkeypatch, cuda_present)
    args = training._common_args(TrainConfig(), tmp_path, 0, [], device=device)
    assert args["use_cpu"] is use_cpu and args["bf16"] is bf16
    assert args["gradient_checkpointing"] is (not use_cpu)  # auto: on with CUDA


def test_train_passes_the_resolved_role_device(tmp_path, monkeypatch):
    """training.train hands _common_args the role's resolved device, not torch.cuda's presence."""
    _fake_cuda(monkeypatch, True)
    seen = {}

    def fake_common(cfg, work_dir, seed, report_to, device=None):
        seen["device"] = device
        raise RuntimeError("stop here")

    monkeypatch.setattr(training, "_common_args", fake_common)
    monkeypatch.setattr(training, "_model", lambda *a, **k: (None, None))
    with pytest.raises(RuntimeError, match="stop here"):
        training.train("sft", [training.sft_row([{"role": "user", "content": "q"}], "a")],
                       RoleConfig(device="cpu"), None, TrainConfig(), tmp_path / "w", seed=0)
    assert seen["device"] == "cpu"


def _grpo(**kw):
    return training.GRPOSettings(reward_funcs=[lambda completions, **k: [0.0] * len(completions)], num_generations=2,
                                 beta=0.0, max_completion_length=8, temperature=1.0, **kw)


def _grpo_config(tmp_path, grpo, role):
    from trl import GRPOConfig

    args = training._common_args(TrainConfig(max_steps=1), tmp_path, 0, [], device="cpu")
    args.update(per_device_train_batch_size=grpo.num_generations, remove_unused_columns=False)
    return GRPOConfig(**args, **training._grpo_args(grpo, role))


def test_grpo_with_fewer_prompts_than_a_generation_batch_is_refused(tmp_path, monkeypatch):
    """TRL's sampler drops an incomplete generation batch: 3 prompts with 8 accumulation steps
    would train 0 steps and export the untrained adapter, silently."""
    monkeypatch.setattr(training, "_model", lambda *a, **k: (None, None))
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    with pytest.raises(ConfigError, match="3 training prompts, fewer than one generation batch of 8"):
        training.train("grpo", rows, RoleConfig(device="cpu"), None,
                       TrainConfig(max_steps=1, gradient_accumulation_steps=8), tmp_path / "w", seed=0, grpo=_grpo())


def test_grpo_uses_trl_vllm_colocate_when_the_role_runs_on_vllm(tmp_path):
    role = RoleConfig(backend="vllm", gpu_memory_utilization=0.2, max_model_len=1536)
    conf = _grpo_config(tmp_path, _grpo(), role)  # TRL validates the config
    assert conf.use_vllm is True and conf.vllm_mode == "colocate"
    assert conf.vllm_gpu_memory_utilization == 0.2 and conf.vllm_tensor_parallel_size == 1
    assert conf.vllm_max_model_length == 1536
    assert conf.num_generations == 2 and conf.log_completions is False


def test_grpo_vllm_server_mode_by_param(tmp_path):
    role = RoleConfig(backend="vllm")
    conf = _grpo_config(tmp_path, _grpo(vllm_mode="server", vllm_server_host="10.0.0.7", vllm_server_port=8123), role)
    assert conf.use_vllm is True and conf.vllm_mode == "server"
    assert (conf.vllm_server_host, conf.vllm_server_port) == ("10.0.0.7", 8123)


def test_grpo_generates_with_transformers_on_other_backends(tmp_path):
    assert _grpo_config(tmp_path, _grpo(), RoleConfig(backend="hf")).use_vllm is False
    assert _grpo_config(tmp_path, _grpo(use_vllm=False), RoleConfig(backend="vllm")).use_vllm is False
    with pytest.raises(ConfigError, match="colocated vLLM cannot use tensor_parallel_size 2"):
        training._grpo_args(_grpo(), RoleConfig(backend="vllm", tensor_parallel_size=2))
    with pytest.raises(ConfigError, match="vllm_mode"):
        training._grpo_args(_grpo(vllm_mode="remote"), RoleConfig(backend="vllm"))


def test_summary_grpo_vllm_params_are_trl_values():
    """The params that choose GRPO's vLLM mode take exactly TRL's values."""
    from trl import GRPOConfig

    from personal_nlf.config import SummaryConfig

    mode = SummaryConfig.model_fields["grpo_vllm_mode"].annotation.__args__
    assert set(mode) == {"colocate", "server"}
    assert "colocate" in GRPOConfig.__dataclass_fields__["vllm_mode"].metadata["help"]
    assert SummaryConfig().grpo_vllm_mode == "colocate"


def test_accelerate_command(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = TrainConfig(processes=3, accelerate_config="configs/accelerate/fsdp.yaml")
    gpu = launch.accelerate_command(cfg, tmp_path / "spec.json", cpu=False)
    assert gpu[gpu.index("--num_processes") + 1] == "3" and gpu[gpu.index("--config_file") + 1].endswith("fsdp.yaml")
    assert "--multi_gpu" not in gpu  # the config file's distributed type (FSDP here) decides
    assert gpu[-3:] == ["-m", "personal_nlf.launch", str(tmp_path / "spec.json")]
    cpu = launch.accelerate_command(cfg, tmp_path / "spec.json", cpu=True)
    assert "--multi_gpu" in cpu and cpu[cpu.index("--mixed_precision") + 1] == "no"
    with pytest.raises(ConfigError, match="accelerate_config"):
        launch.accelerate_command(TrainConfig(processes=2, accelerate_config="configs/accelerate/nope.yaml"),
                                  tmp_path / "spec.json", cpu=True)


@pytest.mark.slow
def test_a_failing_rank_is_one_line_and_keeps_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    rows = [training.sft_row([{"role": "user", "content": f"q{i}"}], f"a{i}") for i in range(2)]
    cfg = TrainConfig(processes=2, max_steps=1)
    with pytest.raises(StageError) as e:
        training.fit_and_export("sft", rows, RoleConfig(model=str(tmp_path / "no-such-model"), device="cpu"), None, cfg,
                                tmp_path / "out", tmp_path / "work", seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "accelerate launch (2 processes" in msg and "rank 0:" in msg
    assert "no-such-model" in msg
    assert (tmp_path / "work" / "launch" / "ranks.log").exists()
    assert not (tmp_path / "out" / "state.json").exists()


@pytest.mark.slow
def test_ranks_train_and_the_launching_process_alone_selects_and_exports(tiny, tmp_path, monkeypatch):  # noqa: F811
    """fit_and_export with 2 processes: the ranks write the checkpoints; `select` (validation, in
    the loops) runs once, in this process, over all of them; the adapter it picks is exported."""
    import os

    monkeypatch.chdir(REPO)
    calls = []

    def select(work):
        calls.append((os.getpid(), sorted(p.name for p in training.checkpoints(work))))
        return training.checkpoints(work)[0], {"selected_by": "test", "pid": os.getpid()}

    rows = [training.sft_row([{"role": "user", "content": f"q {i}?"}], f"answer {i}") for i in range(4)]
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=0.1, max_steps=2, per_device_batch_size=1,
                      gradient_accumulation_steps=1, save_steps=1, warmup_ratio=0.0, max_length=128, processes=2)
    import mlflow

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("multiprocess")
    with mlflow.start_run(run_name="stage") as stage_run:  # as tracking.stage_run opens it
        result = training.fit_and_export("sft", rows, RoleConfig(model=tiny["base"], device="cpu", dtype="float32"),
                                         None, cfg, tmp_path / "out", tmp_path / "work", seed=1, select=select,
                                         state={"t": "1"}, report_to=["mlflow"])
    # Rank 0's trainer logged its curve into a run under the stage's run.
    children = mlflow.search_runs([stage_run.info.experiment_id], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{stage_run.info.run_id}'")
    assert len(children) == 1 and "loss" in children[0].data.metrics
    assert calls == [(os.getpid(), ["checkpoint-1", "checkpoint-2"])]
    assert result["checkpoint_step"] == 1 and result["steps"] == 2
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["checkpoint"] == "checkpoint-1" and state["selection"]["pid"] == os.getpid() and state["t"] == "1"
    assert json.loads((tmp_path / "out" / "train_stats.json").read_text())["world_size"] == 2
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "work").exists()


@pytest.fixture(scope="module")
def two_process_repo(tmp_path_factory):
    """train_planner through `dvc repro` with train.processes 2 on a one-domain slice: the cheapest
    training stage (base_model, prepare, index upstream; the loop's upstream takes ~10 min here)."""
    repo = copy_worktree(tmp_path_factory.mktemp("repo"))
    set_params(repo, **{**LAMP_QA_SAMPLE, "data.domains": ["Art_and_Entertainment"], "data.max_records_per_split": 2,
                        "planner_sft.enabled": True, "train.max_steps": 2, "train.save_steps": 1,
                        "train.per_device_batch_size": 1, "train.max_length": 512, "train.processes": 2,
                        "train.accelerate_config": "configs/accelerate/ddp.yaml"})
    run(["git", "commit", "-qam", "two processes"], cwd=repo)
    out = dvc("repro", "train_planner", cwd=repo)
    return repo, out


@pytest.mark.slow
def test_train_planner_under_accelerate_launch_through_dvc_repro(two_process_repo):
    repo, _ = two_process_repo
    out = repo / "outputs/planner"
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.relative_to(out) for p in out.rglob("state.json")] == [Path("state.json")]
    state = json.loads((out / "state.json").read_text())
    assert state["selection"] == {"selected_by": "last"} and state["checkpoint"] == "checkpoint-2"
    assert state["trained"] is True and Path(state["adapter"]).name == "adapter"
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and stats["distributed_type"] == "MULTI_CPU" and stats["backend"] == "gloo"
    assert stats["steps"] == 2 and len(stats["loss_curve"]) == 2 and stats["examples"] == 2
    stage_log = (repo / "logs" / "train_planner.log").read_text()
    assert stage_log.count("training under accelerate launch, 2 processes") == 1
    # Nothing left behind: the work folder (checkpoints, rows, ranks' log) is removed.
    assert [p for p in repo.rglob("*") if p.name.endswith((".partial", ".tmp")) or p.name == "ranks.log"] == []


@pytest.mark.slow
def test_second_repro_reruns_nothing(two_process_repo):
    repo, _ = two_process_repo
    out = dvc("repro", "train_planner", cwd=repo)
    assert "Running stage" not in out.stdout, out.stdout
