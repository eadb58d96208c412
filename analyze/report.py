"""`index.html`: an offline report. Plain HTML and a few lines of JavaScript, no library and no
network: every figure, and a viewer that draws any layer, head and attention kind of the shown
examples from numbers embedded in the page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>quadlab attention: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.1em; margin-top: 2em; }}
.controls label {{ margin-right: 1em; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 640px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; max-width: 640px; }}
#status {{ color: #666; font-size: 0.85em; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
</style></head><body>
<h1>Attention in {title}</h1>
<p>Run <code>{run}</code>; averages over {n} examples of the {split} split ({averaged_on}).
The numbers behind every figure are in <code>maps.npz</code>, described by <code>index.json</code>.</p>
<h2>Viewer</h2>
<div class="controls">
<label>example <select id="example"></select></label>
<label>kind <select id="kind"></select></label>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
</div>
<p id="caption"></p>
<canvas id="view" width="900" height="900"></canvas>
<p id="status">loading</p>
{sections}
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
function fill(select, n, prefix) {{
  const keep = select.value; select.innerHTML = "";
  for (let i = 0; i < n; i++) {{ const o = document.createElement("option"); o.value = i; o.textContent = prefix + i; select.appendChild(o); }}
  if (keep !== "" && keep < n) select.value = keep;
}}
function colour(v) {{  // viridis, coarsely
  const stops = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
  const x = Math.max(0, Math.min(1, v)) * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const c = stops[i].map((s, k) => Math.round(s + f * (stops[i + 1][k] - s)));
  return "rgb(" + c.join(",") + ")";
}}
const kindNames = {{encoder: "encoder self-attention", decoder: "decoder self-attention", cross: "cross-attention"}};
function draw() {{
  const ex = data.examples[$("example").value];
  if (!ex) {{ $("status").textContent = "no example in this report"; return; }}
  const kinds = Object.keys(ex.maps), keepKind = $("kind").value;
  $("kind").innerHTML = kinds.map((k) => '<option value="' + k + '">' + kindNames[k] + "</option>").join("");
  $("kind").value = kinds.includes(keepKind) ? keepKind : kinds[0];
  const kind = $("kind").value, maps = ex.maps[kind];
  fill($("layer"), maps.length, "layer "); fill($("head"), maps[0].length, "head ");
  const m = maps[$("layer").value][$("head").value];
  const qTokens = kind === "encoder" ? ex.tokens.encoder : ex.tokens.decoder;
  const kTokens = kind === "decoder" ? ex.tokens.decoder : ex.tokens.encoder;
  const canvas = $("view"), ctx = canvas.getContext("2d"), margin = 60;
  const cell = Math.max(4, Math.min(28, Math.floor(820 / Math.max(m.length, m[0].length))));
  canvas.width = margin + cell * m[0].length + 10; canvas.height = margin + cell * m.length + 10;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = Math.max(7, Math.min(13, cell - 1)) + "px monospace"; ctx.fillStyle = "#222";
  for (let i = 0; i < m.length; i++) {{
    ctx.fillText(qTokens[i], 4, margin + cell * i + cell - 2);
    for (let j = 0; j < m[i].length; j++) {{ ctx.fillStyle = colour(m[i][j]); ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell); }}
    ctx.fillStyle = "#222";
  }}
  for (let j = 0; j < m[0].length; j++) {{
    ctx.save(); ctx.translate(margin + j * cell + cell - 2, margin - 4); ctx.rotate(-Math.PI / 2); ctx.fillText(kTokens[j], 0, 0); ctx.restore();
  }}
  $("caption").textContent = kind + " attention, layer " + $("layer").value + " head " + $("head").value +
    ", example " + ex.name + ": " + ex.input + " -> " + ex.output + " (rows: queries, columns: keys)";
  canvas.dataset.drawn = kind + "/" + $("layer").value + "/" + $("head").value;
}}
data.examples.forEach((ex, i) => {{ const o = document.createElement("option"); o.value = i; o.textContent = ex.name + ": " + ex.input.slice(0, 60); $("example").appendChild(o); }});
["example", "kind", "layer", "head"].forEach((id) => $(id).addEventListener("change", draw));
draw();
window.addEventListener("load", () => {{
  const images = Array.from(document.images), shown = images.filter((im) => im.complete && im.naturalWidth > 0).length;
  $("status").textContent = "figures shown: " + shown + " of " + images.length + "; viewer: " + ($("view").dataset.drawn || "empty");
}});
</script>
</body></html>
"""

SECTION_TITLES = {
    "per-head maps": "Per-head maps of one example",
    "single head": "Single heads",
    "layer x token summary": "Layer x token summaries",
    "average by position": "Averaged over the split, aligned by position",
    "average by role": "Averaged over the split, aligned by token role",
    "layer x role summary": "Layer x role summaries over the split",
    "symbol statistics": "Symbol statistics: share of attention by key role (in brackets: share of the keys)",
    "bertviz view (needs a network)": "bertviz views",
    "head statistics": "Head statistics (layers x heads)",
    "pattern types": "Pattern types of the heads, and their count per layer",
    "clustering": "Heads clustered by Jensen-Shannon distance; per-example maps clustered by KMeans",
    "head importance": "Head importance: metric drop when the head is ablated, and gradient importance",
    "rollout": "Attention rollout (encoder)",
    "context variance": "Context-vector variance",
    "special symbols": "The special-symbol hypothesis: attention the symbols receive against their share of the keys",
}


def write_report(out_dir: Path) -> Path:
    """index.html of a figures directory, from what is there: the maps of `cli.py maps` (index.json,
    viewer.json) and the head analysis of `cli.py heads` (heads/heads.json)."""
    index_path, heads_path = out_dir / "index.json", out_dir / "heads" / "heads.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    heads = json.loads(heads_path.read_text()) if heads_path.exists() else None
    viewer = json.loads((out_dir / "viewer.json").read_text()) if (out_dir / "viewer.json").exists() else {"examples": []}
    items = (index["figures"] if index else []) + (heads["figures"] if heads else [])
    sections = []
    if heads:
        from analyze.heads import summary_lines

        sections.append("<h2>Head analysis (cli.py heads)</h2>\n<p>Numbers: <code>heads/heads.json</code>, "
                        "<code>heads/head-stats-*.csv</code>, <code>heads/heads.npz</code>.</p>\n<pre>"
                        + html.escape("\n".join(summary_lines(heads))) + "</pre>")
    for what, title in SECTION_TITLES.items():
        chosen = [f for f in items if f["what"] == what]
        if not chosen:
            continue
        parts = [f"<h2>{html.escape(title)}</h2>"]
        for item in chosen:
            caption = ", ".join(f"{k} {item[k]}" for k in ("kind", "example", "layer", "head") if k in item)
            if item["file"].endswith(".html"):
                parts.append(f'<p><a href="{html.escape(item["file"])}">{html.escape(item["file"])}</a></p>')
            else:
                svg = f' (<a href="{html.escape(item["svg"])}">SVG</a>)' if "svg" in item else ""
                parts.append(f'<figure><img src="{html.escape(item["file"])}" alt="{html.escape(caption)}" loading="eager">'
                             f"<figcaption>{html.escape(caption)}{svg}</figcaption></figure>")
        sections.append("\n".join(parts))
    source = index or {"run": heads["run"], "examples_averaged": heads["rows"], "split": heads["split"],
                       "averaged_on": "no maps yet: run `cli.py maps` for the viewer"}
    payload = json.dumps(viewer, separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.format(
        title=html.escape(Path(source["run"]).name), run=html.escape(source["run"]), n=source["examples_averaged"],
        split=html.escape(source["split"]), averaged_on=html.escape(source["averaged_on"]), sections="\n".join(sections), data=payload,
    )
    path = out_dir / "index.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
