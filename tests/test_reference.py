"""Which model TRL's DPO and GRPO (KL) reference is, through `training.train` as the loops call
it: a tiny random Llama, and an adapter with non-zero weights standing for iteration t-1's model.

Found in TRL 1.16's source (DPOTrainer / GRPOTrainer.__init__ and their reference log-prob code):
- a fresh adapter (iteration 1: `peft_config` given) -> reference = the model with adapters
  disabled = the base model, which is also where training starts;
- a PeftModel passed in (iteration >= 2: training._model loads pi(t-1)'s adapter trainable,
  `peft_config=None`) -> TRL adds an adapter "ref", a frozen copy of the loaded one: the
  reference is pi(t-1), not the untrained base model. (GRPO does this only when beta != 0.)
"""

import pytest
import torch

from personal_nlf import training
from personal_nlf.config import RoleConfig, TrainConfig

CFG = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=0.1, max_steps=2, per_device_batch_size=2,
                  gradient_accumulation_steps=1, save_steps=2, warmup_ratio=0.0, max_length=128, dpo_beta=0.1)
ROWS = [training.dpo_row([{"role": "user", "content": f"question {i}?"}], f"good answer {i}", f"bad {i}")
        for i in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A byte-level tokenizer with a chat template, a 1-layer random Llama, and a LoRA adapter
    whose weights are far from zero, saved as the loops save them."""
    from peft import get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>",
        chat_template="{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.2,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    peft_model = get_peft_model(model, training._lora_config(CFG))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # LoRA starts with B = 0 (= the base model); pi(t-1) has learned
                p.normal_(0, 1.0)
    peft_model.save_pretrained(root / "adapter")
    return {"base": str(base), "adapter": str(root / "adapter")}


def completion_logps(model, batch):
    """Sum of log p(completion token) per sequence, as TRL's DPO computes it."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    tokens = batch["input_ids"][:, 1:]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (lp * batch["completion_mask"][:, 1:]).sum(1)


def fresh(tiny, adapter):
    from personal_nlf.llm.hf import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny["base"], None, "cpu", "float32", adapter=adapter)[0]


def run_dpo(tiny, tmp_path, monkeypatch, init_adapter):
    """training.train(dpo) with a trainer that records, on one batch, TRL's reference log-probs
    and the policy's, before and after training."""
    import trl

    seen = {}

    class Recording(trl.DPOTrainer):
        def train(self, *a, **k):
            batch = next(iter(self.get_train_dataloader()))
            seen["batch"] = batch
            seen["ref_before"] = torch.cat(self.compute_ref_log_probs(self.model, batch))
            seen["policy_before"] = completion_logps(self.model, batch)
            out = super().train(*a, **k)
            seen["ref_after"] = torch.cat(self.compute_ref_log_probs(self.model, batch))
            seen["policy_after"] = completion_logps(self.model, batch)
            seen["adapters"] = set(self.model.peft_config)
            return out

    monkeypatch.setattr(trl, "DPOTrainer", Recording)
    training.train("dpo", ROWS, RoleConfig(model=tiny["base"], device="cpu", dtype="float32"), None, CFG,
                   tmp_path / "work", seed=0, init_adapter=init_adapter)
    return seen


def close(a, b):
    return torch.allclose(a, b, atol=1e-3)


def test_dpo_reference_from_iteration_2_is_a_frozen_copy_of_the_loaded_adapter(tiny, tmp_path, monkeypatch):
    seen = run_dpo(tiny, tmp_path, monkeypatch, init_adapter=tiny["adapter"])
    prev = completion_logps(fresh(tiny, tiny["adapter"]), seen["batch"])  # pi(t-1), loaded on its own
    base = completion_logps(fresh(tiny, None), seen["batch"])  # the untrained model
    assert (prev - base).abs().min() > 0.05  # the two candidates are distinguishable
    assert seen["adapters"] == {"default", "ref"}
    assert close(seen["ref_before"], prev) and close(seen["policy_before"], prev)  # training starts at pi(t-1)
    assert not close(seen["ref_before"], base)  # ... and the reference is pi(t-1), not the base model
    # Training moved the policy, not the reference: a frozen copy.
    assert not close(seen["policy_after"], seen["policy_before"])
    assert close(seen["ref_after"], prev)


def test_dpo_reference_in_iteration_1_is_the_base_model(tiny, tmp_path, monkeypatch):
    seen = run_dpo(tiny, tmp_path, monkeypatch, init_adapter=None)
    base = completion_logps(fresh(tiny, None), seen["batch"])
    assert seen["adapters"] == {"default"}  # adapters disabled = the base model
    assert close(seen["ref_before"], base) and close(seen["policy_before"], base)
    assert not close(seen["policy_after"], base) and close(seen["ref_after"], base)


@pytest.mark.parametrize("beta, adapters", [(0.04, {"default", "ref"}), (0.0, {"default"})])
def test_grpo_kl_reference_from_iteration_2_is_the_loaded_adapter(tiny, tmp_path, monkeypatch, beta, adapters):
    import trl
    from trl.trainer.utils import use_adapter

    seen = {}
    batch = None

    class Recording(trl.GRPOTrainer):
        def train(self, *a, **k):
            nonlocal batch
            tok = self.processing_class
            enc = tok(["<user>question 0?<eos><assistant>good answer 0<eos>"], return_tensors="pt")
            batch = {**enc, "completion_mask": torch.ones_like(enc["input_ids"])}
            seen["adapters"] = set(self.model.peft_config)
            out = super().train(*a, **k)
            # GRPO's KL term reads the reference through use_adapter("ref" if present, else none).
            with use_adapter(self.model, "ref" if "ref" in self.model.peft_config else None):
                seen["ref_after"] = completion_logps(self.model, batch)
            seen["policy_after"] = completion_logps(self.model, batch)
            return out

    monkeypatch.setattr(trl, "GRPOTrainer", Recording)
    grpo = training.GRPOSettings(reward_funcs=[lambda completions, **kw: [float(i) for i in range(len(completions))]],
                                 num_generations=2, beta=beta, max_completion_length=4, temperature=1.0)
    rows = [{"prompt": r["prompt"]} for r in ROWS[:2]]
    training.train("grpo", rows, RoleConfig(model=tiny["base"], device="cpu", dtype="float32"), None,
                   CFG.model_copy(update={"max_steps": 1}), tmp_path / "work", seed=0,
                   init_adapter=tiny["adapter"], grpo=grpo)
    assert seen["adapters"] == adapters
    if beta:
        prev = completion_logps(fresh(tiny, tiny["adapter"]), batch)
        base = completion_logps(fresh(tiny, None), batch)
        assert close(seen["ref_after"], prev) and not close(seen["ref_after"], base)
        assert not close(seen["policy_after"], prev)  # the policy moved; the reference did not


def test_exported_adapter_config_is_the_same_bytes_whatever_the_set_order_peft_wrote(tmp_path):
    """PEFT writes target_modules ("all-linear" resolved) in a Python set's order, which follows the
    string-hash seed: two runs wrote the same weights under differently ordered configs. The export
    sorts the list, so the adapter folder (and its DVC hash) is byte-identical across runs."""
    import json

    from personal_nlf import training

    outs = []
    for i, order in enumerate((["up_proj", "k_proj", "down_proj", "q_proj"], ["q_proj", "down_proj", "up_proj", "k_proj"])):
        ckpt = tmp_path / f"checkpoint-{i}"
        ckpt.mkdir()
        (ckpt / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": order, "peft_type": "LORA"}))
        (ckpt / "adapter_model.safetensors").write_bytes(b"same weights")
        outs.append(training.export_adapter(ckpt, tmp_path / f"out-{i}"))
    a, b = ((o / "adapter_config.json").read_bytes() for o in outs)
    assert a == b
    assert json.loads(a)["target_modules"] == ["down_proj", "k_proj", "q_proj", "up_proj"]
    assert (outs[0] / "adapter_model.safetensors").read_bytes() == b"same weights"
