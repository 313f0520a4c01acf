// With `[admin] auth_token_env`, open the page as /#token=<token>: the
// token stays in the browser (a URL fragment is never sent) and goes with
// each /status request as a bearer token.
function authHeaders() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  return match ? { Authorization: "Bearer " + decodeURIComponent(match[1]) } : {};
}

// The sluice status page: polls /status every second, draws the graph
// (boxes placed by the server's column/row, edges as SVG curves) and fills
// in each component's numbers.
"use strict";

const POLL_MS = 1000;
const MIN_BOX_W = 170;
const MAX_BOX_W = 240;
const MIN_GAP = 44;
const MAX_GAP = 140;
const ROW_GAP = 24;
let builtFor = null; // the graph the boxes were built for
let lastStatus = null;

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---- formatting ----------------------------------------------------------

const DASH = "\u2014";

function fmtInt(v) {
  return v == null ? DASH : Math.round(v).toLocaleString("en-US");
}

function fmtRate(v) {
  if (v == null) return DASH;
  return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US");
}

function fmtSecs(v) {
  if (v == null) return DASH;
  if (v === 0) return "0 ms";
  if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 0) + " ms";
  if (v < 60) return v.toFixed(1) + " s";
  if (v < 3600) return Math.floor(v / 60) + " min " + Math.floor(v % 60) + " s";
  return Math.floor(v / 3600) + " h " + Math.floor((v % 3600) / 60) + " min";
}

function fmtBytes(v) {
  if (v == null) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + " " + units[i];
}

const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

function breakdown(obj) {
  return Object.entries(obj || {})
    .filter(([, n]) => n > 0)
    .map(([k, n]) => k + " " + fmtInt(n))
    .join(" \u00b7 ");
}

// ---- the rows of each kind of box --------------------------------------

// [label, key, value(status, node) -> text, shown(node) -> bool]
const always = () => true;
const has = (key) => (n) => n.metrics[key] != null;
const ROWS = {
  source: [
    ["events/s", "events_per_second", (s, n) => fmtRate(n.metrics.events_per_second), always],
    ["events", "events_total", (s, n) => fmtInt(n.metrics.events_total), always],
    ["lag", "lag_events", (s, n) => fmtInt(n.metrics.lag_events), (n) => n.metrics.lag_seconds == null],
    ["lag", "lag_seconds", (s, n) => fmtSecs(n.metrics.lag_seconds), has("lag_seconds")],
    ["errors", "errors", (s, n) => fmtInt(sum(n.metrics.errors)), always],
    ["dead letters", "dead_letters", (s, n) => fmtInt(sum(n.metrics.dead_letters)), always],
  ],
  transform: [
    ["watermark delay", "watermark_delay_seconds", (s, n) => fmtSecs(n.metrics.watermark_delay_seconds), has("watermark_delay_seconds")],
    ["state keys", "state_keys", (s, n) => fmtInt(n.metrics.state_keys), has("state_keys")],
    ["state size", "state_bytes", (s, n) => fmtBytes(n.metrics.state_bytes), has("state_bytes")],
    ["repeats dropped", "dedupe_dropped_total", (s, n) => fmtInt(n.metrics.dedupe_dropped_total), has("dedupe_dropped_total")],
    ["dead letters", "dead_letters", (s, n) => fmtInt(sum(n.metrics.dead_letters)), always],
  ],
  sink: [
    ["records/s", "events_per_second", (s, n) => fmtRate(n.metrics.events_per_second), always],
    ["records", "events_total", (s, n) => fmtInt(n.metrics.events_total), always],
    ["pending epochs", "pending_epochs", (s, n) => fmtInt(n.metrics.pending_epochs), always],
    ["retries", "retries_total", (s, n) => fmtInt(n.metrics.retries_total), always],
    ["errors", "errors", (s, n) => fmtInt(sum(n.metrics.errors)), always],
  ],
};

// ---- the graph -----------------------------------------------------------

function graphShape(status) {
  return JSON.stringify(status.nodes.map((n) => [n.name, n.kind, n.type, n.inputs, n.column, n.row]));
}

function buildGraph(status) {
  const graph = $("graph");
  for (const old of graph.querySelectorAll(".node")) old.remove();
  for (const n of status.nodes) {
    const box = el("div", "node kind-" + n.kind);
    box.dataset.node = n.name;
    const head = el("div", "node-head");
    head.append(el("span", "node-kind", n.kind), el("span", "node-type", n.type));
    box.append(head, el("div", "node-name", n.name));
    const dl = el("dl", "node-metrics");
    for (const [label, key] of ROWS[n.kind]) {
      const dt = el("dt", null, label);
      const dd = el("dd");
      dd.dataset.metric = key;
      dt.dataset.for = key;
      dl.append(dt, dd);
    }
    box.append(dl, el("div", "node-detail"));
    graph.append(box);
  }
}

function fillGraph(status) {
  for (const n of status.nodes) {
    const box = document.querySelector('.node[data-node="' + CSS.escape(n.name) + '"]');
    if (!box) continue;
    for (const [, key, value, shown] of ROWS[n.kind]) {
      const dd = box.querySelector('dd[data-metric="' + key + '"]');
      const dt = box.querySelector('dt[data-for="' + key + '"]');
      const visible = shown(n);
      dd.hidden = dt.hidden = !visible;
      if (visible) dd.textContent = value(status, n);
    }
    const problems = [breakdown(n.metrics.errors), breakdown(n.metrics.dead_letters)].filter((t) => t);
    box.querySelector(".node-detail").textContent = problems.join(" \u00b7 ");
    box.classList.toggle("warn", problems.length > 0);
    box.classList.toggle("flowing", (n.metrics.events_per_second || 0) > 0);
  }
  layout(status);
}

window.addEventListener("resize", () => {
  if (lastStatus) layout(lastStatus);
});

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

// Box width and column gap that fit the columns into the panel when they
// can (the panel scrolls sideways when they cannot).
function columnsFor(status) {
  const columns = 1 + Math.max(0, ...status.nodes.map((n) => n.column));
  const room = $("graph").parentElement.clientWidth - 40;
  const w = clamp((room - (columns - 1) * MIN_GAP) / columns, MIN_BOX_W, MAX_BOX_W);
  const gap = columns > 1 ? clamp((room - columns * w) / (columns - 1), MIN_GAP, MAX_GAP) : 0;
  return { w: Math.floor(w), gap: Math.floor(gap) };
}

function layout(status) {
  const graph = $("graph");
  const { w: BOX_W, gap: COL_GAP } = columnsFor(status);
  const boxes = new Map();
  let tallest = 0;
  for (const box of graph.querySelectorAll(".node")) {
    box.style.width = BOX_W + "px";
    boxes.set(box.dataset.node, box);
  }
  for (const box of boxes.values()) tallest = Math.max(tallest, box.offsetHeight);
  const pitch = tallest + ROW_GAP;
  let width = 0;
  let height = 0;
  const at = new Map();
  for (const n of status.nodes) {
    const box = boxes.get(n.name);
    if (!box) continue;
    const x = n.column * (BOX_W + COL_GAP);
    const y = n.row * pitch;
    box.style.left = x + "px";
    box.style.top = y + "px";
    at.set(n.name, { x, y, h: box.offsetHeight });
    width = Math.max(width, x + BOX_W);
    height = Math.max(height, y + box.offsetHeight);
  }
  graph.style.width = width + "px";
  graph.style.height = height + "px";
  const svg = $("edges");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.replaceChildren(arrowHead());
  const ns = "http://www.w3.org/2000/svg";
  for (const n of status.nodes) {
    const to = at.get(n.name);
    for (const input of n.inputs) {
      const from = at.get(input);
      if (!from || !to) continue;
      const x1 = from.x + BOX_W;
      const y1 = from.y + Math.min(from.h / 2, 40);
      const x2 = to.x - 2;
      const y2 = to.y + Math.min(to.h / 2, 40);
      const bend = Math.max(30, (x2 - x1) / 2);
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`);
      const src = boxes.get(input);
      path.setAttribute("class", "edge" + (src && src.classList.contains("flowing") ? " flowing" : ""));
      path.setAttribute("marker-end", "url(#arrow)");
      svg.append(path);
    }
  }
}

function arrowHead() {
  const ns = "http://www.w3.org/2000/svg";
  const defs = document.createElementNS(ns, "defs");
  const marker = document.createElementNS(ns, "marker");
  for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" })) {
    marker.setAttribute(k, v);
  }
  const tip = document.createElementNS(ns, "path");
  tip.setAttribute("d", "M0,0 L10,5 L0,10 z");
  tip.setAttribute("class", "arrow");
  marker.append(tip);
  defs.append(marker);
  return defs;
}

// ---- the panels ----------------------------------------------------------

function tile(box, label, key, text) {
  const t = el("div", "tile");
  const value = el("div", "tile-value", text);
  value.dataset.metric = key;
  t.append(value, el("div", "tile-label", label));
  box.append(t);
}

function fillCheckpoint(c) {
  const box = $("checkpoint");
  box.replaceChildren();
  tile(box, "age", "age_seconds", c.age_seconds == null ? "none yet" : fmtSecs(c.age_seconds));
  tile(box, "duration", "last_duration_seconds", fmtSecs(c.last_duration_seconds));
  tile(box, "size", "size_bytes", fmtBytes(c.size_bytes));
  tile(box, "epoch", "epoch", fmtInt(c.epoch));
  tile(box, "checkpoints written", "total", fmtInt(c.total));
  tile(box, "failures", "failures", fmtInt(c.failures));
  tile(box, "interval", "interval_seconds", fmtSecs(c.interval_seconds));
  $("checkpoint-panel").classList.toggle("warn", (c.failures || 0) > 0);
}

function fillDeadLetters(status) {
  const box = $("dead-letters");
  box.replaceChildren();
  const d = status.dead_letter;
  const total = el("div", "big", fmtInt(d.total));
  total.dataset.metric = "dead_letters_total";
  const sink = d.sink;
  const sub = el(
    "div",
    "sub",
    "written to the dead-letter sink: " + fmtInt(sink.events_total) +
      " \u00b7 pending epochs " + fmtInt(sink.pending_epochs) +
      " \u00b7 retries " + fmtInt(sink.retries_total)
  );
  box.append(total, sub);
  const rows = [];
  for (const n of status.nodes) {
    for (const [reason, count] of Object.entries(n.metrics.dead_letters)) {
      if (count > 0) rows.push([n.name, reason, count]);
    }
  }
  if (rows.length === 0) {
    box.append(el("p", "quiet", "No dead letters so far."));
  } else {
    const table = el("table", "reasons");
    const head = el("tr");
    head.append(el("th", null, "component"), el("th", null, "reason"), el("th", "num", "events"));
    table.append(head);
    for (const [component, reason, count] of rows) {
      const tr = el("tr");
      tr.append(el("td", null, component), el("td", null, reason), el("td", "num", fmtInt(count)));
      table.append(tr);
    }
    box.append(table);
  }
  $("dead-letter-panel").classList.toggle("warn", d.total > 0);
}

// ---- polling -------------------------------------------------------------

function render(status) {
  document.title = "sluice \u00b7 " + status.pipeline;
  $("pipeline").textContent = status.pipeline;
  const ready = $("ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.className = "badge " + (status.ready ? "ok" : "bad");
  $("updated").textContent =
    "v" + status.version + " \u00b7 updated " + new Date(status.time * 1000).toLocaleTimeString("en-GB");
  const shape = graphShape(status);
  if (shape !== builtFor) {
    buildGraph(status);
    builtFor = shape;
  }
  lastStatus = status;
  fillGraph(status);
  fillCheckpoint(status.checkpoint);
  fillDeadLetters(status);
  $("error").hidden = true;
}

async function poll() {
  try {
    const response = await fetch("/status", { cache: "no-store", headers: authHeaders() });
    if (!response.ok) throw new Error("GET /status: HTTP " + response.status);
    const status = await response.json();
    render(status);
  } catch (e) {
    const ready = $("ready");
    ready.textContent = "unreachable";
    ready.className = "badge bad";
    $("error").textContent = "Cannot read /status: " + e.message + " (retrying every second)";
    $("error").hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
