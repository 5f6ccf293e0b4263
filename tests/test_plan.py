"""`personal-nlf plan`: call counts, models resident per stage and GPU memory, each checked against
figures computed by hand in the comments (never re-derived from plan.py's constants)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from personal_nlf import plan
from personal_nlf.config import Params, RoleConfig, load_params

REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


def rows(p, counts, pipeline="default"):
    return {r.stage: r for r in plan.estimate(p, counts, pipeline).rows}


def small(objective="sft"):
    """2 domains x 3 train records (R = 6, 2 aspects each), N = 4, T = 2, 6 steps with a checkpoint
    every 3 (2 checkpoints), validation 4 records x 3 aspects, test 5 records x 2 aspects."""
    p = Params.model_validate({"nlf": {"n_feedback": 4, "iterations": {"1": {"prev": "0"}, "2": {"prev": "1"}}},
                               "train": {"max_steps": 6, "save_steps": 3, "objective": objective}})
    counts = {"train": plan.SplitCounts(6, 2.0), "loop_train": plan.SplitCounts(6, 2.0),
              "validation": plan.SplitCounts(4, 3.0), "test": plan.SplitCounts(5, 2.0)}
    return p, counts


def test_vac_counts_by_hand_including_the_2R_generations_of_train_policy():
    p, counts = small()
    r = rows(p, counts)
    assert r["vac@1 rollout"].generations == 6
    assert r["vac@1 signal"].generations == 24 and r["vac@1 refine"].generations == 24  # 6 x 4
    assert r["vac@1 judge"].judge_calls == 60  # 6 records x (4 revisions + 1 initial) x 2 aspects
    # train_policy: 6 feedbacks by phi(t) + 6 revisions = 12, plus 2 checkpoints x 4 validation
    # answers = 8: 20 generations; 2 x 4 x 3 aspects = 24 judge calls; 6 steps.
    tp = r["vac@1 train_policy"]
    assert (tp.generations, tp.judge_calls, tp.train_steps) == (20, 24, 6)
    assert (r["vac@1 evaluate"].generations, r["vac@1 evaluate"].judge_calls) == (5, 10)
    assert r["offline_rl@1 rollout"].generations == 24 and r["offline_rl@1 judge"].judge_calls == 48  # 6x4, 6x4x2
    assert (r["offline_rl@1 train_policy"].generations, r["offline_rl@1 train_policy"].judge_calls) == (8, 24)
    assert (r["baseline_planpers"].generations, r["baseline_rag"].judge_calls) == (10, 10)  # a plan + an answer each
    # Totals. Baselines: 5+5+5+10 = 25 generations, 4 x 10 = 40 judge calls. One iteration: VAC
    # 6+24+24+20+5 = 79 and offline RL 24+8+5 = 37 generations; VAC 60+24+10 = 94 and offline RL
    # 48+24+10 = 82 judge calls; steps 6 (feedback) + 6 (policy) + 6 (offline RL) = 18. Two iterations:
    t = plan.estimate(p, counts).totals()
    assert (t.generations, t.judge_calls, t.train_steps) == (25 + 2 * 116, 40 + 2 * 176, 36)


def test_dpo_train_policy_judges_up_to_one_revision_per_record():
    p, counts = small("dpo")
    assert rows(p, counts)["vac@1 train_policy"].judge_calls == 24 + 12  # + 6 revisions x 2 aspects


def test_summary_mode_counts_grpo_reward_calls():
    # 2 steps x grad_acc 3 x G 4 = 24 summaries; each gets one answer (48 generations with the
    # summaries) and 2 judge calls (48); answers ranked: 10 records x 2 answers x 2 aspects = 40.
    p = Params.model_validate({"nlf": {"iterations": {"1": {"prev": "0"}}},
                               "train": {"max_steps": 2, "gradient_accumulation_steps": 3},
                               "summary": {"num_generations": 4, "n_answers": 2}})
    counts = {k: plan.SplitCounts(10, 2.0) for k in ("train", "loop_train", "validation", "test")}
    r = rows(p, counts, "summary")
    grpo = r["summary@1 train_summarizer (GRPO)"]
    assert (grpo.generations, grpo.judge_calls) == (48, 48)
    assert r["summary@1 rank"].judge_calls == 40
    assert {"transfer base_policy", "transfer gemma3_270m"} <= set(r)
    assert not any(k.startswith(("vac@", "offline_rl@")) for k in r)  # the default pipeline's loops


def test_paper_scale_judge_calls():
    p = Params.model_validate({"nlf": {"n_feedback": 16, "iterations": {"1": {"prev": "0"}}}})
    counts = plan.counts_lamp_qa(p)
    assert counts["loop_train"].records == 24333  # 9349 + 7370 + 7614
    r = rows(p, counts)
    assert r["vac@1 judge"].judge_calls == 1_240_983  # 24333 x 17 x 3
    assert r["offline_rl@1 judge"].judge_calls == 1_167_984  # 24333 x 16 x 3


def test_hours_at_given_throughputs():
    # 3600 judge calls at 2/s = 0.5 h; 720 generations at 1/s = 0.2 h; 100 steps x 18 s = 0.5 h.
    assert plan.hours(plan.Row("x", 720, 3600, 100), 2, 1, 18) == pytest.approx(1.2)


# ---------------------------------------------------------------- model sizes and GPU memory

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 1000,
        "tie_word_embeddings": True, "max_position_embeddings": 256}


def test_parameter_count_from_a_config_by_hand(tmp_path):
    # embeddings 1000 x 64 = 64,000; per block q 64x64 = 4096, k and v 64x32 = 2048 each, o 4096,
    # MLP 3 x 64 x 128 = 24,576, norms 128: 36,992; x 2 blocks = 73,984; final norm 64. Tied head.
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    s = plan.model_shape(str(tmp_path))
    assert s.params == 138_048
    assert s.kv_bytes_per_token() == 256  # K+V x 2 layers x 2 kv heads x 16 x 2 bytes
    # LoRA r=8 on all linear layers: q 8x128, k 8x96, v 8x96, o 8x128, gate/up/down 8x192 each
    # = 1024+768+768+1024+3x1536 = 8192 per block, x 2 blocks.
    assert s.lora_params(8, "all-linear") == 16_384 and s.lora_params(8, ["q_proj", "v_proj"]) == 2 * (1024 + 768)


def test_qwen_configs_give_the_published_sizes():
    # Qwen2.5-7B: 2 x 152064 x 3584 = 1,089,994,752 (untied); per block q 3584^2 + 3584 bias,
    # k/v 3584x512 + 512 each, o 3584^2, MLP 3 x 3584 x 18944, norms 7168: 233,057,792; x 28 =
    # 6,525,618,176; + final norm 3584 = 7,615,616,512 (model card: 7.61B).
    q7 = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
          "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": False}
    assert plan.decoder_params(q7) == 7_615_616_512
    # Qwen2.5-32B: 2 x 152064 x 5120 = 1,557,135,360; per block 26,219,520 + 2 x 5,243,904 +
    # 26,214,400 + 424,673,280 + 10,240 = 487,605,248; x 64 = 31,206,735,872; + 5120.
    q32 = {**q7, "hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8,
           "intermediate_size": 27648}
    assert plan.decoder_params(q32) == 32_763_876_352
    assert plan.model_shape("Qwen/Qwen2.5-32B-Instruct").params == 32_763_876_352


def test_safetensors_headers_give_the_exact_count(tmp_path):
    header = json.dumps({"a": {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]},
                         "b": {"dtype": "BF16", "shape": [7], "data_offsets": [30, 44]}, "__metadata__": {}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(44))
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert plan.model_shape(str(tmp_path)).params == 22  # 3x5 + 7, not the config's formula


def test_unknown_model_asks_for_a_config():
    with pytest.raises(plan.PlanError, match="--model-config"):
        plan.model_shape("someone/unknown-model")


def test_lora_training_memory_by_hand(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    p = Params.model_validate({"train": {"lora_r": 8, "max_length": 128, "per_device_batch_size": 2}})
    role = RoleConfig(model=str(tmp_path))
    n = plan.need(plan.Load("policy", role, "train", str(tmp_path), "sft"), plan.model_shape(str(tmp_path)), p, 1, 80)
    # weights 138,048 x 2 bytes = 276,096. LoRA 16,384 x 16 bytes = 262,144; activations with
    # checkpointing (2 x 2 layers + 34) x 128 tokens x 2 sequences x 64 = 622,592; logits
    # 128 x 2 x 1000 x 6 = 1,536,000: training 2,420,736 bytes.
    assert round(n.weights * GIB) == 276_096 and round(n.train * GIB) == 2_420_736
    dpo = plan.need(plan.Load("policy", role, "train", str(tmp_path), "dpo"), plan.model_shape(str(tmp_path)), p, 1, 80)
    # DPO: 4 sequences (chosen + rejected): 262,144 + 2 x 622,592 + 2 x 1,536,000 = 4,579,328.
    assert round(dpo.train * GIB) == 4_579_328


def test_vllm_engine_memory_for_the_7b_policy():
    role = RoleConfig(model="Qwen/Qwen2.5-7B-Instruct", backend="vllm", max_model_len=8192, gpu_memory_utilization=0.3)
    n = plan.need(plan.Load("policy", role, "generate", role.model), plan.model_shape(role.model), Params(), 1, 80)
    # weights 7,615,616,512 x 2 bytes = 15,231,233,024 B = 14.185 GiB; the engine holds
    # 0.3 x 80 = 24 GiB, leaving 9.815 GiB of KV cache; one 8192-token sequence needs 8192 x
    # (2 x 28 x 4 x 128 x 2 = 57,344 B) = 0.4375 GiB, so ~22 sequences fit.
    assert (n.tp, round(n.weights, 3), round(n.held, 3), round(n.kv, 3)) == (1, 14.185, 24.0, 9.815)
    assert not n.problem and "~22 x 8192" in n.note


def test_grpo_memory_with_trls_colocated_vllm_engine():
    """The 7B summarizer's GRPO trainer samples with transformers (its KV cache), through TRL's
    vLLM engine colocated in the training process (that engine's whole share), or through a
    `trl vllm-serve` elsewhere (nothing here)."""
    shape = plan.model_shape("Qwen/Qwen2.5-7B-Instruct")

    def grpo_need(backend, mode="colocate", util=0.3, tp=1):
        role = RoleConfig(model="Qwen/Qwen2.5-7B-Instruct", backend=backend, max_input_tokens=1024,
                          max_new_tokens=128, gpu_memory_utilization=util, tensor_parallel_size=tp)
        p = Params.model_validate({"summary": {"grpo_vllm_mode": mode, "num_generations": 4}})
        return plan.need(plan.Load("summarizer (grpo)", role, "train", role.model, "grpo"), shape, p, 1, 80)

    hf, colocated, server = grpo_need("hf"), grpo_need("vllm"), grpo_need("vllm", "server")
    # hf: KV of G = 4 completions of 1024 + 128 tokens: 4 x 1152 x 57,344 B = 264,241,152 B.
    assert round(hf.kv * GIB) == 264_241_152
    assert round((hf.held - server.held) * GIB) == 264_241_152 and server.kv == 0
    # colocate: the engine's 0.3 x 80 = 24 GiB instead of that KV cache, its own 14.185 GiB of weights inside.
    assert round(colocated.held - hf.held, 4) == round(24 - 264_241_152 / GIB, 4)
    assert round(colocated.kv, 3) == 9.815 and not colocated.problem and "colocated vLLM" in colocated.note
    # 0.15 x 80 = 12 GiB cannot hold the 14.185 GiB of weights.
    assert "colocated vLLM gets 12.0 GiB" in grpo_need("vllm", util=0.15).problem
    assert "tensor_parallel_size 2" in grpo_need("vllm", tp=2).problem


def test_a_judge_too_big_for_one_gpu_is_split_when_gpus_allow():
    role = RoleConfig(model="Qwen/Qwen2.5-32B-Instruct", backend="vllm", max_model_len=8192, gpu_memory_utilization=0.9)
    ld = plan.Load("judge", role, "generate", role.model)
    shape = plan.model_shape(role.model)
    # 32,763,876,352 x 2 B = 61.0 GiB of weights + 8192 x 262,144 B = 2 GiB of KV > 0.9 x 40 = 36 GiB.
    one = plan.need(ld, shape, Params(), 1, 40)
    assert one.problem and "0.9 x 40 GiB" in one.problem
    # Two GPUs: 30.5 GiB of weights + 1 GiB of KV per GPU <= 36 GiB: tensor parallel 2.
    two = plan.need(ld, shape, Params(), 2, 40)
    assert two.tp == 2 and not two.problem and "tensor_parallel_size: 2" in two.note


def test_models_resident_per_stage_follow_the_stage_code():
    p = Params()  # every role on the same embedded hf model
    by = {(ph.stage, ph.what): [ld.role for ld in ph.loads] for ph in plan.phases(p)}
    # A stage holds one phase's engines at a time: answer, then judge (evaluate.BackendPool.keep_only).
    assert by[("baseline_rag", "answer")] == ["policy"] and by[("baseline_rag", "judge")] == ["judge"]
    # train_policy: phi(t) writes the feedback and is freed, pi(t-1) revises, training runs alone,
    # then each checkpoint answers and the judge scores it.
    assert by[("vac@1 train_policy", "feedback")] == ["feedback phi(1)"]
    assert by[("vac@2 train_policy", "revision")] == ["policy pi(1)"]
    assert by[("vac@1 train_policy", "train")] == ["policy (sft)"]
    assert by[("vac@1 train_policy", "validation answer")] == ["policy checkpoint"]
    assert by[("vac@1 train_policy", "validation judge")] == ["judge"]
    assert by[("vac@1 evaluate", "answer")] == ["policy pi(1)"] and by[("vac@1 evaluate", "judge")] == ["judge"]


def test_paper_preset_loads_with_the_paper_settings():
    p = load_params(REPO / "configs/paper.yaml")
    m = p.models
    assert (m.policy.model, m.feedback.model, m.judge.model) == (
        "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-32B-Instruct")
    assert p.retrieval.encoder == "facebook/contriever-msmarco" and p.retrieval.k == 10
    assert p.data.source == "alireza7/LaMP-QA" and len(p.nlf.iterations) == 3 and p.nlf.n_feedback == 16
    t = p.train
    assert (t.learning_rate, t.per_device_batch_size * t.gradient_accumulation_steps, t.max_steps, t.save_steps,
            t.max_length) == (5e-5, 32, 5000, 250, 8192)
    assert m.policy.temperature == 0.1 and m.feedback.temperature == 1.0 and p.judge.method == "generate"
    assert {r.backend for r in (m.policy, m.feedback, m.judge, m.planner)} == {"vllm"}


def run_plan(*args):
    return subprocess.run([sys.executable, "-m", "personal_nlf.cli", "plan", *args], capture_output=True, text=True, check=False,
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_paper_preset_on_one_gpu_fails_naming_stage_and_role():
    r = run_plan("--params", "configs/paper.yaml", "--gpus", "1", "--gpu-memory-gb", "80")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        ("does not fit: stage baseline_no_pers (judge), role judge: tensor_parallel_size 2 needs 2 GPUs, "
         "--gpus is 1 (its weights alone: 61.0 GiB)")]


def test_paper_preset_fits_on_eight_gpus():
    r = run_plan("--params", "configs/paper.yaml", "--gpus", "8", "--judge-calls-per-s", "2")
    assert r.returncode == 0, r.stderr
    # The judge alone on GPU 0 (0.6 x 80 = 48 GiB; the policy's 24 GiB engine was released).
    assert "| vac@1 evaluate | judge | judge: Qwen2.5-32B-Instruct vllm tp2 (0.6) | 30.5 | 17.5 | 0.0 | 48.0 | yes |" \
        in r.stdout
    assert "| **total** |" in r.stdout and "h in all" in r.stdout
