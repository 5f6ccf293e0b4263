"""Backend for any OpenAI-compatible chat endpoint (OpenAI, vLLM server, `transformers serve`...).

- Endpoint and model name come from the role (`base_url`, `model`, passed as-is). The API key is
  read from the environment variable *named* by `role.api_key_env`; it never comes from params and
  never appears in `describe()`, in exception messages or in log records.
- The retry policy is ours (the openai client's own retries are disabled): 408/409/429/5xx,
  connection errors, timeouts and malformed bodies are retried up to `role.max_retries` times with
  exponential backoff and jitter, honouring `Retry-After`; any other 4xx fails at once.
- `generate` runs one request per (prompt, sample) on a pool of `role.batch_size` threads and
  keeps the order. `n > 1` is sent as n requests (seed = sampling.seed + j) because many servers
  ignore or reject `n`.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import urlsplit

from ..config import RoleConfig
from .base import BackendError, StreamingBackend, Generation, Messages, Sampling

log = logging.getLogger(__name__)

# Backoff before retry k (k = 0, 1, ...): min(BACKOFF_MAX_S, base * 2**k), with jitter in [50%, 100%].
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0  # a server asking for longer than this is waited on for this long only
RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx
EXCERPT_CHARS = 300
DUMMY_KEY = "EMPTY"  # local servers (vLLM, transformers serve, llama.cpp) ignore the key
TOP_LOGPROBS = 20  # OpenAI's maximum for top_logprobs; vLLM's default max_logprobs is 20 too
MISSING_LOGPROB = -1e9  # a label outside the returned top log-probs (as in the vllm backend)


class _Retryable(Exception):
    """One failed attempt that may succeed if tried again."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.retry_after = retry_after


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_retry_after(headers: Any) -> float | None:
    """Seconds asked for by `retry-after-ms` / `Retry-After` (seconds or an HTTP date), if any."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(math.fsum(math.exp(v - m) for v in values))


def labels_from_top_logprobs(entry: dict[str, Any], choices: list[str]) -> dict[str, float]:
    """Label log-probs from one chat-completions `logprobs.content[i]` entry: a token counts for
    label c when its text is "c" or " c" (probabilities summed); MISSING_LOGPROB when none is there."""
    tops = entry.get("top_logprobs") or []
    seen: dict[str, float] = {}
    for t in [entry, *tops]:
        tok, lp = t.get("token"), t.get("logprob")
        if isinstance(tok, str) and isinstance(lp, (int, float)) and math.isfinite(lp):
            seen.setdefault(tok, float(lp))  # the chosen token also appears among the top ones
    out = {}
    for c in choices:
        vals = [seen[t] for t in {c, " " + c} if t in seen]
        out[c] = _logsumexp(vals) if vals else MISSING_LOGPROB
    return out


class OpenAIBackend(StreamingBackend):
    name = "openai"

    def __init__(
        self,
        role: RoleConfig,
        models_dir=None,
        seed: int = 0,
        *,
        role_name: str = "<role>",
        backoff_base_s: float | None = None,
        backoff_max_s: float | None = None,
    ):
        import openai  # lazy: only this backend needs it

        self._openai = openai
        self.role = role
        self.role_name = role_name
        self.seed = seed
        if not role.base_url:
            raise BackendError(
                f"models.{role_name}.base_url is required for backend openai "
                "(e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1)"
            )
        if role.adapter:
            raise BackendError(
                f"models.{role_name}.adapter is not supported by backend openai: serve the adapter on the "
                f"endpoint and put its served name in models.{role_name}.model instead"
            )
        self.base_url = role.base_url.rstrip("/")
        self.model = role.model
        key = os.environ.get(role.api_key_env) if role.api_key_env else None
        if not key:
            if not is_loopback_url(self.base_url):
                raise BackendError(
                    f"environment variable {role.api_key_env!r} (models.{role_name}.api_key_env) is not set; "
                    f"it must hold the API key for {self.base_url}"
                )
            key = DUMMY_KEY
        self._secret = key if key != DUMMY_KEY else None
        self.max_retries = int(role.max_retries)
        self.timeout_s = float(role.timeout_s)
        self.backoff_base_s = BACKOFF_BASE_S if backoff_base_s is None else float(backoff_base_s)
        self.backoff_max_s = BACKOFF_MAX_S if backoff_max_s is None else float(backoff_max_s)
        self.workers = max(1, int(role.batch_size))
        self._rng = random.Random()  # jitter only; never affects outputs
        self._rng_lock = threading.Lock()
        # Request parameters some servers reject; dropped / renamed once the server says so.
        self._send_seed = True
        self._max_tokens_key = "max_tokens"
        self.client = openai.OpenAI(
            api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )

    # ---------------------------------------------------------------- helpers
    def _redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def _excerpt(self, text: str) -> str:
        text = " ".join(str(text).split())
        if len(text) > EXCERPT_CHARS:
            text = text[:EXCERPT_CHARS] + "..."
        return self._redact(text)

    def _backoff(self, retry_index: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_MAX_S)
        cap = min(self.backoff_max_s, self.backoff_base_s * (2**retry_index))
        with self._rng_lock:
            return cap * (0.5 + 0.5 * self._rng.random())

    def _maybe_adapt(self, status: int, body: str) -> bool:
        """Drop/rename a parameter the server rejected (400/422). True if the request should be resent."""
        if status not in (400, 422):
            return False
        low = body.lower()
        if self._send_seed and "seed" in low:
            self._send_seed = False
            log.info("openai backend: %s rejected 'seed'; sending requests without it", self.base_url)
            return True
        if self._max_tokens_key == "max_tokens" and "max_completion_tokens" in low:
            self._max_tokens_key = "max_completion_tokens"
            log.info("openai backend: %s wants 'max_completion_tokens' instead of 'max_tokens'", self.base_url)
            return True
        return False

    def _params(self, sampling: Sampling, seed: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": float(sampling.temperature),
            "top_p": float(sampling.top_p),
            self._max_tokens_key: int(sampling.max_new_tokens),
        }
        if self._send_seed:
            params["seed"] = int(seed)
        return params

    def _parse(self, text: str) -> tuple[str, str, dict | None, str | None, list | None]:
        try:
            data = json.loads(text)
        except ValueError:
            raise _Retryable("MalformedResponse", f"body is not JSON: {self._excerpt(text)!r}") from None
        if not isinstance(data, dict):
            raise _Retryable("MalformedResponse", f"body is not a JSON object: {self._excerpt(text)!r}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retryable("MalformedResponse", f"no choices in body: {self._excerpt(text)!r}")
        choice = choices[0]
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise _Retryable("MalformedResponse", f"choice has no text content: {self._excerpt(text)!r}")
        finish = choice.get("finish_reason") or "stop"
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        lp = choice.get("logprobs")
        lp_content = lp.get("content") if isinstance(lp, dict) else None
        return content, str(finish), usage, data.get("model"), lp_content if isinstance(lp_content, list) else None

    def _attempt(self, messages: Messages, sampling: Sampling, seed: int,
                 extra: dict[str, Any] | None = None) -> tuple[tuple, dict[str, Any]]:
        """One HTTP request: (parsed answer, the sampling params sent). Raises _Retryable or BackendError."""
        openai = self._openai
        for _ in range(3):  # at most two parameter adaptations, then a real answer
            params = {**self._params(sampling, seed), **(extra or {})}
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, **params
                )
            except openai.APITimeoutError:
                raise _Retryable("Timeout", f"no answer within {self.timeout_s:g} s") from None
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e.__context__
                detail = type(cause).__name__ if cause is not None else str(e)
                raise _Retryable("ConnectionError", self._excerpt(detail)) from None
            except openai.APIStatusError as e:
                status = e.status_code
                try:
                    body = e.response.text
                except Exception:  # noqa: BLE001 - body already consumed / undecodable
                    body = str(e.body)
                if status in RETRYABLE_STATUS or status >= 500:
                    raise _Retryable(
                        f"HTTP {status}", self._excerpt(body), _parse_retry_after(e.response.headers)
                    ) from None
                if self._maybe_adapt(status, body):
                    continue
                raise BackendError(
                    f"endpoint {self.base_url} (model {self.model!r}) rejected the request: "
                    f"HTTP {status}: {self._excerpt(body)}"
                ) from None
            return self._parse(raw.http_response.text), params
        raise BackendError(f"endpoint {self.base_url} kept rejecting request parameters")

    def _request(self, messages: Messages, sampling: Sampling, seed: int, abort: threading.Event,
                 extra_params: dict[str, Any] | None = None) -> Generation:
        t0 = time.perf_counter()
        last: _Retryable | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                raise BackendError("cancelled: another request in the batch failed")
            attempts += 1
            try:
                (text, finish, usage, served, logprobs), sent = self._attempt(messages, sampling, seed, extra_params)
            except _Retryable as e:
                last = e
                if attempt >= self.max_retries:
                    break
                delay = self._backoff(attempt, e.retry_after)
                log.warning(
                    "openai backend: attempt %d/%d to %s failed (%s); retrying in %.2f s",
                    attempt + 1, self.max_retries + 1, self.base_url, self._redact(str(e)), delay,
                )
                if abort.wait(delay):
                    raise BackendError("cancelled: another request in the batch failed") from None
                continue
            extra: dict[str, Any] = {"attempts": attempts}
            if served:
                extra["served_model"] = served
            if "seed" in sent:
                extra["seed"] = sent["seed"]
            if logprobs is not None:
                extra["logprobs"] = logprobs
            if usage is None or usage.get("prompt_tokens") is None or usage.get("completion_tokens") is None:
                extra["usage_missing"] = True
                usage = usage or {}
            return Generation(
                text=text,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                latency_s=time.perf_counter() - t0,  # this request, retries and backoff included
                finish_reason=finish,
                extra=extra,
            )
        assert last is not None
        what = "unreachable" if last.kind in ("ConnectionError", "Timeout") else "failing"
        raise BackendError(
            f"endpoint {self.base_url} (model {self.model!r}) {what} after {self.max_retries} retries "
            f"({attempts} attempts; last error {self._redact(str(last))})"
        )

    # ---------------------------------------------------------------- interface
    def _run(self, jobs: list[tuple[Messages, Sampling, int, dict[str, Any] | None]]) -> Iterator[tuple[int, Generation]]:
        """Run (messages, sampling, seed, extra params) jobs with `batch_size` requests in flight;
        yield (job index, Generation) as each request finishes. The first failure cancels what has
        not started and is raised (what finished before it has already been yielded)."""
        if not jobs:
            return
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(jobs)), thread_name_prefix="openai-backend")
        try:
            futs = {pool.submit(self._request, m, s, seed, abort, ex): k for k, (m, s, seed, ex) in enumerate(jobs)}
            for f in as_completed(futs):
                exc = f.exception()
                if exc is not None:
                    abort.set()
                    raise exc
                yield futs[f], f.result()
        finally:
            abort.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def generate_stream(self, prompts: list[Messages], sampling: Sampling) -> Iterator[tuple[int, list[Generation]]]:
        """(prompt index, its `sampling.n` generations) as each prompt's last request finishes."""
        n = max(1, int(sampling.n))
        jobs = [(prompts[i], sampling, sampling.seed + j, None) for i in range(len(prompts)) for j in range(n)]
        got: dict[int, list[Generation | None]] = {}
        for k, gen in self._run(jobs):
            i, j = divmod(k, n)
            row = got.setdefault(i, [None] * n)
            row[j] = gen
            if all(g is not None for g in row):
                yield i, got.pop(i)  # type: ignore[misc]

    def choice_logprobs(self, prompts: list[Messages], answer_prefix: str, choices: list[str]) -> list[dict[str, float]]:
        """One-token chat completions with `logprobs`/`top_logprobs=TOP_LOGPROBS`, the answer prefix
        sent as a partial assistant message that the server continues (`continue_final_message`,
        `add_generation_prompt=False`: vLLM's and this project's local server's extension). A
        returned token counts for label c when its text is "c" or " c" (the single-token spellings of
        `hf.label_token_ids`); their probabilities add up. Raw log-probs, so `hf.label_mass` of a row
        is the mass on the labels; a label with no token in the top TOP_LOGPROBS gets
        MISSING_LOGPROB (there is no exact fallback through this API: a label mass well below 1
        shows it)."""
        if not prompts:
            return []
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        if answer_prefix:
            extra["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=1, seed=self.seed)
        jobs = [([*p, {"role": "assistant", "content": answer_prefix}] if answer_prefix else p, greedy, self.seed, extra)
                for p in prompts]
        out: list[dict[str, float] | None] = [None] * len(prompts)
        for k, gen in self._run(jobs):
            content = gen.extra.get("logprobs")
            if not content or not isinstance(content[0], dict):
                raise BackendError(
                    f"endpoint {self.base_url} (model {self.model!r}) returned no token log-probabilities; "
                    "the logprob judge needs a server that honours logprobs/top_logprobs (vLLM, "
                    "personal_nlf.llm.local_server --impl builtin); use judge.method=generate otherwise")
            out[k] = labels_from_top_logprobs(content[0], choices)
        return out  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
