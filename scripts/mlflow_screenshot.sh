#!/usr/bin/env bash
# docs/mlflow_ui.png: the MLflow UI after a tiny real pipeline run, its nested stage runs
# expanded with params and metrics. Documentation only: CI never runs it.
#
#   bash scripts/mlflow_screenshot.sh [OUT.png]        (default: docs/mlflow_ui.png)
#
# What it does, step by step:
#   1. copies the worktree (as a fresh clone sees it) into a temp dir, commits it in a new git
#      repo, sets a tiny slice in params.yaml (1 record per split, 8 new tokens) and runs
#      `dvc repro baseline_rag` (base_model, prepare, index, baseline_rag: about 2 min on 2 cores),
#      then `dvc exp run -n tiny-k3 -S retrieval.k=3 baseline_rag` (index and baseline_rag again:
#      a second pipeline, so a second parent run). MLflow writes the copy's mlflow.db + mlruns/.
#   2. starts `mlflow server` on 127.0.0.1 and a free port, one worker, job execution off, with
#      setsid so that its whole process group can be stopped afterwards;
#   3. starts headless Chromium (apt package `chromium`) with a fresh profile and remote debugging
#      on 127.0.0.1, seeds the runs page's persisted view state in localStorage (parent runs
#      expanded, a few params/metrics/tags columns, the assistant panel closed), opens
#      #/experiments/<id>/runs and captures the page once every stage run is on it.
#      (A plain `chromium --screenshot --virtual-time-budget=...` of that URL renders the page, but
#      with parent runs collapsed and no param/metric columns, and the view state that fixes that,
#      runsExpanded, is not one a shared-view URL may carry; hence the DevTools protocol, spoken by
#      the small stdlib-only client below.)
#   4. stops Chromium and the server (kill of their process groups) and removes the temp dir
#      (KEEP=1 keeps it and prints where; REUSE=<that dir>/repo skips step 1 and screenshots the
#      store of an earlier run).
#
# Needs: the project environment on PATH or PYTHON=/path/to/python (dvc, mlflow, the project),
# chromium (`apt-get install -y chromium`), curl. No network: HF_HUB_OFFLINE=1, telemetry off.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$REPO/docs/mlflow_ui.png}")
PY=${PYTHON:-python}
CHROMIUM=${CHROMIUM:-chromium}
WORK=$(mktemp -d /tmp/mlflow_screenshot.XXXXXX)
SERVER_PGID="" CHROME_PGID=""

cleanup() {
    [ -n "$CHROME_PGID" ] && kill -- "-$CHROME_PGID" 2>/dev/null || true
    [ -n "$SERVER_PGID" ] && kill -- "-$SERVER_PGID" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PERSONAL_NLF_QUIET=1
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
unset MLFLOW_TRACKING_URI DVC_EXP_NAME  # the default store: <copy>/mlflow.db

# 1. A tiny pipeline run in a copy.
if [ -n "${REUSE:-}" ]; then
    STORE=$(realpath "$REUSE")
    [ -f "$STORE/mlflow.db" ] || { echo "REUSE=$REUSE: no mlflow.db there" >&2; exit 1; }
else
    STORE=$WORK/repo
    echo "== pipeline in $WORK/repo"
    mkdir "$WORK/repo"
    (cd "$REPO" && "$PY" - "$WORK/repo" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import copy_worktree, set_params  # the helpers the pipeline tests use

repo = copy_worktree(Path(sys.argv[1]))
set_params(repo, **{"data.max_records_per_split": 1, "models.policy.max_new_tokens": 8,
                    "models.planner.max_new_tokens": 8})
EOF
    )
    cd "$WORK/repo"
    git -c user.name=t -c user.email=t@t commit -qam "tiny slice"
    "$PY" -m dvc repro baseline_rag >"$WORK/repro.log" 2>&1 || { tail -30 "$WORK/repro.log"; exit 1; }
    "$PY" -m dvc exp run -n tiny-k3 -S retrieval.k=3 baseline_rag >"$WORK/exp.log" 2>&1 \
        || { tail -30 "$WORK/exp.log"; exit 1; }
    grep -h "^Running stage" "$WORK/repro.log" "$WORK/exp.log"
fi

# 2. The MLflow UI on a free local port.
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
echo "== mlflow server on 127.0.0.1:$PORT"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid bash -c 'echo $$ > "$0/server.pgid"; exec "$@"' "$WORK" \
    "$PY" -m mlflow server --host 127.0.0.1 --port "$PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STORE/mlflow.db" >"$WORK/server.log" 2>&1 </dev/null &
for _ in $(seq 180); do
    [ -s "$WORK/server.pgid" ] && SERVER_PGID=$(cat "$WORK/server.pgid")
    curl -sf -m 2 "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 1
done
curl -sf -m 5 "http://127.0.0.1:$PORT/health" >/dev/null || { tail -20 "$WORK/server.log"; exit 1; }

# 3. Headless Chromium, driven over the DevTools protocol.
mkdir "$WORK/chrome"
setsid bash -c 'echo $$ > "$0/chrome.pgid"; exec "$@"' "$WORK" \
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$WORK/chrome" \
    --window-size=1600,1000 --remote-debugging-address=127.0.0.1 --remote-debugging-port=0 \
    about:blank >"$WORK/chrome.log" 2>&1 </dev/null &
for _ in $(seq 60); do
    [ -s "$WORK/chrome.pgid" ] && CHROME_PGID=$(cat "$WORK/chrome.pgid")
    [ -s "$WORK/chrome/DevToolsActivePort" ] && break
    sleep 0.5
done
[ -s "$WORK/chrome/DevToolsActivePort" ] || { tail -20 "$WORK/chrome.log"; exit 1; }

mkdir -p "$(dirname "$OUT")"
"$PY" - "$WORK/chrome/DevToolsActivePort" "$PORT" "$STORE/mlflow.db" "$OUT" <<'EOF'
import base64, json, os, socket, sqlite3, struct, sys, time, urllib.request
from urllib.parse import urlparse

devtools_file, port, db, out = sys.argv[1:]


class CDP:
    """Just enough of a WebSocket client for the DevTools protocol (text frames, no extensions)."""

    def __init__(self, url):
        u = urlparse(url)
        self.sock, self.n = socket.create_connection((u.hostname, u.port), timeout=60), 0
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade"
                           f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"DevTools handshake failed: {head[:200]!r}")

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise SystemExit("DevTools connection closed")
            buf += chunk
        return buf

    def _message(self):
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            n = struct.unpack(">H", self._read(2))[0] if n == 126 else struct.unpack(">Q", self._read(8))[0] if n == 127 else n
            payload = self._read(n)
            if b0 & 0x0F in (0x0, 0x1):
                data += payload
                if b0 & 0x80:
                    return json.loads(data)

    def call(self, method, **params):
        self.n += 1
        data, mask = json.dumps({"id": self.n, "method": method, "params": params}).encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + struct.pack(">H", n) if n < 65536
                                else bytes([0xFF]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            m = self._message()
            if m.get("id") == self.n:
                if "error" in m:
                    raise SystemExit(f"{method}: {m['error']}")
                return m.get("result", {})

    def js(self, expr):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")


con = sqlite3.connect(db)
exp_id = str(con.execute("SELECT experiment_id FROM experiments WHERE name = 'personal_nlf'").fetchone()[0])
parents = [r for (r,) in con.execute("SELECT run_uuid FROM tags WHERE key = 'personal_nlf.pipeline'")]
stages = [r for (r,) in con.execute("SELECT value FROM tags WHERE key = 'stage'")]
metric_keys = {k for (k,) in con.execute("SELECT DISTINCT key FROM latest_metrics")}
wanted = ["metrics.`macro`"] + sorted(f"metrics.`{k}`" for k in metric_keys if k.startswith("score.")) + [
    "metrics.`s_per_query`", "metrics.`n_records`", "params.`retrieval.k`", "params.`method`",
    "tags.`dvc_experiment`", "tags.`git_revision`"]
ui_state = {"runsExpanded": {p: True for p in parents}, "selectedColumns": wanted}

port_devtools = open(devtools_file).read().split()[0]
pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port_devtools}/json/list"))
cdp = CDP(next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"))
cdp.call("Page.enable")
cdp.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
base = f"http://127.0.0.1:{port}"
cdp.call("Page.navigate", url=f"{base}/health")  # same origin: its localStorage is the app's
time.sleep(1)
store = {f'MLflowLocalStorage-1.1-ExperimentPage-["{exp_id}"]-ReactComponentState': json.dumps(ui_state),
         "mlflow.assistant.panelOpen_v1": "false", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}
cdp.js(";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in store.items()))
cdp.call("Page.navigate", url=f"{base}/#/experiments/{exp_id}/runs")
deadline, text = time.time() + 90, ""
while time.time() < deadline:
    text = cdp.js("document.body ? document.body.innerText : ''") or ""
    if all(text.count(s) >= stages.count(s) for s in set(stages)) and "matching runs" in text:
        break
    time.sleep(0.5)
else:
    raise SystemExit(f"the runs page never listed every stage run; it shows:\n{text[:2000]}")
cdp.js("document.querySelector('[data-component-id=\"mlflow_header.toggle_sidebar_button\"]')?.click()")
time.sleep(2)  # let the table settle (column widths, icons)
png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
open(out, "wb").write(png)
print(f"== {out}: {len(png)} bytes; {len(parents)} pipelines, {len(stages)} stage runs")
EOF
