#!/usr/bin/env bash
# docs/plots_offline.png: the `dvc plots show` page of this workspace, rendered by headless
# Chromium with the network cut off, to show that the page needs no CDN. Documentation only: CI
# never runs it (tests/test_plots_offline.py checks the same page, and loads it in Chromium when
# one is installed).
#
#   bash scripts/plots_screenshot.sh [OUT.png]        (default: docs/plots_offline.png)
#
# What it does:
#   1. `dvc plots show -o <tmp>` in the repo: the plots dvc.yaml declares, on the workspace's
#      metrics/plots/*.json, through the template .dvc/config names (plots.html_template =
#      configs/plots/offline.html, vega/vega-lite/vega-embed inlined); nothing written in the repo;
#   2. loads the page in Chromium with every host name unresolvable and a dead proxy
#      (--host-resolver-rules='MAP * ~NOTFOUND', --proxy-server=127.0.0.1:9), dumps the DOM after
#      10 s of virtual time and fails unless every plot div became a vega-embed with a canvas
#      (DVC's stock page, whose scripts come from cdn.jsdelivr.net, gets none: a blank page);
#   3. takes the screenshot the same way (WINDOW=1100,820 by default).
#
# Needs: the project environment on PATH or PYTHON=/path/to/python (dvc), chromium
# (`apt-get install -y chromium`, or CHROMIUM=/path/to/chrome).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$REPO/docs/plots_offline.png}")
PY=${PYTHON:-python}
CHROMIUM=${CHROMIUM:-chromium}
WINDOW=${WINDOW:-1100,820}
WORK=$(mktemp -d /tmp/plots_screenshot.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# 1. The page.
(cd "$REPO" && "$PY" -m dvc plots show -o "$WORK/dvc_plots") >"$WORK/plots.log" 2>&1 \
    || { cat "$WORK/plots.log"; exit 1; }
PAGE=$WORK/dvc_plots/index.html
if grep -qiE '<script[^>]*src=' "$PAGE"; then
    echo "$PAGE loads scripts from elsewhere: is plots.html_template set in .dvc/config?" >&2
    grep -oiE '<script[^>]*src=[^>]*>' "$PAGE" >&2
    exit 1
fi
N_PLOTS=$(grep -c '<div id = "' "$PAGE")

# 2. Offline Chromium: did every plot render?
OFFLINE=(--headless --disable-gpu --no-sandbox --no-first-run --disable-background-networking
         --disable-component-update "--host-resolver-rules=MAP * ~NOTFOUND" --proxy-server=127.0.0.1:9
         --virtual-time-budget=10000)
timeout 120 "$CHROMIUM" "${OFFLINE[@]}" --user-data-dir="$WORK/profile1" --dump-dom "file://$PAGE" \
    >"$WORK/dom.html" 2>"$WORK/chromium.log" || { tail -20 "$WORK/chromium.log"; exit 1; }
N_EMBEDS=$(grep -oE '<div id="[^"]+" class="vega-embed' "$WORK/dom.html" | wc -l)
N_CANVAS=$(grep -o 'class="marks"' "$WORK/dom.html" | wc -l)
if [ "$N_EMBEDS" != "$N_PLOTS" ] || [ "$N_CANVAS" != "$N_PLOTS" ]; then
    echo "offline Chromium rendered $N_EMBEDS vega-embeds / $N_CANVAS canvases of $N_PLOTS plots" >&2
    tail -20 "$WORK/chromium.log" >&2
    exit 1
fi

# 3. The screenshot.
mkdir -p "$(dirname "$OUT")"
timeout 120 "$CHROMIUM" "${OFFLINE[@]}" --user-data-dir="$WORK/profile2" --hide-scrollbars \
    --window-size="$WINDOW" --screenshot="$OUT" "file://$PAGE" >>"$WORK/chromium.log" 2>&1 \
    || { tail -20 "$WORK/chromium.log"; exit 1; }
echo "== $OUT: $N_PLOTS plots rendered offline ($(stat -c %s "$OUT") bytes)"
