"""Start a real OpenAI-compatible server for a local model folder on loopback (tests, `apply` demos).

Uses `transformers serve` (needs `transformers[serving]`: fastapi, uvicorn, ...), which preloads the
folder given as FORCE_MODEL and serves `/v1/chat/completions`. The served model name is the folder
path exactly as given on the command line (the server answers 400 to any other name), so
`serve_local_model` yields that string as the model name.

    with serve_local_model("/path/to/smollm2-135m-instruct") as (base_url, model):
        role = RoleConfig(backend="openai", base_url=base_url, model=model)

Command line (serves until Ctrl-C):

    python -m personal_nlf.llm.local_server MODEL_DIR [--port 8000]
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
) -> Iterator[tuple[str, str]]:
    """Serve `model_dir` on http://host:port/v1; yield (base_url, model_name); stop it on exit.

    Ready means: the process is up, `/health` answers and a one-token chat completion succeeds.
    """
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"serve_local_model binds loopback only ({', '.join(LOOPBACK_HOSTS)}), not {host!r}")
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
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
        cmd = serve_command(model_name, host, port, device=device, dtype=dtype, log_level=log_level)
        with open(logfile, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
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
    args = ap.parse_args(argv)
    with serve_local_model(args.model_dir, args.port, args.host, args.timeout_s,
                           device=args.device, dtype=args.dtype, log_level="info") as (base_url, model):
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
