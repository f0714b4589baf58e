// The dashboard: one snapshot from /v1/dashboard, then a snapshot per second over Server-Sent
// Events (/v1/dashboard/events), and the node timeline of one run (/v1/runs/{id}/timeline).
"use strict";

const PALETTE = ["#4a78c2", "#e0803a", "#2e9d5b", "#c0392b", "#8e5cc2", "#8c6d46", "#d46fb0",
                 "#6f7a8a", "#b5b82f", "#1fa9b8", "#5a3fa0", "#e3b23c"];
const SVG = "http://www.w3.org/2000/svg";
let ops = [];            // every registered operator, sorted: fixes each one's colour
let selected = null;     // the run whose timeline is shown
let shownKey = null;     // what the timeline shows now (run id + status)
let lastSnap = null;

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "onclick") node.onclick = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
const $ = (sel) => document.querySelector(sel);
const ms = (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`);
const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
const colour = (op) => PALETTE[(ops.indexOf(op) + PALETTE.length) % PALETTE.length];
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function render(s) {
  lastSnap = s;
  ops = Object.keys(s.queues).sort();
  const pill = $("#status");
  pill.textContent = s.status; pill.className = `pill ${s.status}`;
  const r = s.requests;
  $("#total-succeeded").textContent = r.succeeded || 0;
  $("#total-failed").textContent = r.failed || 0;
  $("#total-other").textContent = (r.rejected || 0) + (r.cancelled || 0);
  $("#in-flight").textContent = s.requests_in_flight;
  $("#clock").textContent = new Date(s.time_s * 1000).toLocaleTimeString();
  renderWorkers(s.workers);
  renderQueues(s.queues);
  fill($("#batches tbody"), s.batches.length ? s.batches.map((b) => el("tr", { class: "batch" },
    el("td", { text: b.dispatch }), el("td", { text: b.worker }), el("td", { text: b.op }),
    el("td", { text: b.nodes }), el("td", { text: b.requests.join(", ") }))) : [el("tr", {}, el("td", { colspan: 5, class: "muted", text: "none" }))]);
  renderLatency(s.workflows);
  renderAttainment(s.workflows);
  renderTenants(s.tenants);
  renderRuns(s.runs);
}

function renderWorkers(workers) {
  fill($("#workers tbody"), workers.map((w) => {
    const call = w.call ? `${w.call.op} ${ms(w.call.running_s)}${w.call.stuck ? " (stuck)" : ""}${w.call.queued ? ` +${w.call.queued} queued` : ""}` : "idle";
    const used = w.budget_bytes ? Math.min(100, (100 * w.used_bytes) / w.budget_bytes) : 0;
    const memory = el("td", { class: "nowrap" }, el("span", { class: "bar", title: w.budget_bytes ? `of ${mib(w.budget_bytes)}` : "no limit" },
      el("i", { style: `width:${used}%` })), ` ${mib(w.used_bytes)}${w.budget_bytes ? ` of ${mib(w.budget_bytes)}` : ""}`);
    return el("tr", { class: "worker", "data-worker": w.worker },
      el("td", { text: `${w.worker} (${w.device})` }), el("td", { text: w.state }), el("td", { text: call }),
      el("td", {}, ...(w.resident.length ? w.resident.map((m) => el("span", { class: "chip", text: m })) : [el("span", { class: "muted", text: "nothing" })])),
      memory, el("td", { class: "nowrap", text: ms(w.busy_s) }), el("td", { text: w.dispatches }),
      el("td", { class: "nowrap", text: `${w.loads} / ${w.evictions}` }));
  }));
}

function renderQueues(queues) {
  const most = Math.max(1, ...Object.values(queues));
  $("#queues").replaceChildren(...ops.map((op) => el("div", { class: "queue", "data-op": op },
    el("span", { text: op }), el("span", { class: "bar" }, el("i", { style: `width:${(100 * queues[op]) / most}%;background:${colour(op)}` })),
    el("b", { text: queues[op] }))));
}

// a scatter of each run's latency against when it ended, one colour per workflow
function renderLatency(workflows) {
  const chart = $("#latency"), names = Object.keys(workflows), pts = names.flatMap((n) => workflows[n].points);
  chart.replaceChildren();
  fill($("#workflows tbody"), names.map((n, i) => {
    const w = workflows[n];
    return el("tr", { class: "workflow" }, el("td", {}, el("i", { style: `color:${PALETTE[i % PALETTE.length]}`, text: "● " }), n),
      el("td", { text: w.runs }), el("td", { text: ms(w.p50_s) }), el("td", { text: ms(w.p95_s) }),
      el("td", { text: w.slo_attainment == null ? "no deadlines" : `${(100 * w.slo_attainment).toFixed(1)}% of ${w.slo_runs}` }));
  }));
  if (!pts.length) return;
  const [t0, t1] = [Math.min(...pts.map((p) => p.t_s)), Math.max(...pts.map((p) => p.t_s))];
  const top = Math.max(...pts.map((p) => p.latency_s)) * 1.1 || 1;
  const x = (t) => 40 + (430 * (t - t0)) / Math.max(1e-9, t1 - t0), y = (v) => 165 - (150 * v) / top;
  axes(chart, ms(top), `${Math.round(t1 - t0)} s`);
  names.forEach((n, i) => workflows[n].points.forEach((p) => chart.append(el("svg:circle",
    { cx: x(p.t_s), cy: y(p.latency_s), r: 2.5, fill: p.status === "succeeded" ? PALETTE[i % PALETTE.length] : "#c0392b" },
    el("svg:title", { text: `${n}: ${p.status}, ${ms(p.latency_s)}` })))));
}

// per workflow: the share of its last 20 runs with a deadline that met it, after each such run
function renderAttainment(workflows) {
  const chart = $("#attainment");
  chart.replaceChildren();
  const names = Object.keys(workflows), all = names.flatMap((n) => workflows[n].points.filter((p) => p.met !== null));
  if (!all.length) { chart.append(el("svg:text", { x: 40, y: 90, text: "no run had a deadline yet" })); return; }
  const [t0, t1] = [Math.min(...all.map((p) => p.t_s)), Math.max(...all.map((p) => p.t_s))];
  const x = (t) => 40 + (430 * (t - t0)) / Math.max(1e-9, t1 - t0), y = (v) => 165 - 150 * v;
  axes(chart, "100%", `${Math.round(t1 - t0)} s`);
  names.forEach((n, i) => {
    const timed = workflows[n].points.filter((p) => p.met !== null);
    const line = timed.map((p, k) => {
      const window = timed.slice(Math.max(0, k - 19), k + 1);
      return `${x(p.t_s)},${y(window.filter((q) => q.met).length / window.length)}`;
    });
    if (line.length) chart.append(el("svg:polyline", { points: line.join(" "), fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 1.5 }));
    line.forEach((xy) => { const [cx, cy] = xy.split(","); chart.append(el("svg:circle", { cx, cy, r: 2, fill: PALETTE[i % PALETTE.length] })); });
  });
}

function axes(chart, topLabel, spanLabel) {
  chart.append(el("svg:line", { x1: 40, y1: 15, x2: 40, y2: 165, stroke: "#ccd" }), el("svg:line", { x1: 40, y1: 165, x2: 470, y2: 165, stroke: "#ccd" }),
    el("svg:text", { x: 2, y: 19, text: topLabel }), el("svg:text", { x: 2, y: 168, text: "0" }),
    el("svg:text", { x: 430, y: 178, text: spanLabel }));
}

function renderTenants(tenants) {
  const total = Object.values(tenants).reduce((a, t) => a + t.gpu_s, 0);
  const count = (o) => Object.values(o).reduce((a, n) => a + n, 0);
  fill($("#tenants tbody"), Object.entries(tenants).map(([name, t]) => el("tr", { class: "tenant" },
    el("td", { text: name }), el("td", { text: t.priority }), el("td", { text: t.in_flight }), el("td", { text: count(t.requests) }),
    el("td", { text: t.requests.succeeded || 0 }), el("td", { text: count(t.refused) }), el("td", { text: t.gpu_s.toFixed(2) }),
    el("td", { text: total ? `${((100 * t.gpu_s) / total).toFixed(0)}%` : "–" }),
    el("td", { text: t.slo_total ? `${t.slo_met}/${t.slo_total}` : "–" }))));
}

function renderRuns(runs) {
  $("#runs").replaceChildren(...runs.map((r) => el("div", { class: `run${r.id === selected ? " selected" : ""}`, "data-run": r.id, onclick: () => select(r.id) },
    r.images.length ? el("img", { src: r.images[0], alt: r.id }) : el("div", { class: "noimg" }),
    el("div", {}, el("b", { text: r.id }), " ", el("span", { class: `status-${r.status}`, text: r.status })),
    el("div", { class: "muted", text: `${r.workflow} · ${ms(r.latency_s)}` }))));
  if (selected === null || !runs.some((r) => r.id === selected)) {
    const done = runs.find((r) => r.status === "succeeded");
    if (done) select(done.id);
  } else {
    const run = runs.find((r) => r.id === selected);
    if (`${run.id}/${run.status}` !== shownKey || run.status === "running") loadTimeline(run.id);
  }
}

function select(id) {
  selected = id;
  document.querySelectorAll(".run").forEach((n) => n.classList.toggle("selected", n.dataset.run === id));
  loadTimeline(id);
}

async function loadTimeline(id) {
  const r = await fetch(`/v1/runs/${encodeURIComponent(id)}/timeline`);
  if (!r.ok || id !== selected) return;
  const t = await r.json();
  shownKey = `${t.run}/${t.status}`;
  drawTimeline(t);
}

// a Gantt chart: a row per worker, a bar per dispatch (coloured by operator), a thin line for the
// time it waited on its worker between being sent and starting
function drawTimeline(t) {
  const work = t.spans.reduce((a, s) => a + s.work_s, 0);
  $("#timeline-title").textContent = `${t.run} (${t.workflow}, ${t.status}, ${t.spans.length} dispatches, ${ms(t.latency_s)} end to end, ${ms(work)} of worker time)`;
  const box = $("#timeline");
  if (!t.spans.length) { box.replaceChildren(el("p", { class: "muted", text: "no dispatch ran yet" })); return; }
  const workers = [...new Set([...(lastSnap ? lastSnap.workers.map((w) => w.worker) : []), ...t.spans.map((s) => s.worker)])].sort((a, b) => a - b);
  const end = Math.max(...t.spans.map((s) => s.end_s), t.latency_s || 0);
  const [left, width, rowH] = [80, 1100, 28], height = workers.length * rowH + 26;
  const x = (s) => left + ((width - left - 10) * s) / end;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "xMinYMin meet" });
  workers.forEach((w, i) => svg.append(
    el("svg:rect", { x: 0, y: i * rowH, width, height: rowH, fill: i % 2 ? "#fafbfc" : "#f1f3f6" }),
    el("svg:text", { x: 6, y: i * rowH + 18, class: "row", text: `worker ${w}` })));
  const step = niceStep(end / 8);
  for (let s = 0; s <= end; s += step) {
    svg.append(el("svg:line", { x1: x(s), y1: 0, x2: x(s), y2: height - 20, stroke: "#dde1e7" }),
      el("svg:text", { x: x(s) + 2, y: height - 6, text: ms(s), "text-anchor": x(s) > width - 60 ? "end" : "start" }));
  }
  for (const s of t.spans) {
    const row = workers.indexOf(s.worker), y = row * rowH + 5, w = Math.max(1.5, x(s.end_s) - x(s.start_s));
    const tip = `${s.op}${s.model ? ` (${s.model})` : ""}: ran ${ms(s.end_s - s.start_s)}, waited ${ms(s.start_s - s.sent_s)} on worker ${s.worker}` +
      `, batch of ${s.batch}${s.requests.length > 1 ? ` with requests ${s.requests.join(", ")}` : ""}${s.ok ? "" : " (failed)"}`;
    if (s.start_s - s.sent_s > 0) svg.append(el("svg:line", { x1: x(s.sent_s), y1: y + 9, x2: x(s.start_s), y2: y + 9, stroke: "#b8bfcc" }));
    const g = el("svg:g", { class: "span", "data-op": s.op, "data-worker": s.worker },
      el("svg:rect", { x: x(s.start_s), y, width: w, height: rowH - 10, rx: 2, fill: colour(s.op), stroke: s.ok ? "none" : "#000" }),
      el("svg:title", { text: tip }));
    const label = s.batch > 1 ? `${s.op} ×${s.batch}` : s.op;  // a batch: nodes of other runs ran in it too
    if (w > 7 * label.length) g.append(el("svg:text", { x: x(s.start_s) + 3, y: y + 13, fill: "#fff", text: label }));
    svg.append(g);
  }
  box.replaceChildren(svg);
  const seen = [...new Set(t.spans.map((s) => s.op))].sort();
  $("#legend").replaceChildren(...seen.map((op) => el("span", {}, el("i", { style: `background:${colour(op)}` }), op)));
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw || 1e-3));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

async function start() {
  try {
    const r = await fetch("/v1/dashboard");
    if (r.ok) render(await r.json());
  } catch (e) { /* the stream below retries */ }
  const events = new EventSource("/v1/dashboard/events");
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.onerror = () => { const pill = $("#status"); pill.textContent = "reconnecting"; pill.className = "pill"; };
}
start();
