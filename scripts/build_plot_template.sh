#!/usr/bin/env bash
# configs/plots/offline.html: a `dvc plots show` page template with vega, vega-lite and vega-embed
# inlined, so that dvc_plots/index.html renders with no network. DVC's own page loads the three
# from cdn.jsdelivr.net (dvc_render's VegaRenderer.SCRIPTS, filled into the `{scripts}`
# placeholder); this template has no `{scripts}`, only `{refresh_tag}` and `{plot_divs}`, and
# carries the minified browser builds itself. .dvc/config points `plots.html_template` at it.
#
#   bash scripts/build_plot_template.sh            (rewrites configs/plots/offline.html and
#                                                   configs/plots/THIRD_PARTY_LICENSES.txt)
#
# Reproducible: pinned versions (override with VEGA=, VEGA_LITE=, VEGA_EMBED=), `npm pack` checks
# each tarball against the registry's integrity hash (written into the template's header), no
# timestamps. The notices list every package `npm install` brings for the three, optional
# (platform-specific) ones left out: a superset of what the browser builds bundle (d3-*, vega-*
# subpackages, fast-json-patch, ...), one copy per distinct license text; they are also embedded in the template as an HTML comment, so a copied
# index.html keeps them. Needs node and npm (registry access); the project venv is not needed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${DEST:-$REPO/configs/plots}
VEGA=${VEGA:-5.33.1}
VEGA_LITE=${VEGA_LITE:-5.23.0}
VEGA_EMBED=${VEGA_EMBED:-6.29.0}
WORK=$(mktemp -d /tmp/build_plot_template.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
npm pack --silent --json "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >pack.json
for t in *.tgz; do mkdir "${t%.tgz}" && tar xzf "$t" -C "${t%.tgz}"; done
mkdir deps && (cd deps && npm init -y >/dev/null && npm install --silent --omit=dev --omit=optional \
    --ignore-scripts --no-package-lock "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED")
mkdir -p "$DEST"

node - "$WORK" "$DEST" <<'EOF'
const fs = require("fs"), path = require("path");
const [work, dest] = process.argv.slice(2);
const packs = JSON.parse(fs.readFileSync(path.join(work, "pack.json"), "utf8"));
const mods = path.join(work, "deps", "node_modules");
const die = (msg) => { console.error(msg); process.exit(1); };

// Every installed package: name, version, license field, repository, license file text.
const licenseFile = (dir) => fs.readdirSync(dir).filter((f) => /^(licen[cs]e|copying)/i.test(f)).sort()[0];
const repoOf = (j) => (typeof j.repository === "string" ? j.repository : (j.repository || {}).url || "")
  .replace(/^git\+/, "").replace(/\.git$/, "").replace(/^http:/, "https:").replace(/^([\w-]+\/[\w.-]+)$/, "https://github.com/$1");
const pkgs = [];
for (const top of fs.readdirSync(mods).sort()) {
  const dirs = top.startsWith("@") ? fs.readdirSync(path.join(mods, top)).sort().map((d) => path.join(top, d)) : [top];
  for (const d of dirs) {
    const dir = path.join(mods, d), pj = path.join(dir, "package.json");
    if (!fs.existsSync(pj)) continue;
    const j = JSON.parse(fs.readFileSync(pj, "utf8")), f = licenseFile(dir);
    pkgs.push({ name: j.name, version: j.version, license: j.license || "UNKNOWN", repo: repoOf(j),
                text: f ? fs.readFileSync(path.join(dir, f), "utf8").replace(/\r\n/g, "\n").trim() : null });
  }
}
// A package whose tarball has no license file (vega, vega-util, ...): the text of a sibling from
// the same repository with the same license field, said so in the notices.
for (const p of pkgs.filter((p) => !p.text)) {
  const sib = pkgs.find((q) => q.text && q.repo && q.repo === p.repo && q.license === p.license);
  if (sib) { p.text = sib.text; p.note = `no license file in its npm tarball; text of ${sib.name}, same repository`; }
  else p.note = "no license file in its npm tarball";
}

// The three inlined builds: BSD-3-Clause, no `</script`, no DVC placeholder.
const builds = [["vega", "vega.min.js"], ["vega-lite", "vega-lite.min.js"], ["vega-embed", "vega-embed.min.js"]];
const scripts = builds.map(([name, file]) => {
  const pack = packs.find((p) => p.name === name) || die(`npm pack gave no ${name}`);
  const dir = path.join(work, pack.filename.replace(/\.tgz$/, ""), "package");
  const pj = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  if (pj.license !== "BSD-3-Clause") die(`${name}@${pj.version}: license ${pj.license}, not BSD-3-Clause`);
  const js = fs.readFileSync(path.join(dir, "build", file), "utf8").trim();
  if (/<\/script|<!--/i.test(js)) die(`${name}/build/${file} contains </script or <!--: cannot inline it`);
  if (/\{(scripts|plot_divs|refresh_tag)\}/.test(js)) die(`${name}/build/${file} contains a DVC placeholder`);
  const lic = pkgs.find((p) => p.name === name && p.version === pj.version) || die(`${name} not installed`);
  if (!lic.text) die(`${name}: no license text found`);
  const head = `/*! ${name}@${pj.version} build/${file} | ${pj.license} | ${repoOf(pj)}\n` +
    ` * npm ${pack.integrity}\n * Bundled third-party code: see the notices at the end of this page.\n *\n` +
    lic.text.split("\n").map((l) => (" * " + l).trimEnd()).join("\n") + "\n */";
  return { name, version: pj.version, integrity: pack.integrity, html: `<script>\n${head}\n${js}\n</script>` };
});

// Notices: one block per distinct license text.
const groups = new Map();
for (const p of pkgs) {
  const key = p.text || `(no text found; license field: ${p.license})`;
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(p);
}
const top = scripts.map((s) => `${s.name}@${s.version}`).join(", ");
let notices = `Third-party notices for configs/plots/offline.html (generated by scripts/build_plot_template.sh).\n\n` +
  `The page inlines the minified browser builds of ${top} (npm registry).\n` +
  `Listed below: every package that \`npm install --omit=dev --omit=optional\` installs for these three\n` +
  `(a superset of the code the browser builds bundle; transitive versions are the ones npm resolves\n` +
  `today, not necessarily those bundled), grouped by identical license text.\n`;
for (const [text, ps] of groups) {
  notices += "\n" + "=".repeat(78) + "\n";
  for (const p of ps) notices += `${p.name}@${p.version} (${p.license})${p.repo ? " " + p.repo : ""}${p.note ? " [" + p.note + "]" : ""}\n`;
  notices += "-".repeat(78) + "\n" + text + "\n";
}
if (/-->|--!>/.test(notices) || /\{(scripts|plot_divs|refresh_tag)\}/.test(notices)) die("notices cannot go in an HTML comment");

const page = `<!DOCTYPE html>
<!-- DVC plots page that renders offline: vega, vega-lite and vega-embed inlined, no CDN.
     Generated by scripts/build_plot_template.sh (${top}); do not edit by hand.
     Used by \`dvc plots show\` through plots.html_template in .dvc/config (or --html-template).
     DVC fills the refresh_tag and plot_divs placeholders (each in braces, once only); there is
     deliberately no scripts placeholder, where DVC would put its CDN script tags. -->
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
${scripts.map((s) => s.html).join("\n")}
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
<!--
${notices}-->
</body>
</html>
`;
fs.writeFileSync(path.join(dest, "offline.html"), page);
fs.writeFileSync(path.join(dest, "THIRD_PARTY_LICENSES.txt"), notices);
console.log(`wrote ${path.join(dest, "offline.html")} (${page.length} chars; ${top}) and THIRD_PARTY_LICENSES.txt ` +
            `(${pkgs.length} packages, ${groups.size} license texts)`);
EOF
