"""`dvc plots show` pages that render offline (issue 15, item 5).

DVC's own page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so offline it is blank.
configs/plots/offline.html (built by scripts/build_plot_template.sh) inlines the three, and
.dvc/config makes it the repo's default template. These tests render the committed metrics/plots
files with the real `dvc plots show` in a scratch copy (about 1.5 s, no network, no GPU); the slow
one also loads the page in headless Chromium when one is installed.
"""
import configparser
import json
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO, dvc

TEMPLATE = REPO / "configs" / "plots" / "offline.html"
BUILDS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=", re.IGNORECASE)


def _div_ids(html):
    """The plot divs DVC wrote into the page (dvc_render's VegaRenderer.DIV)."""
    return re.findall(r'<div id = "([^"]+)">', html)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """dvc_plots/index.html of a scratch repo holding what `dvc plots show` reads: dvc.yaml,
    params.yaml, metrics/plots/, .dvc/config (which names the template) and configs/plots/."""
    repo = tmp_path_factory.mktemp("plots_repo")
    var_files = [v.split(":")[0] for v in yaml.safe_load((REPO / "dvc.yaml").read_text()).get("vars", [])
                 if isinstance(v, str)]
    for f in ("dvc.yaml", "params.yaml", ".dvc/config", *var_files):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, repo / f)
    for d in ("metrics/plots", "configs/plots"):
        shutil.copytree(REPO / d, repo / d)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    r = dvc("plots", "show", cwd=repo, timeout=120)  # no --html-template: the config's default
    out = repo / "dvc_plots" / "index.html"
    assert out.is_file(), r.stdout + r.stderr
    return out


def test_config_names_the_offline_template():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc" / "config")
    # DVC resolves a relative plots.html_template against the .dvc directory.
    assert (REPO / ".dvc" / cfg["plots"]["html_template"]).resolve() == TEMPLATE.resolve()


def test_template_is_self_contained():
    html = TEMPLATE.read_text(encoding="utf8")
    # DVC replaces each placeholder everywhere it occurs; {scripts} would bring back the CDN tags.
    assert html.count("{plot_divs}") == 1 and html.count("{refresh_tag}") == 1
    assert "{scripts}" not in html
    assert not SCRIPT_SRC.search(html)
    assert html.count("<script>") == 3 and html.count("</script>") == 3
    for build in BUILDS:
        assert re.search(rf"/\*! [\w-]+@\d+\.\d+\.\d+ build/{re.escape(build)} \| BSD-3-Clause", html), build
    assert html.count("Redistribution and use in source and binary forms") >= 3  # license texts kept
    notices = (REPO / "configs" / "plots" / "THIRD_PARTY_LICENSES.txt").read_text(encoding="utf8")
    assert notices in html  # the notices travel with any copy of the page


def test_dvc_page_inlines_vega_and_every_plot(page):
    html = page.read_text(encoding="utf8")
    assert not SCRIPT_SRC.search(html), "a script still loads from elsewhere"
    assert "cdn.jsdelivr.net" not in html
    assert "{plot_divs}" not in html and "{refresh_tag}" not in html
    for build in BUILDS:
        assert f"build/{build} | BSD-3-Clause" in html
    assert 'globalThis:t||self).vega={}' in html  # vega's UMD build itself, not just its header

    # Every plot dvc.yaml declares at top level, and one div + one vegaEmbed + one spec per plot.
    ids = _div_ids(html)
    top_level = [next(iter(e)) if isinstance(e, dict) else e
                 for e in yaml.safe_load((REPO / "dvc.yaml").read_text()).get("plots", [])]
    assert set(top_level) <= set(ids) and len(ids) >= len(top_level) + 1
    for pid in ids:
        assert f"vegaEmbed('#{pid}', spec);" in html, pid
    specs = [json.loads(s) for s in re.findall(r"var spec = (\{.*?\});\n\s*vegaEmbed", html, re.DOTALL)]
    assert len(specs) == len(ids)
    # The specs carry the data: every row of every committed plots file.
    values = json.dumps(specs)
    assert "Test macro score per iteration" in values
    for f in (REPO / "metrics" / "plots").glob("*.json"):
        for row in json.loads(f.read_text()):
            for v in row.values():
                assert json.dumps(v) in values, (f.name, v)


@pytest.mark.slow
def test_page_renders_in_headless_chromium_without_network(page, tmp_path):
    """Every plot becomes a vega-embed canvas with name resolution and proxy pointed nowhere.
    Skipped where no Chromium is installed (`apt-get install chromium`); ~3 s where it is."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    r = subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    dom = r.stdout
    ids = _div_ids(page.read_text(encoding="utf8"))
    embedded = re.findall(r'<div id="([^"]+)" class="vega-embed[^"]*"', dom)
    assert sorted(embedded) == sorted(ids), (r.returncode, r.stderr[-2000:])
    assert dom.count('class="marks"') == len(ids)
