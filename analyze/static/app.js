// The live page of `cli.py serve`: asks the server's JSON API (analyze/serve.py) and draws the
// answer and the attention from the numbers, on canvases. Nothing is loaded from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
const HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                      "#bcbd22", "#17becf", "#393b79", "#e7969c", "#637939", "#7b4173", "#3182bd", "#e6550d"];
const EXAMPLES = {
  equation: "x^2-5x+6=0",
  question: "What did the lab train?",
  context: "The lab trained a small T5 from scratch to solve quadratic equations step by step.",
  text: "A short text to classify.",
  text_pair: "",
};
const LONG_FIELDS = new Set(["context", "text", "text_pair"]);
const KIND_TITLES = { encoder: "encoder self-attention", decoder: "decoder self-attention", cross: "cross-attention (decoder queries, encoder keys)" };
const ROW = 16; // pixels per token in the head view

const state = { runs: [], run: null, given: null, result: null, maps: {}, kind: null, layer: 0, heads: new Set(), hover: null, query: 0 };

async function api(path, body) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  let data;
  try { data = await response.json(); } catch (err) { throw new Error(`the server answered ${response.status} without JSON`); }
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

// float16 (as the API sends the maps) to float32, through a table of all 65,536 values
const F16 = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const e = (h >> 10) & 31, f = h & 1023;
    const v = e === 0 ? f * 2 ** -24 : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * 2 ** (e - 15);
    table[h] = h >> 15 ? -v : v;
  }
  return table;
})();

function unpack(base64, shape) {
  let bytes;
  if (Uint8Array.fromBase64) bytes = Uint8Array.fromBase64(base64);
  else {
    const text = atob(base64);
    bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  }
  const halves = new Uint16Array(bytes.buffer, 0, bytes.length / 2); // little-endian, as every browser's platform
  const out = new Float32Array(halves.length);
  for (let i = 0; i < out.length; i++) out[i] = F16[halves[i]];
  const [L, H, Q, K] = shape;
  return { L, H, Q, K, data: out, at: (l, h, q, k) => out[((l * H + h) * Q + q) * K + k] };
}

function canvas(el, width, height) {
  const ratio = window.devicePixelRatio || 1;
  el.width = Math.ceil(width * ratio);
  el.height = Math.ceil(height * ratio);
  el.style.width = `${width}px`;
  el.style.height = `${height}px`;
  const ctx = el.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return ctx;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
}

// ---- runs and inputs ----

function chooseRun(name) {
  state.run = state.runs.find((r) => r.name === name);
  $("task").textContent = `${state.run.title} run, ${state.run.run_dir}`;
  const fields = $("fields");
  fields.replaceChildren();
  for (const name of state.run.inputs) {
    const label = document.createElement("label");
    const input = document.createElement(LONG_FIELDS.has(name) ? "textarea" : "input");
    input.id = `field-${name}`;
    input.name = name;
    input.value = EXAMPLES[name] || "";
    label.append(`${name.replace("_", " ")} `);
    const limit = document.createElement("small");
    limit.textContent = `(at most ${state.run.limits[name].toLocaleString("en")} characters${name === "text_pair" ? "; optional" : ""})`;
    label.append(limit, input);
    fields.appendChild(label);
  }
}

async function submit(event) {
  event.preventDefault();
  const given = {};
  for (const name of state.run.inputs) {
    const value = $(`field-${name}`).value;
    if (name !== "text_pair" || value !== "") given[name] = value;
  }
  $("go").disabled = true;
  $("busy").hidden = false;
  try {
    const result = await api(`api/run/${encodeURIComponent(state.run.name)}`, given);
    showError("");
    show(result, given);
  } catch (err) {
    showError(err.message);
  } finally {
    $("go").disabled = false;
    $("busy").hidden = true;
  }
}

// ---- the answer ----

function show(result, given) {
  state.result = result;
  state.given = given;
  state.maps = {};
  for (const [kind, k] of Object.entries(result.kinds)) state.maps[kind] = unpack(result.maps[kind], k.shape);
  showAnswer(result);
  const kinds = $("kind");
  kinds.replaceChildren();
  for (const kind of Object.keys(result.kinds)) option(kinds, kind, KIND_TITLES[kind] || kind);
  $("result").hidden = false;
  state.query = 0;
  chooseKind(Object.keys(result.kinds)[0]);
  document.body.dataset.drawn = "yes"; // for tests: the views are drawn
}

function showAnswer(result) {
  const box = $("answer");
  box.replaceChildren();
  const main = document.createElement("div");
  main.className = "answer-main";
  main.id = "output";
  main.textContent = result.output === "" ? "(no answer)" : result.output;
  box.appendChild(main);
  const table = document.createElement("table");
  table.className = "kv";
  for (const [key, value] of Object.entries(result.answer)) {
    if (value === result.output && key !== "label") continue;
    const row = table.insertRow();
    row.insertCell().textContent = key.replaceAll("_", " ");
    const cell = row.insertCell();
    if (key === "verdict") cell.appendChild(verdict(value));
    else if (key === "probabilities") cell.appendChild(probabilities(value));
    else if (Array.isArray(value)) cell.textContent = value.length ? value.join(", ") : "none";
    else if (typeof value === "number") cell.textContent = value.toFixed(4);
    else if (value === null) cell.textContent = "\u2014";
    else cell.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
  }
  box.appendChild(table);
  const attended = $("attended");
  attended.replaceChildren();
  for (const [label, layers] of Object.entries(result.attended)) {
    const p = document.createElement("p");
    p.textContent = `${label}, by layer:`;
    const list = document.createElement("ul");
    layers.forEach((token, layer) => { const li = document.createElement("li"); li.textContent = `layer ${layer}: ${token}`; list.appendChild(li); });
    if (!layers.length) list.textContent = "(no such tokens in this example)";
    attended.append(p, list);
  }
}

function verdict(v) {
  const box = document.createElement("div");
  box.className = "verdict";
  box.id = "verdict";
  for (const key of ["ok", "well_formed", "steps_valid", "substitutions_valid", "answer_correct"]) {
    if (!(key in v)) continue;
    const span = document.createElement("span");
    span.className = v[key] ? "yes" : "no";
    span.textContent = `${key.replaceAll("_", " ")}: ${v[key] ? "yes" : "no"}`;
    box.appendChild(span);
  }
  if ("stated_answer" in v) {  // the grader's reading, in plain digits also for the formats that write them reversed
    const stated = document.createElement("div");
    stated.id = "stated-answer";
    const roots = v.stated_answer;
    stated.textContent = `stated answer: ${roots === null ? "unreadable" : roots === "none" ? "no real roots" : roots.join(", ")}`;
    box.appendChild(stated);
  }
  if (v.errors && v.errors.length) {
    const errors = document.createElement("div");
    errors.className = "hint";
    errors.textContent = v.errors.slice(0, 3).join("; ");
    box.appendChild(errors);
  }
  return box;
}

function probabilities(p) {
  const box = document.createElement("div");
  for (const [label, value] of Object.entries(p).sort((a, b) => b[1] - a[1])) {
    const line = document.createElement("div");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(200 * value)}px`;
    line.append(bar, `${label} ${value.toFixed(3)}`);
    box.appendChild(line);
  }
  return box;
}

// ---- kind, layer, heads ----

function chooseKind(kind) {
  state.kind = kind;
  state.hover = null;
  $("kind").value = kind;
  const m = state.maps[kind];
  const layers = $("layer");
  layers.replaceChildren();
  for (let l = 0; l < m.L; l++) option(layers, l, l);
  state.layer = Math.min(state.layer, m.L - 1);
  layers.value = state.layer;
  const heads = $("heads");
  heads.replaceChildren();
  state.heads = new Set([...Array(m.H).keys()]);
  for (let h = 0; h < m.H; h++) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.head = h;
    box.addEventListener("change", () => { box.checked ? state.heads.add(h) : state.heads.delete(h); drawHeadView(); drawNeuron(); });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = HEAD_COLOURS[h % HEAD_COLOURS.length];
    label.append(box, swatch, ` ${h}`);
    heads.appendChild(label);
  }
  state.query = Math.min(state.query, m.Q - 1);
  $("detail").hidden = true;
  drawHeadView();
  drawModelView();
  drawSummary();
  drawNeuron();
}

function setHeads(chosen) {
  state.heads = new Set(chosen);
  for (const box of $("heads").querySelectorAll("input")) box.checked = state.heads.has(Number(box.dataset.head));
}

function sides() {
  const k = state.result.kinds[state.kind];
  return { q: state.result.tokens[k.query], k: state.result.tokens[k.key] };
}

// ---- head view ----

const HEAD_VIEW = { left: 170, right: 470, width: 640, top: 24 };

function drawHeadView() {
  const m = state.maps[state.kind];
  const { q: qTokens, k: kTokens } = sides();
  const height = HEAD_VIEW.top + Math.max(m.Q, m.K) * ROW + 8;
  const ctx = canvas($("headview"), HEAD_VIEW.width, height);
  const hover = state.hover;
  const heads = [...state.heads].sort((a, b) => a - b);
  ctx.font = "12px ui-monospace, monospace";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#666";
  ctx.textAlign = "right";
  ctx.fillText("query", HEAD_VIEW.left - 10, 10);
  ctx.textAlign = "left";
  ctx.fillText("key", HEAD_VIEW.right + 10, 10);
  const y = (i) => HEAD_VIEW.top + i * ROW + ROW / 2;
  // lines, one path per head and opacity step (fast even for 384 x 384 tokens)
  ctx.lineWidth = 1.5;
  for (const h of heads) {
    const paths = Array.from({ length: 10 }, () => new Path2D());
    for (let q = 0; q < m.Q; q++) {
      if (hover && hover.side === "q" && hover.index !== q) continue;
      for (let k = 0; k < m.K; k++) {
        if (hover && hover.side === "k" && hover.index !== k) continue;
        const w = m.at(state.layer, h, q, k);
        if (w < 0.02) continue;
        const path = paths[Math.min(9, Math.floor(w * 10))];
        path.moveTo(HEAD_VIEW.left, y(q));
        path.lineTo(HEAD_VIEW.right, y(k));
      }
    }
    ctx.strokeStyle = HEAD_COLOURS[h % HEAD_COLOURS.length];
    paths.forEach((path, step) => { ctx.globalAlpha = (step + 1) / 10 * (heads.length > 1 ? 0.7 : 1); ctx.stroke(path); });
  }
  ctx.globalAlpha = 1;
  // the hovered query's row: its weights beside the keys, averaged over the chosen heads
  const row = hover && hover.side === "q" && heads.length ? kTokens.map((_, k) => heads.reduce((s, h) => s + m.at(state.layer, h, hover.index, k), 0) / heads.length) : null;
  const column = hover && hover.side === "k" && heads.length ? qTokens.map((_, q) => heads.reduce((s, h) => s + m.at(state.layer, h, q, hover.index), 0) / heads.length) : null;
  qTokens.forEach((t, i) => {
    const active = hover && hover.side === "q" && hover.index === i;
    ctx.fillStyle = active ? "#d62728" : i === state.query ? "#1f77b4" : "#222";
    ctx.textAlign = "right";
    ctx.fillText(t, HEAD_VIEW.left - 8, y(i));
    if (column) { ctx.fillStyle = "#888"; ctx.textAlign = "left"; ctx.fillText(column[i].toFixed(2), 4, y(i)); }
  });
  kTokens.forEach((t, i) => {
    const active = hover && hover.side === "k" && hover.index === i;
    ctx.fillStyle = active ? "#d62728" : "#222";
    ctx.textAlign = "left";
    ctx.fillText(t, HEAD_VIEW.right + 8, y(i));
    if (row) { ctx.fillStyle = "#888"; ctx.fillText(row[i].toFixed(2), HEAD_VIEW.width - 42, y(i)); }
  });
}

function headViewTarget(event) {
  const m = state.maps[state.kind];
  const rect = $("headview").getBoundingClientRect();
  const x = event.clientX - rect.left, i = Math.floor((event.clientY - rect.top - HEAD_VIEW.top) / ROW);
  if (x < HEAD_VIEW.left + 10 && i >= 0 && i < m.Q) return { side: "q", index: i };
  if (x > HEAD_VIEW.right - 10 && i >= 0 && i < m.K) return { side: "k", index: i };
  return null;
}

// ---- model view and one opened map ----

function colourMap(target, m, l, h) {
  // one pixel per (query, key), white to dark blue by the square root of the weight, so that the
  // small weights of long inputs still show and maps compare with each other
  const ctx = target.getContext("2d");
  target.width = m.K;
  target.height = m.Q;
  const image = ctx.createImageData(m.K, m.Q);
  const base = (l * m.H + h) * m.Q * m.K;
  for (let i = 0; i < m.Q * m.K; i++) {
    const v = Math.sqrt(Math.min(1, Math.max(0, m.data[base + i])));
    image.data[4 * i] = 255 - 225 * v;
    image.data[4 * i + 1] = 255 - 180 * v;
    image.data[4 * i + 2] = 255 - 100 * v;
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function drawModelView() {
  const m = state.maps[state.kind];
  const grid = $("modelview");
  grid.replaceChildren();
  grid.style.gridTemplateColumns = `4em repeat(${m.H}, 74px)`;
  grid.appendChild(document.createElement("span"));
  for (let h = 0; h < m.H; h++) { const s = document.createElement("span"); s.className = "axis"; s.textContent = `head ${h}`; grid.appendChild(s); }
  for (let l = 0; l < m.L; l++) {
    const s = document.createElement("span");
    s.className = "axis";
    s.textContent = `layer ${l}`;
    grid.appendChild(s);
    for (let h = 0; h < m.H; h++) {
      const c = document.createElement("canvas");
      c.title = `layer ${l} head ${h}`;
      c.dataset.layer = l;
      c.dataset.head = h;
      colourMap(c, m, l, h);
      c.addEventListener("click", () => openMap(l, h));
      grid.appendChild(c);
    }
  }
}

// a cell of the opened map: 9 to 14 pixels (room for a label) up to 160 tokens, smaller beyond
const cellSize = (n) => (n <= 160 ? Math.max(9, Math.min(14, Math.floor(900 / n))) : Math.max(2, Math.floor(900 / n)));

function openMap(l, h) {
  for (const c of $("modelview").querySelectorAll("canvas")) c.classList.toggle("open", Number(c.dataset.layer) === l && Number(c.dataset.head) === h);
  state.layer = l;
  $("layer").value = l;
  setHeads([h]);
  state.opened = { l, h };
  const m = state.maps[state.kind];
  const { q: qTokens, k: kTokens } = sides();
  const cellW = cellSize(m.K), cellH = cellSize(m.Q);
  const left = cellH >= 9 ? 110 : 8, top = cellW >= 9 ? 70 : 8;
  const target = $("detail-map");
  const ctx = canvas(target, left + m.K * cellW + 8, top + m.Q * cellH + 8);
  const image = document.createElement("canvas");
  colourMap(image, m, l, h);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, left, top, m.K * cellW, m.Q * cellH);
  ctx.font = "11px ui-monospace, monospace";
  ctx.fillStyle = "#222";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  if (cellH >= 9) qTokens.forEach((t, i) => ctx.fillText(t, left - 4, top + i * cellH + cellH / 2));
  if (cellW >= 9) keyLabels(ctx, kTokens, left, top, cellW);
  target.onmousemove = (event) => {
    const rect = target.getBoundingClientRect();
    const j = Math.floor((event.clientX - rect.left - left) / cellW), i = Math.floor((event.clientY - rect.top - top) / cellH);
    if (i >= 0 && i < m.Q && j >= 0 && j < m.K) $("detail-value").textContent = `query ${i} ${JSON.stringify(qTokens[i])} -> key ${j} ${JSON.stringify(kTokens[j])}: ${m.at(l, h, i, j).toFixed(4)}`;
  };
  $("detail-title").textContent = `${KIND_TITLES[state.kind] || state.kind}, layer ${l} head ${h}`;
  $("detail").hidden = false;
  drawHeadView();
  drawNeuron();
}

// key tokens written upwards above the columns of a map that starts at (left, top)
function keyLabels(ctx, tokens, left, top, cellW) {
  tokens.forEach((t, j) => {
    ctx.save();
    ctx.translate(left + j * cellW + cellW / 2, top - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(t, 0, 0);
    ctx.restore();
  });
}

// ---- layer x token summary ----

function drawSummary() {
  const summary = state.result.kinds[state.kind].summary;
  const { k: kTokens } = sides();
  const cell = Math.max(3, Math.min(16, Math.floor(1000 / kTokens.length)));
  const labels = cell >= 9;
  const left = 60, top = labels ? 70 : 8;
  const target = $("summary");
  const ctx = canvas(target, left + kTokens.length * cell + 8, top + summary.length * cell + 8);
  ctx.font = "11px ui-monospace, monospace";
  ctx.textBaseline = "middle";
  const heads = state.maps[state.kind].H;
  summary.forEach((row, l) => {
    row.forEach((v, j) => {
      const s = Math.sqrt(Math.min(1, Math.max(0, v / heads))); // as the maps: the square root of the share, 0 to 1
      ctx.fillStyle = `rgb(${255 - 225 * s}, ${255 - 180 * s}, ${255 - 100 * s})`;
      ctx.fillRect(left + j * cell, top + l * cell, cell, cell);
    });
    ctx.fillStyle = "#222";
    ctx.textAlign = "right";
    ctx.fillText(`layer ${l}`, left - 4, top + l * cell + cell / 2);
  });
  if (labels) keyLabels(ctx, kTokens, left, top, cell);
  target.onmousemove = (event) => {
    const rect = target.getBoundingClientRect();
    const j = Math.floor((event.clientX - rect.left - left) / cell), l = Math.floor((event.clientY - rect.top - top) / cell);
    if (l >= 0 && l < summary.length && j >= 0 && j < kTokens.length) $("summary-value").textContent = `layer ${l}, key ${j} ${JSON.stringify(kTokens[j])}: ${summary[l][j].toFixed(4)}`;
  };
}

// ---- neuron view ----

async function drawNeuron() {
  if (!state.result) return;
  $("neuron-section").hidden = false;
  const heads = [...state.heads].sort((a, b) => a - b);
  const head = heads.length ? heads[0] : 0;
  const { q: qTokens, k: kTokens } = sides();
  const ask = { input: state.given, kind: state.kind, layer: state.layer, head, query: state.query };
  const key = JSON.stringify(ask);
  state.neuronKey = key;
  let view;
  try {
    view = await api(`api/run/${encodeURIComponent(state.run.name)}/neuron`, ask);
  } catch (err) { // a model whose attention the neuron view does not know: said here, the rest of the page stands
    if (state.neuronKey === key) { $("neuron-title").textContent = err.message; canvas($("neuron"), 1, 1); }
    return;
  }
  if (state.neuronKey !== key) return; // a newer choice is on its way
  $("neuron-title").textContent = `${KIND_TITLES[state.kind] || state.kind}, layer ${state.layer} head ${head}` +
    `${heads.length > 1 ? " (the first chosen head)" : ""}, query ${state.query} ${JSON.stringify(qTokens[state.query])}; ` +
    `score = ${view.scaling.toPrecision(3)} x sum(q x k)`;
  // keys as rows: the key vector and q x k as coloured cells (the query vector above), then bars
  const d = view.query.length, cellW = Math.max(2, Math.min(8, Math.floor(240 / d))), n = kTokens.length;
  const left = 120, top = 40, gap = 16, bar = 90;
  const vectors = [["k", view.keys], ["q x k", view.products]];
  const bars = [["score", view.scores], ["bias", view.bias], ["attention", view.attention]];
  const width = left + vectors.length * (d * cellW + gap) + bars.length * (bar + 50) + 10;
  const ctx = canvas($("neuron"), width, top + n * ROW + 8);
  ctx.font = "12px ui-monospace, monospace";
  ctx.textBaseline = "middle";
  // red positive, blue negative: as the report's viewer and the neuron figure (RdBu_r)
  const cellColour = (v, top_) => { const s = Math.min(1, Math.abs(v) / top_); return v >= 0 ? `rgb(255, ${255 - 170 * s}, ${255 - 170 * s})` : `rgb(${255 - 200 * s}, ${255 - 140 * s}, 255)`; };
  let x = left;
  for (const [name, rows] of vectors) {
    const top_ = Math.max(...rows.flat().map(Math.abs), ...view.query.map(Math.abs), 1e-9);
    ctx.fillStyle = "#666";
    ctx.textAlign = "left";
    ctx.fillText(name, x, 8);
    if (name === "k") view.query.forEach((v, i) => { ctx.fillStyle = cellColour(v, top_); ctx.fillRect(x + i * cellW, 18, cellW, ROW - 4); });
    rows.slice(0, n).forEach((row, k) => row.forEach((v, i) => { ctx.fillStyle = cellColour(v, top_); ctx.fillRect(x + i * cellW, top + k * ROW + 1, cellW, ROW - 2); }));
    x += d * cellW + gap;
  }
  ctx.fillStyle = "#666";
  ctx.textAlign = "right";
  ctx.fillText("q", left - 8, 18 + (ROW - 4) / 2);
  for (const [name, values] of bars) {
    const shown = values.slice(0, n);
    const top_ = Math.max(...shown.filter((v) => v !== null).map(Math.abs), 1e-9);
    ctx.fillStyle = "#666";
    ctx.textAlign = "left";
    ctx.fillText(name, x, 8);
    shown.forEach((v, k) => {
      const y = top + k * ROW;
      if (v === null) { ctx.fillStyle = "#999"; ctx.fillText("masked", x, y + ROW / 2); return; }
      const w = (bar / 2) * Math.abs(v) / top_;
      ctx.fillStyle = name === "attention" ? "#55a868" : v >= 0 ? "#e45756" : "#4c78a8";
      if (name === "attention") ctx.fillRect(x, y + 3, 2 * w, ROW - 6);
      else ctx.fillRect(v >= 0 ? x + bar / 2 : x + bar / 2 - w, y + 3, w, ROW - 6);
      ctx.fillStyle = "#444";
      ctx.fillText(v.toFixed(2), x + bar + 4, y + ROW / 2);
    });
    x += bar + 50;
  }
  ctx.fillStyle = "#222";
  ctx.textAlign = "right";
  kTokens.forEach((t, k) => ctx.fillText(t, left - 8, top + k * ROW + ROW / 2));
}

// ---- wiring ----

async function start() {
  $("form").addEventListener("submit", submit);
  $("run").addEventListener("change", () => { chooseRun($("run").value); $("result").hidden = true; showError(""); });
  $("kind").addEventListener("change", () => chooseKind($("kind").value));
  $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); drawHeadView(); drawNeuron(); });
  $("all-heads").addEventListener("click", () => { setHeads([...Array(state.maps[state.kind].H).keys()]); drawHeadView(); drawNeuron(); });
  const view = $("headview");
  view.addEventListener("mousemove", (event) => {
    const target = headViewTarget(event);
    if (JSON.stringify(target) !== JSON.stringify(state.hover)) { state.hover = target; drawHeadView(); }
  });
  view.addEventListener("mouseleave", () => { state.hover = null; drawHeadView(); });
  view.addEventListener("click", (event) => {
    const target = headViewTarget(event);
    if (target && target.side === "q") { state.query = target.index; drawNeuron(); }
  });
  try {
    state.runs = await api("api/runs");
  } catch (err) {
    showError(err.message);
    return;
  }
  for (const run of state.runs) option($("run"), run.name, `${run.name} (${run.title})`);
  chooseRun(state.runs[0].name);
}

start();
