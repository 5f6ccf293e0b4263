"""PLUS's summary-conditioned reward model: R(response | summary z, question), a sequence
classifier (one score) on the generator's base model with LoRA, trained with TRL's RewardTrainer
on a user's (chosen, rejected) pairs, the Bradley-Terry loss -log sigma(R(chosen|z) - R(rejected|z)).

The model is `AutoModelForSequenceClassification` (num_labels=1) from the role's model folder:
for a causal LM (SmolLM2: LlamaForSequenceClassification) the score head is new and randomly
initialised (seeded), trained in full (PEFT task SEQ_CLS puts it in modules_to_save, so the saved
adapter carries it); the body gets LoRA with the project's train settings. The input is a chat:
user = summary + question, assistant = response, rendered by the tokenizer's chat template exactly as
RewardTrainer tokenizes conversational data, so training and scoring see the same tokens.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from . import models, training
from .config import RoleConfig, TrainConfig

log = logging.getLogger("personal_nlf")


def rm_prompt(question: str, summary: str) -> list[dict[str, str]]:
    summary = (summary or "").strip() or "(no summary available)"
    return [{"role": "user", "content": "What we know about the person asking:\n<user_summary>\n"
                                        f"{summary.replace('</user_summary>', '</ user_summary>')}\n</user_summary>\n\n"
                                        f"Question: {question}"}]


def rm_row(question: str, summary: str, chosen: str, rejected: str) -> dict[str, Any]:
    """RewardTrainer's explicit-prompt conversational format."""
    return {"prompt": rm_prompt(question, summary), "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def _device_dtype(role: RoleConfig):
    import torch

    from .llm.hf import pick_device, train_dtype

    device = pick_device(role.device)
    cuda = device.startswith("cuda")
    dtype = train_dtype(role.dtype, cuda, cuda and torch.cuda.is_bf16_supported())
    return device, getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _base(role: RoleConfig, models_dir, seed: int):
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = models.resolve(role.model, models_dir)
    device, dtype = _device_dtype(role)
    transformers.set_seed(seed)  # the new score head is random: seeded, so runs repeat
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    return model.to(device), tok


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="SEQ_CLS")


def train(rows: list[dict[str, Any]], role: RoleConfig, models_dir, cfg: TrainConfig, out: str | Path,
          work_dir: str | Path, seed: int, init_adapter: str | None = None) -> dict[str, Any]:
    """Train the reward model on `rows` (rm_row), continuing from `init_adapter` (trainable) or a
    new LoRA; the adapter (with its score head) goes to `out`. Returns loss/accuracy per step."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import RewardConfig, RewardTrainer

    from .training import _common_args

    if not rows:
        raise ValueError("no reward-model training pairs")
    out, work_dir = Path(out), Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    model, tok = _base(role, models_dir, seed)
    peft_config = None
    if init_adapter:
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    else:
        peft_config = lora_config(cfg)
    tok.padding_side = "right"
    args = _common_args(cfg, work_dir, seed, [])
    args.update(save_strategy="no")
    trainer = RewardTrainer(model=model, args=RewardConfig(**args, max_length=cfg.max_length),
                            train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft_config)
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(f"every reward-model pair is longer than train.max_length={cfg.max_length} tokens")
    result = trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out))
    training.sort_adapter_config(out)
    shutil.rmtree(work_dir, ignore_errors=True)
    hist = [h for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "examples": len(rows), "kept": kept,
            "train_loss": round(float(result.training_loss), 5),
            "loss_curve": [round(h["loss"], 5) for h in hist],
            "train_batch_accuracy_curve": [round(h["accuracy"], 4) for h in hist if "accuracy" in h]}


class RewardModelScorer:
    """R(response | summary, question) from the base model + a trained adapter (None: the
    untrained model, its score head seeded)."""

    def __init__(self, role: RoleConfig, models_dir, adapter: str | None, seed: int, batch_size: int = 8):
        model, self.tok = _base(role, models_dir, seed)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.batch_size, self.adapter = batch_size, adapter

    def _ids(self, question: str, summary: str, response: str) -> list[int]:
        # The tokens RewardTrainer trains on: prompt + response through the chat template.
        msgs = rm_prompt(question, summary) + [{"role": "assistant", "content": response}]
        return self.tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]

    def score(self, items: list[tuple[str, str, str]]) -> list[float]:
        """[(question, summary, response)] -> rewards."""
        import torch

        out: list[float] = []
        pad = self.tok.pad_token_id
        for start in range(0, len(items), self.batch_size):
            seqs = [self._ids(*it) for it in items[start:start + self.batch_size]]
            width = max(len(s) for s in seqs)
            # Right padding, as RewardTrainer's collator: the classifier reads the last non-pad token.
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            out += [float(x) for x in logits[:, 0].float()]
        return out

    def accuracy(self, items: list[tuple[str, str, str, str]]) -> dict[str, Any]:
        """[(question, summary, chosen, rejected)] -> share with R(chosen) > R(rejected) (ties 1/2)."""
        if not items:
            return {"accuracy": None, "n_pairs": 0}
        flat = []
        for q, s, c, r in items:
            flat += [(q, s, c), (q, s, r)]
        sc = self.score(flat)
        margins = [sc[2 * i] - sc[2 * i + 1] for i in range(len(items))]
        hits = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
        return {"accuracy": round(sum(hits) / len(hits), 4), "n_pairs": len(items),
                "mean_margin": round(sum(margins) / len(margins), 4)}

    def close(self) -> None:
        del self.model
