"""training.score_label_positions_only_on_cpu: TRL's fused LM head scoring only the labelled
positions on CPU gives the loss and gradients of TRL's default CPU branch, which scores every
position (prompt and padding included)."""

import torch

from personal_nlf import training


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        initializer_range=0.2))


def batch():
    """Two right-padded rows: a prompt (label -100), a completion, then padding (-100)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 24), generator=g)
    labels = ids.clone()
    labels[0, :15] = -100  # prompt of row 0
    labels[1, :9] = -100
    labels[1, 18:] = -100  # padding of row 1
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(label_only: bool, monkeypatch):
    from trl.trainer import utils as trl_utils

    # TRL's own decision (an earlier training in this process may have patched it); restored after the test
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(trl_utils._use_triton, "trl_decision", trl_utils._use_triton))
    if label_only:
        training.score_label_positions_only_on_cpu()
    model = tiny_model()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    out = model(**batch(), fused_lm_head=True)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_label_only_scoring_on_cpu_gives_trls_default_loss_and_gradients(monkeypatch):
    from trl.trainer import utils as trl_utils

    every_out, every_grads = loss_and_grads(False, monkeypatch)
    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL's default branch on CPU: every position
    label_out, label_grads = loss_and_grads(True, monkeypatch)
    assert trl_utils._use_triton(torch.device("cpu"))
    assert torch.allclose(label_out.loss, every_out.loss, atol=1e-6)
    mask = label_out.label_mask
    assert mask.sum() == 9 + 9
    for field in ("log_probs", "entropy", "is_top1"):
        a, b = getattr(label_out, field), getattr(every_out, field)
        assert torch.allclose(a[mask].float(), b[mask].float(), atol=1e-5), field
    for name, g in every_grads.items():
        assert torch.allclose(label_grads[name], g, atol=1e-6), name


def test_label_only_patch_is_applied_once_and_keeps_other_devices(monkeypatch):
    from trl.trainer import utils as trl_utils

    seen = []
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: seen.append(device.type) or False)
    training.score_label_positions_only_on_cpu()
    first = trl_utils._use_triton
    training.score_label_positions_only_on_cpu()
    assert trl_utils._use_triton is first  # not wrapped twice
    assert trl_utils._use_triton(torch.device("cpu"))
    assert not trl_utils._use_triton(torch.device("meta"))  # other devices: TRL's own decision
    assert seen == ["meta"]


def test_a_trl_without_the_branch_is_left_alone(monkeypatch):
    from trl.trainer import utils as trl_utils

    monkeypatch.delattr(trl_utils, "_use_triton")
    training.score_label_positions_only_on_cpu()
    assert not hasattr(trl_utils, "_use_triton")
