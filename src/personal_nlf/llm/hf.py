"""transformers backend: CPU or CUDA (picked automatically), batched generation with left
padding, chat templates, optional PEFT adapter, seeded sampling, next-token log-probs."""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import models
from ..config import RoleConfig
from .base import Backend, BackendError, Generation, Messages, Sampling, render_plain


def local_rank() -> int | None:
    """This process's rank on its machine under torchrun / accelerate launch (None: not launched so)."""
    rank = os.environ.get("LOCAL_RANK", "")
    return int(rank) if rank.strip() else None


def resolve_device(device: str, n_cuda: int, rank: int | None, mps: bool = False) -> str:
    """Where a process puts its model. Under torchrun/accelerate each rank owns one GPU,
    cuda:<LOCAL_RANK> (a bare "cuda" would put every rank on cuda:0); modulo the visible GPUs for
    launchers that show each rank only its own. An explicit index or "cpu" is kept as given."""
    if device not in ("auto", "cuda"):
        return device
    if n_cuda > 0:
        return "cuda" if rank is None else f"cuda:{rank % n_cuda}"
    if device == "cuda":
        return device  # asked for, not there: let torch say so
    return "mps" if mps else "cpu"


def pick_device(device: str) -> str:
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return resolve_device(device, n_cuda, local_rank(), mps)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it bf16 is emulated."""
    import torch

    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def pick_dtype(dtype: str, device: str):
    """Inference weights dtype. auto: bf16 on CUDA, and on a CPU with native bf16 (faster than fp32
    there: benchmarks/RESULTS_judge.md, generation and judge); fp32 on other CPUs, where bf16 is
    emulated, and on MPS. An explicit dtype wins."""
    import torch

    if dtype == "auto":
        native = device.startswith("cuda") or (device == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, dtype)


def train_dtype(role_dtype: str, cuda: bool, bf16_ok: bool) -> str:
    """Weights dtype for LoRA training. auto: bf16 on a GPU that supports it (half the memory of
    fp32; the LoRA weights themselves stay fp32 in PEFT), else fp32 (CPU training keeps fp32, as
    TRL's CPU path expects; fp16 base weights are not a safe training default). An explicit dtype wins."""
    if role_dtype != "auto":
        return role_dtype
    return "bfloat16" if cuda and bf16_ok else "float32"


def load_model_and_tokenizer(model_ref: str, models_dir, device="auto", dtype="auto", adapter: str | None = None,
                             trainable: bool = False, merge_adapter: bool = True):
    """Shared by the hf backend, training and the vllm backend's merged serving: resolve, load,
    attach adapter, move.

    For inference (not trainable, merge_adapter) an adapter is merged into the weights in fp32 and
    the merged model is then cast to the inference dtype. Unmerged under bf16, each LoRA output is
    added to a bf16 activation and rounded away where it is under half an ulp, so part of the
    adapter's effect is lost; merged, it keeps more of it and costs one matmul per layer instead of
    three (benchmarks/RESULTS_adapter.md)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve(model_ref, models_dir)
    dev = pick_device(device)
    infer_dtype = pick_dtype(dtype, dev)
    merge = bool(adapter) and not trainable and merge_adapter
    try:
        tok = AutoTokenizer.from_pretrained(path)
        # Loaded on the host (the merge runs there, so an fp32 copy never needs room on a GPU).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if merge else infer_dtype)
    except OSError as e:
        raise BackendError(f"could not load model {model_ref!r} from {path!r}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if adapter:
        from peft import PeftModel

        if not Path(adapter, "adapter_config.json").exists():
            raise BackendError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
        if merge:
            model = model.merge_and_unload().to(infer_dtype)
    model.to(dev)
    if not trainable:
        model.eval()
    return model, tok, path, dev


def save_merged_model(model_ref: str, models_dir, adapter: str, dtype: str, out_dir: str | Path) -> None:
    """Write `adapter` merged into `model_ref` (in fp32, on the host, then cast to `dtype`: as the
    hf backend serves it) as a model folder another engine loads as is (the vllm backend's
    adapter_serving: merged). The base's own tokenizer files go beside it, unchanged."""
    from transformers import AutoTokenizer

    model, _, path, _ = load_model_and_tokenizer(model_ref, models_dir, "cpu", dtype, adapter)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(path).save_pretrained(out_dir)


class HFBackend(Backend):
    name = "hf"

    def __init__(self, role: RoleConfig, models_dir=None, seed: int = 0):
        self.role = role
        self.seed = seed
        self.model, self.tok, self.path, self.device = load_model_and_tokenizer(
            role.model, models_dir, role.device, role.dtype, role.adapter,
            merge_adapter=role.adapter_serving == "merged")
        fmt = role.prompt_format
        self.chat = bool(self.tok.chat_template) if fmt == "auto" else fmt == "chat"
        if self.chat and not self.tok.chat_template:
            raise BackendError(f"{role.model}: prompt_format=chat but the tokenizer has no chat template; use plain")
        self.truncated = 0

    def for_role(self, role: RoleConfig) -> "HFBackend":
        # The same weights and tokenizer; the role's batch size and input budget (read per call).
        if role == self.role:
            return self
        view = copy.copy(self)
        view.role, view.truncated = role, 0
        return view

    # ------------------------------------------------------------------ rendering
    def render(self, messages: Messages, answer_prefix: str = "") -> str:
        if not self.chat:
            return render_plain(messages, answer_prefix)
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + answer_prefix

    def _token_ids(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each text within the role's input budget, and whether it was cut."""
        out, flags = [], []
        limit = self.role.max_input_tokens
        for ids in self.tok(texts, add_special_tokens=not self.chat)["input_ids"]:
            cut = len(ids) > limit
            if cut:
                # Keep the end: prompts put the question and instructions last.
                ids = ids[-limit:]
                self.truncated += 1
            out.append(ids)
            flags.append(cut)
        return out, flags

    def _pad(self, seqs: list[list[int]], side: str = "left"):
        """The tokenizer's own padding (left for generation and last-token scoring)."""
        batch = self.tok.pad({"input_ids": seqs}, padding=True, padding_side=side, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def _encode(self, texts: list[str]):
        ids, flags = self._token_ids(texts)
        input_ids, mask = self._pad(ids)
        return input_ids, mask, [len(i) for i in ids], flags

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[Messages], sampling: Sampling) -> list[list[Generation]]:
        texts = [self.render(p) for p in prompts]
        if sampling.temperature > 0:
            return self._generate(texts, sampling)
        # Greedy: a repeated prompt (users who share a question, without personalization) is
        # answered once; its copies share the answer and split its latency, so time sums stay true.
        unique = list(dict.fromkeys(texts))
        done = dict(zip(unique, self._generate(unique, sampling)))
        copies = collections.Counter(texts)
        return [[dataclasses.replace(g, latency_s=g.latency_s / copies[t]) for g in done[t]] for t in texts]

    def _generate(self, texts: list[str], sampling: Sampling) -> list[list[Generation]]:
        import torch

        results: list[list[Generation] | None] = [None] * len(texts)
        # Length-sorted batches: less padding, and the order of the output does not depend on it.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        bs = self.role.batch_size
        for b, start in enumerate(range(0, len(order), bs)):
            idx = order[start:start + bs]
            input_ids, mask, lens, flags = self._encode([texts[i] for i in idx])
            gen_kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tok.pad_token_id)
            if sampling.temperature > 0:
                gen_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            torch.manual_seed(sampling.seed + b)
            t0 = time.perf_counter()
            with torch.inference_mode():
                if sampling.n > 1 and SHARE_SAMPLE_PREFILL and input_ids.shape[1] > 1:
                    # N samples of one prompt (offline RL's rollout, VAC's feedbacks): the prompt is
                    # computed once and its KV cache copied N times, where num_return_sequences
                    # would compute it N times. Rows come out as num_return_sequences orders them.
                    cache = self._prefill(input_ids[:, :-1], mask[:, :-1])
                    cache.batch_repeat_interleave(sampling.n)
                    out = self.model.generate(input_ids=input_ids.repeat_interleave(sampling.n, dim=0),
                                              attention_mask=mask.repeat_interleave(sampling.n, dim=0),
                                              past_key_values=cache, **gen_kwargs)
                else:
                    out = self.model.generate(input_ids=input_ids, attention_mask=mask,
                                              num_return_sequences=sampling.n, **gen_kwargs)
            dt = (time.perf_counter() - t0) / len(idx)
            new = out[:, input_ids.shape[1]:]
            for j, i in enumerate(idx):
                gens = []
                for s in range(sampling.n):
                    row = new[j * sampling.n + s]
                    eos = (row == self.tok.eos_token_id).nonzero()
                    n_tok = int(eos[0]) + 1 if len(eos) else int((row != self.tok.pad_token_id).sum())
                    text = self.tok.decode(row[:n_tok], skip_special_tokens=True).strip()
                    gens.append(Generation(text=text, prompt_tokens=lens[j], completion_tokens=n_tok, latency_s=dt,
                                           finish_reason="stop" if len(eos) else "length",
                                           extra={"truncated": True} if flags[j] else {}))
                results[i] = gens
        return results  # type: ignore[return-value]

    def _prefill(self, input_ids, mask):
        """The KV cache of left-padded prompts, with the positions generate() gives them (counted
        from each row's first real token), for generate() to continue from."""
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        # Only the cache is wanted: logits_to_keep=1 spares the lm_head over the prompt.
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1).past_key_values

    def choice_logprobs(self, prompts: list[Messages], answer_prefix: str, choices: list[str]) -> list[dict[str, float]]:
        import torch

        # Raw log-probabilities (log-softmax over the whole vocabulary, not renormalized over the
        # choices): label_mass() of a row is the probability the judge puts on the labels at all.
        variants = {c: label_token_ids(lambda s: self.tok.encode(s, add_special_tokens=False), c, self.role.model)
                    for c in choices}
        seqs, _ = self._token_ids([self.render(p, answer_prefix) for p in prompts])
        out: list[dict[str, float] | None] = [None] * len(seqs)
        for prefix_len, idx in shared_prefix_groups(seqs, MIN_SHARED_PREFIX):
            logits = self._last_logits_shared(seqs, idx, prefix_len) if prefix_len else self._last_logits(seqs, idx)
            for i, row in zip(idx, torch.log_softmax(logits.float(), dim=-1)):
                out[i] = {c: float(torch.logsumexp(row[ids], dim=0)) for c, ids in variants.items()}
        return out  # type: ignore[return-value]

    def _last_logits(self, seqs: list[list[int]], idx: list[int]):
        """Next-token logits after each of seqs[idx], batched (left padding: all end together)."""
        import torch

        parts = []
        for start in range(0, len(idx), self.role.batch_size):
            input_ids, mask = self._pad([seqs[i] for i in idx[start:start + self.role.batch_size]])
            with torch.inference_mode():
                parts.append(self.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :])
        return torch.cat(parts)

    def _last_logits_shared(self, seqs: list[list[int]], idx: list[int], prefix_len: int):
        """As _last_logits for sequences that share their first prefix_len tokens (the aspects of
        one judged answer): the prefix is computed once, and every suffix continues from a copy of
        its KV cache. Suffixes are right-padded, so each row's last real token is read."""
        import torch

        prefix = torch.tensor([seqs[idx[0]][:prefix_len]], device=self.device)
        with torch.inference_mode():
            # Only the cache is wanted: logits_to_keep=1 spares the lm_head over the whole prefix
            # (a fifth of a 135M model's work per token; the default 0 keeps every position).
            cache = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
        parts = []
        for start in range(0, len(idx), self.role.batch_size):
            sub = idx[start:start + self.role.batch_size]
            suffixes = [seqs[i][prefix_len:] for i in sub]
            last = torch.tensor([len(x) - 1 for x in suffixes], device=self.device)
            keep = torch.unique(last)  # logits only where some row ends
            logits = self._continue_from(cache, prefix_len, suffixes, logits_to_keep=keep)
            parts.append(logits[torch.arange(len(sub), device=self.device), torch.searchsorted(keep, last)])
        return torch.cat(parts)

    def _continue_from(self, cache, prefix_len: int, suffixes: list[list[int]], logits_to_keep=0):
        """Logits of each suffix continuing one prefix's KV cache (copied per batch, which the
        forward pass extends in place). Suffixes are right-padded: row r's position j is its j-th
        token. logits_to_keep as in transformers (0: every position)."""
        import torch

        input_ids, mask = self._pad(suffixes, side="right")
        mask = torch.cat([torch.ones(len(suffixes), prefix_len, dtype=mask.dtype, device=self.device), mask], dim=1)
        shared = copy.deepcopy(cache)
        shared.batch_repeat_interleave(len(suffixes))
        with torch.inference_mode():
            return self.model(input_ids=input_ids, attention_mask=mask, past_key_values=shared, use_cache=True,
                              logits_to_keep=logits_to_keep).logits

    def answer_logprobs(self, prompts: list[Messages], answers: list[str]) -> list[float]:
        """Summed log-probability of each answer after its prompt. Answers to one prompt (a
        preference pair's chosen and rejected, a user's pairs) share the prompt's forward pass
        (shared_prefix_groups); the rest are batched. A repeated (prompt, answer) is scored once
        (users who share a question are scored on the same responses without personalization)."""
        keys = []
        for p, a in zip(prompts, answers):
            ids_p = self.tok(self.render(p), add_special_tokens=not self.chat)["input_ids"]
            ids_a = self.tok(a, add_special_tokens=False)["input_ids"] or [self.tok.eos_token_id]
            ids = (ids_p + ids_a)[-self.role.max_input_tokens:]
            keys.append((tuple(ids), len(ids) - min(len(ids_a), len(ids) - 1)))  # (tokens, answer start)
        unique = list(dict.fromkeys(keys))
        scores = dict(zip(unique, self._unique_answer_logprobs([list(k[0]) for k in unique], [k[1] for k in unique])))
        return [scores[k] for k in keys]

    def _unique_answer_logprobs(self, seqs: list[list[int]], starts: list[int]) -> list[float]:
        out: list[float | None] = [None] * len(seqs)
        alone = []
        for prefix_len, idx in shared_prefix_groups(seqs, MIN_SHARED_PREFIX):
            if prefix_len:
                for i, lp in zip(idx, self._answer_logprobs_shared(seqs, starts, idx, prefix_len)):
                    out[i] = lp
            else:
                alone += idx
        for start in range(0, len(alone), self.role.batch_size):
            idx = alone[start:start + self.role.batch_size]
            for i, lp in zip(idx, self._answer_logprobs_batched(seqs, starts, idx)):
                out[i] = lp
        return out  # type: ignore[return-value]

    def _answer_logprobs_batched(self, seqs: list[list[int]], starts: list[int], idx: list[int]) -> list[float]:
        import torch

        input_ids, mask = self._pad([seqs[i] for i in idx])
        n_ans = [len(seqs[i]) - starts[i] for i in idx]
        # Left padding: every answer ends at the last position. The token at position i is
        # predicted by the logits at i - 1, so the last k + 1 positions cover an answer of k.
        k = max(n_ans) + 1
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(input_ids=input_ids, attention_mask=mask,
                                                logits_to_keep=k).logits.float(), dim=-1)
        out = []
        for row, n in enumerate(n_ans):
            targets = input_ids[row, input_ids.shape[1] - n:]
            out.append(float(logp[row, k - n - 1:k - 1].gather(1, targets[:, None]).sum()))
        return out

    def _answer_logprobs_shared(self, seqs: list[list[int]], starts: list[int], idx: list[int],
                                prefix_len: int) -> list[float]:
        """As _answer_logprobs_batched for sequences sharing their first prefix_len tokens: the
        prefix (the prompt, and any start the answers share) is computed once and each suffix
        continues from a copy of its KV cache (right-padded, as _last_logits_shared)."""
        import torch

        # The prefix's logits from the position before the earliest answer start: an answer token
        # inside the prefix, or the first one after it, is predicted there.
        first = min(starts[i] for i in idx)
        keep_prefix = prefix_len - min(first, prefix_len) + 1
        prefix = torch.tensor([seqs[idx[0]][:prefix_len]], device=self.device)
        with torch.inference_mode():
            res = self.model(input_ids=prefix, use_cache=True, logits_to_keep=keep_prefix)
        cache, prefix_logits = res.past_key_values, res.logits[0].float()  # positions prefix_len - keep_prefix ..
        out = []
        for start in range(0, len(idx), self.role.batch_size):
            sub = idx[start:start + self.role.batch_size]
            logits = self._continue_from(cache, prefix_len, [seqs[i][prefix_len:] for i in sub]).float()
            for row, i in enumerate(sub):
                seq, s = seqs[i], starts[i]
                # Rows predicting positions s .. len-1: positions s-1 .. prefix_len-1 from the
                # prefix, prefix_len .. len-2 from the suffix (the last token predicts nothing).
                from_prefix = prefix_logits[keep_prefix - (prefix_len - s + 1):] if s <= prefix_len else prefix_logits[:0]
                from_suffix = logits[row, max(s - 1 - prefix_len, 0):len(seq) - 1 - prefix_len]
                logp = torch.log_softmax(torch.cat([from_prefix, from_suffix]), dim=-1)
                targets = torch.tensor(seq[s:], device=self.device)
                out.append(float(logp.gather(1, targets[:, None]).sum()))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "hf",
            "model": self.role.model,
            "model_hash": models.folder_hash(self.path) if Path(self.path).exists() else self.path,
            "adapter": self.role.adapter,
            "adapter_hash": models.folder_hash(self.role.adapter) if self.role.adapter else None,
            "adapter_merged": bool(self.role.adapter) and self.role.adapter_serving == "merged",
            "device": self.device,
            "dtype": str(next(self.model.parameters()).dtype),
            "prompt_format": "chat" if self.chat else "plain",
        }


# A prefix shorter than this is not worth a separate forward pass and a cache copy.
MIN_SHARED_PREFIX = 32
# N samples of one prompt share its prefill (off: generate's num_return_sequences computes the
# prompt N times; benchmarks/bench_sampling.py times both).
SHARE_SAMPLE_PREFILL = True


def shared_prefix_groups(seqs: list[list[int]], min_prefix: int) -> list[tuple[int, list[int]]]:
    """Runs of consecutive sequences that share their first >= min_prefix tokens, as
    (prefix length, indices); every other sequence is a group of its own with prefix length 0.
    A run's prefix is what its first two members share; later members must share all of it. The
    prefix always leaves each member at least one token of its own (whose logits are read)."""
    groups: list[tuple[int, list[int]]] = []
    for i, seq in enumerate(seqs):
        if groups and i > 0:
            plen, idx = groups[-1]
            first = seqs[idx[0]]
            n = 0
            limit = min(len(first), len(seq)) - 1
            while n < limit and first[n] == seq[n]:
                n += 1
            # A formed group takes only sequences with its whole prefix: the aspects of the next
            # answer share less (question and narrative) and start their own, longer-prefixed group.
            if n >= min_prefix and (len(idx) == 1 or n >= plen):
                n = n if len(idx) == 1 else plen
                groups[-1] = (n, idx + [i])
                continue
        groups.append((0, [i]))
    return [(plen if len(idx) > 1 else 0, idx) for plen, idx in groups]


def label_token_ids(encode: Callable[[str], list[int]], label: str, model: str = "") -> list[int]:
    """The tokens that count as `label` right after the judge's answer prefix, in every backend
    (hf and vLLM): each of `label` and `" " + label` that encodes to exactly one token. A model may
    spell the label with or without a leading space (the prefix ends in a space, but BPE vocabularies
    often hold " 0" as one token); both spellings are the same answer. With digit-splitting
    tokenizers (SmolLM2, Qwen2.5, Llama 3) " 0" is two tokens, so only "0" counts."""
    ids = sorted({enc[0] for enc in (encode(label), encode(" " + label)) if len(enc) == 1})
    if not ids:
        raise BackendError(f"choice {label!r} is not a single token for {model or 'this tokenizer'}")
    return ids


def label_mass(logprobs: dict[str, float]) -> float:
    """Probability mass on the labels before renormalization: sum of exp(raw log-prob). Near 1 the
    judge answers with a label; near 0 its expected score is a renormalized guess."""
    return math.fsum(math.exp(lp) for lp in logprobs.values())


def expected_score(logprobs: dict[str, float]) -> float:
    """Expected value of the choice labels ("0","1","2"), probabilities renormalized over them."""
    ps = {c: math.exp(lp) for c, lp in logprobs.items()}
    z = sum(ps.values())
    if z <= 0:
        raise BackendError("all choice probabilities are zero")
    return sum(int(c) * p for c, p in ps.items()) / z
