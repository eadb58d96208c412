"""`index.html`: an offline report. Plain HTML and a few lines of JavaScript, no library and no
network: every figure, and a viewer that draws any layer, head and attention kind of the shown
examples from numbers embedded in the page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

# The viewer's numbers (maps, neuron-view vectors and biases) in integer thousandths, which the page
# divides back: a third fewer characters than 3-decimal floats; maps.npz keeps the floats
VIEWER_SCALE = 1000


def thousandths(values) -> np.ndarray:
    """Values in integer thousandths (VIEWER_SCALE), rounded in float64."""
    return np.rint(np.asarray(values, dtype=np.float64) * VIEWER_SCALE).astype(np.int64)

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
#caption, #neuron-caption {{ overflow-wrap: anywhere; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
</style></head><body>
<h1>Attention in {title}</h1>
<p>Run <code>{run}</code>; averages over {n} examples of the {split} split ({averaged_on}).
The numbers behind every figure are in <code>maps.npz</code>, described by <code>index.json</code>; a click on a
figure opens it at full size.</p>
<h2>Viewer</h2>
<div class="controls">
<label>example <select id="example"></select></label>
<label>kind <select id="kind"></select></label>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
</div>
<p id="caption"></p>
<canvas id="view" width="900" height="900"></canvas>
<h3>Neuron view</h3>
<p class="controls"><label>query token <select id="query"></select></label> (or click a row of the map above):
the query vector q and every key vector k of this head, their elementwise product, the score (q&middot;k times the model's
scaling), the bias the model adds before the softmax (relative position terms, the mask) and the attention that results.
Red is positive, blue negative.</p>
<p id="neuron-caption"></p>
<canvas id="neuron" width="900" height="300"></canvas>
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
  // a cell size per axis, so that a long solution against a short equation stays readable; a cell
  // of 9 pixels or more gets every token, a smaller one every few, with its position
  const side = (n) => Math.max(3, Math.min(28, Math.floor(820 / n)));
  const cw = side(kTokens.length), ch = side(m.length);
  const labels = (tokens, cell) => {{
    const every = cell >= 9 ? 1 : Math.ceil(12 / cell);
    return tokens.map((t, i) => (i % every ? null : every > 1 ? i + " " + t : t));
  }};
  const rowLabels = labels(qTokens, ch), colLabels = labels(kTokens, cw);
  const fontOf = (cell) => Math.max(9, Math.min(13, cell - 1)) + "px monospace";
  const canvas = $("view"), ctx = canvas.getContext("2d");
  const widest = (texts, font) => {{ ctx.font = font; return Math.max(0, ...texts.filter((t) => t !== null).map((t) => ctx.measureText(t).width)); }};
  const left = Math.ceil(widest(rowLabels, fontOf(ch))) + 10, top = Math.ceil(widest(colLabels, fontOf(cw))) + 10;
  canvas.width = left + cw * kTokens.length + 10; canvas.height = top + ch * m.length + 10;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  // rows in thousandths (map_scale), each cut after its last non-zero entry (analyze/maps.py, viewer_rows)
  const scale = data.map_scale || 1;
  for (let i = 0; i < m.length; i++)
    for (let j = 0; j < kTokens.length; j++) {{ ctx.fillStyle = colour((m[i][j] || 0) / scale); ctx.fillRect(left + j * cw, top + i * ch, cw, ch); }}
  ctx.fillStyle = "#222"; ctx.textBaseline = "middle"; ctx.font = fontOf(ch);
  rowLabels.forEach((t, i) => {{ if (t !== null) ctx.fillText(t, 4, top + ch * i + ch / 2); }});
  ctx.font = fontOf(cw);
  colLabels.forEach((t, j) => {{
    if (t === null) return;
    ctx.save(); ctx.translate(left + j * cw + cw / 2, top - 4); ctx.rotate(-Math.PI / 2); ctx.fillText(t, 0, 0); ctx.restore();
  }});
  $("caption").textContent = kind + " attention, layer " + $("layer").value + " head " + $("head").value +
    ", example " + ex.name + ": " + ex.input + " -> " + ex.output + " (rows: queries, columns: keys)";
  canvas.dataset.drawn = kind + "/" + $("layer").value + "/" + $("head").value;
  canvas.dataset.cellWidth = cw; canvas.dataset.rowHeight = ch; canvas.dataset.top = top;
  drawNeuron();
}}
function diverging(v) {{  // blue (negative), white (0), red (positive); v in -1..1
  const t = Math.min(1, Math.abs(v)), end = v < 0 ? [33, 102, 172] : [178, 24, 43];
  return "rgb(" + end.map((e) => Math.round(255 + t * (e - 255))).join(",") + ")";
}}
function neuronBias(nv, layer, head, i, j, nQ) {{  // the bias without the mask (analyze/neuron.py, viewer_vectors)
  const b = nv.bias;
  if (b.by === "none") return 0;
  const v = b.values[b.values.length === 1 ? 0 : layer][head];
  return (b.by === "distance" ? v[j - i + nQ - 1] : v[i][j]) / (nv.unit || 1);
}}
function drawNeuron() {{
  const ex = data.examples[$("example").value], kind = $("kind").value, canvas = $("neuron"), select = $("query");
  const nv = ex && ex.neuron ? ex.neuron[kind] : null;
  if (!nv) {{ $("neuron-caption").textContent = "no neuron-view data for this example: run cli.py maps again"; canvas.width = canvas.height = 1; return; }}
  const layer = +$("layer").value, head = +$("head").value;
  const qTokens = kind === "encoder" ? ex.tokens.encoder : ex.tokens.decoder;
  const kTokens = kind === "decoder" ? ex.tokens.decoder : ex.tokens.encoder;
  const keep = select.value; select.innerHTML = "";
  qTokens.forEach((t, i) => {{ const o = document.createElement("option"); o.value = i; o.textContent = i + ": " + t; select.appendChild(o); }});
  if (keep !== "" && +keep < qTokens.length) select.value = keep;
  const unit = nv.unit || 1, i = +select.value, q = nv.q[layer][head][i].map((x) => x / unit);  // unit: VIEWER_SCALE (1: an older viewer.json)
  const keys = nv.k[layer][head].map((k) => k.map((x) => x / unit)), d = q.length, K = keys.length;
  const masked = (j) => nv.masked.length > 0 && nv.masked[i][j] === "1";
  const products = keys.map((k) => k.map((x, c) => x * q[c]));
  const scores = products.map((p) => nv.scaling * p.reduce((a, b) => a + b, 0));
  const bias = kTokens.map((_, j) => neuronBias(nv, layer, head, i, j, qTokens.length));
  const logits = scores.map((s, j) => (masked(j) ? -Infinity : s + bias[j]));
  const most = Math.max(...logits), exps = logits.map((x) => Math.exp(x - most)), total = exps.reduce((a, b) => a + b, 0);
  const attention = exps.map((e) => e / total);
  const maxAbs = (rows) => rows.reduce((m, r) => Math.max(m, ...r.map(Math.abs)), 1e-9);
  const kMax = maxAbs([q, ...keys]), pMax = maxAbs(products), sMax = maxAbs([scores]), bMax = maxAbs([bias.filter((_, j) => !masked(j))]);
  const cw = Math.max(3, Math.min(14, Math.floor(260 / d))), rh = Math.max(6, Math.min(18, Math.floor(900 / K))), bar = 120, gap = 16;
  const xK = 80, xP = xK + d * cw + gap, xS = xP + d * cw + gap, xB = xS + bar + gap, xA = xB + bar + gap, top = rh + 44;
  canvas.width = xA + bar + 10; canvas.height = top + K * rh + 10;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const every = rh >= 9 ? 1 : Math.ceil(12 / rh);  // as the map: short rows are labelled every few, with their position
  ctx.font = (every > 1 ? 9 : Math.min(12, rh - 2)) + "px monospace";
  const text = (t, x, y) => {{ ctx.fillStyle = "#222"; ctx.fillText(t, x, y); }};
  const centred = (x, y, v, colour) => {{ ctx.fillStyle = colour; ctx.fillRect(Math.min(x + bar / 2, x + bar / 2 + v * bar / 2), y, Math.abs(v) * bar / 2, rh - 2); }};
  text("q " + qTokens[i], 2, 14 + rh - 2);
  q.forEach((x, c) => {{ ctx.fillStyle = diverging(x / kMax); ctx.fillRect(xK + c * cw, 14, cw, rh); }});
  [["key vectors k", xK], ["q \u00d7 k", xP], ["score", xS], ["bias", xB], ["attention", xA]].forEach(([t, x]) => text(t, x, top - 8));
  for (let j = 0; j < K; j++) {{
    const y = top + j * rh;
    if (j % every === 0) text(every > 1 ? j + " " + kTokens[j] : kTokens[j], 2, y + rh - 2);
    for (let c = 0; c < d; c++) {{
      ctx.fillStyle = diverging(keys[j][c] / kMax); ctx.fillRect(xK + c * cw, y, cw, rh - 1);
      ctx.fillStyle = diverging(products[j][c] / pMax); ctx.fillRect(xP + c * cw, y, cw, rh - 1);
    }}
    centred(xS, y, scores[j] / sMax, "#4c72b0");
    if (masked(j)) text("masked", xB + 4, y + rh - 2); else centred(xB, y, bias[j] / bMax, "#dd8452");
    ctx.fillStyle = "#55a868"; ctx.fillRect(xA, y, attention[j] * bar, rh - 2);
    if (rh >= 10) text(attention[j].toFixed(2), xA + bar - 30, y + rh - 2);
  }}
  $("neuron-caption").textContent = kindNames[kind] + ", layer " + layer + " head " + head + ", query token " + i + " " + JSON.stringify(qTokens[i]) +
    ": score = " + nv.scaling.toPrecision(3) + " \u00d7 \u03a3 q\u00d7k (largest " + sMax.toPrecision(3) + "); bias " +
    (nv.bias.by === "none" ? "none besides the mask" : "up to " + bMax.toPrecision(3) + " in size") + "; vectors rounded to 3 decimals";
  canvas.dataset.drawn = kind + "/" + layer + "/" + head + "/" + i;
  canvas.dataset.attention = JSON.stringify(attention.map((a) => +a.toFixed(5)));
}}
data.examples.forEach((ex, i) => {{ const o = document.createElement("option"); o.value = i; o.textContent = ex.name + ": " + ex.input.slice(0, 60); $("example").appendChild(o); }});
["example", "kind", "layer", "head"].forEach((id) => $(id).addEventListener("change", draw));
$("query").addEventListener("change", drawNeuron);
$("view").addEventListener("click", (e) => {{  // a row of the map picks the query token
  const row = Math.floor((e.clientY - $("view").getBoundingClientRect().top - $("view").dataset.top) / $("view").dataset.rowHeight);
  if (row >= 0 && row < $("query").options.length) {{ $("query").value = row; drawNeuron(); }}
}});
draw();
window.addEventListener("load", () => {{
  const images = Array.from(document.images), shown = images.filter((im) => im.complete && im.naturalWidth > 0).length;
  $("status").textContent = "figures shown: " + shown + " of " + images.length + "; viewer: " + ($("view").dataset.drawn || "empty") +
    "; neuron view: " + ($("neuron").dataset.drawn || "empty");
}});
</script>
</body></html>
"""

SECTION_TITLES = {
    "per-head maps": "Per-head maps of one example",
    "single head": "Single heads",
    "neuron view": "Neuron view: how a query token's attention comes about (query, keys, products, score, bias, softmax)",
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


# the folders other commands write into a run's figures directory by default: `cli.py maps` keeps them
# when it rewrites the directory, and the report shows them
ANALYSES = {"heads": "cli.py heads", "probes": "cli.py probe", "patching": "cli.py patch",
            "patching-decoder": "cli.py patch --side decoder"}


METRIC_TITLES = {"full_solution_accuracy": "full-solution accuracy", "roots_accuracy": "roots accuracy",
                 "character_accuracy": "character accuracy", "f1": "F1", "exact_match": "exact match",
                 "accuracy": "accuracy", "macro_f1": "macro-F1"}


def _signed(value: float) -> str:
    """A change to three decimals with its sign; one that rounds to nothing is +0.000, not -0.000."""
    return f"{round(value, 3) + 0.0:+.3f}"


def summary_lines(result: dict, top: int = 5) -> list[str]:
    """The short summary `cli.py heads` prints."""
    lines = []
    if "importance" in result:
        base = ", ".join(f"{METRIC_TITLES[m]} {v:.3f}" for m, v in result["baseline_metrics"].items())
        lines.append(f"baseline on {result['eval_rows']} rows: {base}")
        for item in result["importance"][:top]:
            drops = ", ".join(f"{METRIC_TITLES[m]} {_signed(v)}" for m, v in item["drop"].items())
            lines.append(f"  important head: {item['kind']} layer {item['layer']} head {item['head']}: drop {drops}; gradient {item['gradient']:#.3g}")
    for kind, r in result["kinds"].items():
        for layer, counts in enumerate(r["type_counts_per_layer"]):
            shown = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            lines.append(f"{kind} layer {layer}: {shown}")
        peak = max(r["symbols"]["all"], key=lambda row: row["excess"])
        lines.append(f"{kind}: special symbols receive {peak['share']:.3f} of the attention at their peak (layer {peak['layer']}; "
                     f"uniform {peak['baseline']:.3f}; excess 95% CI {_signed(peak['excess_ci'][0])}..{_signed(peak['excess_ci'][1])})")
    blocking = result.get("symbol_blocking")
    if blocking:
        base = blocking["baseline"]
        for name, metrics in blocking.items():
            if name in ("baseline", "layers"):
                continue
            lines.append(f"{name}: " + ", ".join(f"{METRIC_TITLES[m]} {_signed(metrics[m] - base[m])}" for m in metrics))
    corr = result.get("context_correlation") or {}
    overall = {k: v for k, v in corr.items() if k.count("/") == 1}
    if overall:
        for key, value in overall.items():
            r, p = value.get("r"), value.get("p")
            r_text = f"undefined ({value.get('note', '')})" if r is None or r != r else f"r = {r:+.3f}, p = {p:.3g}"
            lines.append(f"context variance vs {key.replace('/', ' ')}: {r_text}, n = {value['n']}")
    else:
        lines.append(f"context variance vs accuracy: {result['context_note']}")
    return lines


def _figure(src: str, alt: str, caption_html: str) -> str:
    """A figure shown at the page's width, a link to itself at full size (a head grid of a long
    solution is thousands of pixels wide)."""
    src = html.escape(src)
    return (f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(alt)}" loading="eager"></a>'
            f"<figcaption>{caption_html}</figcaption></figure>")


def _analysis_sections(out_dir: Path) -> list[str]:
    """The report's sections for the probes and the patching found in `out_dir`: the summary the
    command printed (its JSON keeps it, so that the report need not import the analyses), and its
    figures."""
    sections = []
    for folder, name in {"probes": "probes.json", "patching": "patching.json", "patching-decoder": "patching.json"}.items():
        path = out_dir / folder / name
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        images = [Path(f).name for f in result.get("figures", []) if f.endswith(".png")]  # (older runs wrote them as patching/NAME)
        parts = [f"<h2>{html.escape(ANALYSES[folder])}</h2>", f"<p>Numbers: <code>{folder}/{name}</code>.</p>",
                 "<pre>" + html.escape("\n".join(result.get("summary", []))) + "</pre>"]
        parts += [_figure(f"{folder}/{f}", f, html.escape(f)) for f in images]
        sections.append("\n".join(parts))
    return sections


def write_report(out_dir: Path) -> Path:
    """index.html of a figures directory, from what is there: the maps of `cli.py maps` (index.json,
    viewer.json), the head analysis of `cli.py heads` (heads/heads.json), the probes and the
    patching (ANALYSES)."""
    from train.config import run_name

    index_path, heads_path = out_dir / "index.json", out_dir / "heads" / "heads.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    heads = json.loads(heads_path.read_text()) if heads_path.exists() else None
    viewer = json.loads((out_dir / "viewer.json").read_text()) if (out_dir / "viewer.json").exists() else {"examples": []}
    items = (index["figures"] if index else []) + (heads["figures"] if heads else [])
    sections = []
    if heads:
        sections.append("<h2>Head analysis (cli.py heads)</h2>\n<p>Numbers: <code>heads/heads.json</code>, "
                        "<code>heads/head-stats-*.csv</code>, <code>heads/heads.npz</code>.</p>\n<pre>"
                        + html.escape("\n".join(summary_lines(heads))) + "</pre>")
    for what, title in SECTION_TITLES.items():
        chosen = [f for f in items if f["what"] == what]
        if not chosen:
            continue
        parts = [f"<h2>{html.escape(title)}</h2>"]
        for item in chosen:
            caption = ", ".join(f"{k} {item[k]}" for k in ("kind", "example", "layer", "head", "query") if k in item)
            if item["file"].endswith(".html"):
                parts.append(f'<p><a href="{html.escape(item["file"])}">{html.escape(item["file"])}</a></p>')
            else:
                svg = f' (<a href="{html.escape(item["svg"])}">SVG</a>)' if "svg" in item else ""
                parts.append(_figure(item["file"], caption, html.escape(caption) + svg))
        sections.append("\n".join(parts))
    sections += _analysis_sections(out_dir)
    source = index or {"run": heads["run"], "examples_averaged": heads["rows"], "split": heads["split"],
                       "averaged_on": "no maps yet: run `cli.py maps` for the viewer"}
    payload = json.dumps(viewer, separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.format(
        title=html.escape(run_name(Path(source["run"]))), run=html.escape(source["run"]), n=source["examples_averaged"],
        split=html.escape(source["split"]), averaged_on=html.escape(source["averaged_on"]), sections="\n".join(sections), data=payload,
    )
    path = out_dir / "index.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path


def refresh_report(out_dir: Path) -> None:
    """After an analysis wrote `out_dir`: the report of the figures directory it sits in, if that
    directory has one (made by `cli.py maps` or `cli.py heads`)."""
    parent = Path(out_dir).parent
    if out_dir.name in ANALYSES and ((parent / "index.json").exists() or (parent / "heads" / "heads.json").exists()):
        write_report(parent)
