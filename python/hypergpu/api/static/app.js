// HyperGPU dashboard: reads the REST API, follows /ws, and drives training.
// Plain JS, no build step; charts are Chart.js (vendored from npm).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  lastSeq: 0, status: null, nodes: [], selected: null, sessions: [],
  pastMetrics: new Map(), // finished session id -> points (they no longer change)
  alerts: [],
};

// ---- token: from the URL fragment (#token=...) once, then this tab's storage ----
(function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("hypergpu-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("#token").value = sessionStorage.getItem("hypergpu-token") || "";
  $("#token").addEventListener("change", (e) => {
    sessionStorage.setItem("hypergpu-token", e.target.value.trim());
    if (socket) socket.close(); else connect(); // follow the stream with the new token
  });
})();

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("hypergpu-token");
  if (method !== "GET" && token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!res.ok) {
    const msg = (data && (data.message || (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)))) || res.statusText;
    throw new Error(`${res.status}: ${msg}`);
  }
  return data;
}

const fmt = {
  num: (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d)),
  pct: (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`),
  dur: (s) => {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    return s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  },
  int: (v) => (v ?? 0).toLocaleString(),
  // a node's updates' effect on the held-out loss (loss before - after: > 0 helped), and how many harmed
  effect: (n) => (n.effects_scored
    ? `${Number(n.effect_mean ?? NaN).toPrecision(2)}${n.effects_harmful ? ` (${n.effects_harmful} harmful)` : ""}`
    : "–"),
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// ---- charts ----
const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f85149", "#39c5cf", "#ff9bce"];
Chart.defaults.color = "#8595a4";
Chart.defaults.borderColor = "#2a3541";
function lineChart(id, yTitle, extra = {}) {
  return new Chart($(id), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
      interaction: { mode: "nearest", intersect: false },
      scales: { x: { type: "linear", title: { display: true, text: "round" } }, y: { title: { display: true, text: yTitle }, ...extra } },
      plugins: { legend: { labels: { boxWidth: 12 } } },
    },
  });
}
const lossChart = lineChart("#loss-chart", "loss", { beginAtZero: true });
const accChart = lineChart("#accuracy-chart", "accuracy", { min: 0, max: 1 });
let latencyChart = null;

// The held-out figures in the task's own units. A language model's accuracy is
// only next-token accuracy, so its chart is held-out loss, with perplexity in the tooltip.
const HELD_OUT = {
  classification: {
    title: "Accuracy", axis: "test accuracy", legend: "accuracy", key: "test_accuracy", scale: { min: 0, max: 1 },
    statLabel: "test accuracy", stat: (s) => fmt.pct(s.test_accuracy),
    summary: (sum) => fmt.pct(sum && sum.accuracy),
  },
  lm: {
    title: "Held-out loss", axis: "held-out loss (nats/token)", legend: "held-out loss", key: "test_loss",
    scale: { beginAtZero: true },
    statLabel: "held-out loss · perplexity", stat: (s) => `${fmt.num(s.test_loss)} · ${fmt.num(s.test_perplexity, 1)}`,
    summary: (sum) => (sum && sum.perplexity != null ? `ppl ${fmt.num(sum.perplexity, 1)}` : "–"),
  },
};
function heldOutView(task) { return HELD_OUT[task] || HELD_OUT.classification; }

function series(label, points, key, color, dashed) {
  return {
    label, borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 1.5, borderDash: dashed ? [5, 4] : [],
    // the point rides along so a tooltip can show its other figures (perplexity)
    data: points.filter((p) => p[key] !== null && p[key] !== undefined).map((p) => ({ x: p.round, y: p[key], point: p })),
  };
}

function heldOutTooltip(ctx) {
  const ppl = ctx.raw.point && ctx.raw.point.test_perplexity;
  return `${ctx.dataset.label}: ${fmt.num(ctx.parsed.y)}` + (ppl != null ? ` (perplexity ${fmt.num(ppl, 1)})` : "");
}

// Plots runs of `task` only: a loss and an accuracy share no axis.
function plotHeldOut(chart, runs, task) {
  const view = heldOutView(task);
  chart.options.scales.y = { title: { display: true, text: view.axis }, ...view.scale };
  chart.options.plugins.tooltip = { callbacks: { label: heldOutTooltip } };
  chart.data.datasets = runs
    .map(({ s, points }, i) => ({ s, data: series(`${s.label} #${s.id} ${view.legend}`, points, view.key, PALETTE[i % PALETTE.length], false) }))
    .filter(({ s }) => (s.task || "classification") === task)
    .map(({ data }) => data);
  chart.update();
  $("#held-out-title").textContent = view.title;
}

async function refreshCharts() {
  // Current session plus every past one: adaptive and baseline runs overlay.
  const sessions = state.sessions;
  const all = [];
  for (const s of sessions) {
    let points = state.pastMetrics.get(s.id);
    if (!points) {
      points = (await api("GET", `/api/metrics?session=${s.id}`)).points;
      if (!["starting", "running", "paused", "stopping"].includes(s.state)) state.pastMetrics.set(s.id, points);
    }
    all.push({ s, points });
  }
  const loss = [];
  all.forEach(({ s, points }, i) => {
    const color = PALETTE[i % PALETTE.length];
    const name = `${s.label} #${s.id}`;
    loss.push(series(`${name} train`, points, "train_loss", color, false));
    loss.push(series(`${name} test`, points, "test_loss", color, true));
  });
  lossChart.data.datasets = loss; lossChart.update();
  // the current (or held) run's task: the status payload has it even before a run
  plotHeldOut(accChart, all, state.status ? state.status.task : "classification");
  const cur = sessions[sessions.length - 1];
  $("#csv-link").href = cur ? `/api/metrics.csv?session=${cur.id}` : "/api/metrics.csv";
}

document.querySelectorAll("[data-png]").forEach((b) => b.addEventListener("click", () => {
  const chart = Chart.getChart(b.dataset.png);
  const a = el("a", { href: chart.toBase64Image("image/png", 1), download: `hypergpu-${b.dataset.png}.png` });
  document.body.append(a); a.click(); a.remove();
}));

// ---- overview ----
function renderStatus(s) {
  state.status = s;
  const badge = $("#state");
  badge.textContent = s.state; badge.className = `badge state-${s.state}`;
  $("#label").textContent = s.session ? `session #${s.session} · ${s.label}` : "";
  $("#epoch").textContent = s.epoch;
  $("#round").textContent = s.round; $("#rounds").textContent = s.rounds;
  $("#loss").textContent = fmt.num(s.train_loss);
  const view = heldOutView(s.task);
  $("#held-out-k").textContent = view.statLabel;
  $("#accuracy").textContent = view.stat(s);
  $("#samples").textContent = fmt.int(s.samples);
  $("#nodes-alive").textContent = `${s.nodes_alive}/${s.nodes_total}`;
  $("#elapsed").textContent = fmt.dur(s.elapsed_s);
  $("#eta").textContent = fmt.dur(s.eta_s);
  $("#progress-bar").style.width = `${(100 * s.progress).toFixed(1)}%`;
  const active = ["starting", "running", "paused", "stopping"].includes(s.state);
  $("#start-btn").disabled = active;
  $("#stop-btn").disabled = !active || s.state === "stopping";
  $("#pause-btn").disabled = s.state !== "running";
  $("#resume-btn").disabled = s.state !== "paused";
}

// ---- nodes ----
function qualityColor(q) {
  if (q === null || q === undefined) return "#6e7681";
  const hue = Math.round(120 * Math.max(0, Math.min(1, q))); // red -> green
  return `hsl(${hue} 60% 45%)`;
}

function renderNodes(nodes) {
  // Cards are updated in place (keyed by node id), so a click is never lost to a re-render.
  state.nodes = nodes;
  const grid = $("#node-grid");
  const cards = new Map([...grid.querySelectorAll(".node")].map((c) => [Number(c.dataset.node), c]));
  grid.querySelector("p")?.remove();
  if (!nodes.length) grid.replaceChildren(el("p", { class: "muted" }, "no nodes yet"));
  for (const n of nodes) {
    let card = cards.get(n.node_id);
    cards.delete(n.node_id);
    if (!card) {
      card = el("div", { "data-node": n.node_id, onclick: () => selectNode(n.node_id) },
        el("div", { class: "name" }), el("div", { class: "q status" }), el("div", { class: "q figures" }));
      grid.append(card);
    }
    card.className = `node ${n.status}${n.excluded ? " excluded" : ""}${state.selected === n.node_id ? " selected" : ""}`;
    card.title = `${n.name}: ${n.status}`;
    card.querySelector(".name").textContent = `#${n.node_id} ${n.name}`;
    card.querySelector(".status").textContent = `${n.status}${n.excluded ? " · excluded" : ""}`;
    card.querySelector(".figures").textContent =
      `quality ${fmt.num(n.quality, 2)} · rtt ${fmt.num(n.rtt_ms, 1)} ms · util ${fmt.pct(n.utilisation)} · effect ${fmt.effect(n)}`;
    card.style.background = `linear-gradient(90deg, ${qualityColor(n.quality)}33, transparent)`;
  }
  for (const stale of cards.values()) stale.remove();
  renderNetwork(nodes);
  if (state.selected !== null) refreshNodeDetail();
}

function selectNode(id) {
  state.selected = state.selected === id ? null : id;
  renderNodes(state.nodes);
  if (state.selected === null) $("#node-detail").classList.add("hidden");
}

function showValue(v) {
  if (v === null || v === undefined) return "–";
  return typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k} ${x}`).join(", ") : String(v);
}

async function refreshNodeDetail() {
  let d;
  try { d = await api("GET", `/api/nodes/${state.selected}`); } catch { return; }
  const box = $("#node-detail");
  box.classList.remove("hidden");
  const a = d.assignment || {};
  const toggle = d.excluded
    ? el("button", { class: "small", onclick: () => control(`/api/nodes/${d.node_id}/include`) }, "Include")
    : el("button", { class: "small danger", onclick: () => control(`/api/nodes/${d.node_id}/exclude`, { reason: "excluded from the dashboard" }) }, "Exclude");
  const decisions = el("ul", { class: "list" });
  for (const x of d.decisions.slice().reverse()) {
    // operator actions carry `action`; the adaptive planner's carry knob, old and new values
    const what = x.action ?? `${x.knob}: ${showValue(x.old)} → ${showValue(x.new)}`;
    decisions.append(el("li", {}, `round ${x.round ?? "?"}: ${what}${x.reason ? ` (${x.reason})` : ""}`));
  }
  if (!d.decisions.length) decisions.append(el("li", { class: "muted" }, "no decisions yet"));
  box.replaceChildren(
    el("h3", {}, `node #${d.node_id} ${d.name} `, toggle),
    el("div", { class: "stats" },
      el("div", {}, el("span", { class: "k" }, "success rate"), el("span", { class: "v" }, fmt.pct(d.success_rate))),
      el("div", {}, el("span", { class: "k" }, "batch size"), el("span", { class: "v" }, a.batch_size ?? "–")),
      el("div", {}, el("span", { class: "k" }, "codec"), el("span", { class: "v" }, a.codec ?? "–")),
      el("div", {}, el("span", { class: "k" }, "profile"), el("span", { class: "v" }, d.profile ?? "–")),
      el("div", {}, el("span", { class: "k" }, "samples"), el("span", { class: "v" }, fmt.int(d.samples))),
      el("div", {}, el("span", { class: "k" }, "compute utilisation"), el("span", { class: "v" }, fmt.pct(d.utilisation))),
      el("div", {}, el("span", { class: "k" }, "held-out effect"), el("span", { class: "v", id: "node-effect" },
        `${fmt.effect(d)} · ${fmt.int(d.effects_scored)} scored`)),
      el("div", {}, el("span", { class: "k" }, "last effect"), el("span", { class: "v" },
        d.effect_last_round ? `${fmt.num(d.effect_last, 4)} (round ${d.effect_last_round}${d.effect_last_harmful ? ", harmful" : ""})` : "–")),
      el("div", {}, el("span", { class: "k" }, "MB sent/recv"), el("span", { class: "v" }, `${(d.bytes_sent / 1e6).toFixed(1)}/${(d.bytes_received / 1e6).toFixed(1)}`))),
    el("div", { class: "chart" }, el("canvas", { id: "latency-chart" })),
    el("h3", {}, "decisions"), decisions);
  if (latencyChart) latencyChart.destroy();
  latencyChart = lineChart("#latency-chart", "rtt ms", { beginAtZero: true });
  latencyChart.data.datasets = [{
    label: "link rtt (ms)", borderColor: "#39c5cf", pointRadius: 1, borderWidth: 2,
    data: d.latency_history.map((p) => ({ x: p.round, y: p.rtt_ms })),
  }];
  latencyChart.update();
}

// ---- network map and latency heatmap ----
function renderNetwork(nodes) {
  const svg = $("#network-map");
  const NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const cx = 160, cy = 110, r = 85;
  const make = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  nodes.forEach((n, i) => {
    const angle = (2 * Math.PI * i) / Math.max(1, nodes.length) - Math.PI / 2;
    const x = cx + r * Math.cos(angle), y = cy + r * Math.sin(angle);
    const rtt = n.rtt_ms ?? 0;
    const color = !n.connected ? "#6e7681" : rtt < 20 ? "#3fb950" : rtt < 100 ? "#d29922" : "#f85149";
    make("line", { x1: cx, y1: cy, x2: x, y2: y, stroke: color, "stroke-width": n.excluded ? 1 : 3, "stroke-dasharray": n.excluded ? "4 3" : "" });
    make("text", { x: (cx + x) / 2, y: (cy + y) / 2 - 3, fill: "#8595a4", "font-size": 9, "text-anchor": "middle" },
      n.rtt_ms === null ? "" : `${n.rtt_ms.toFixed(1)} ms`);
    make("circle", { cx: x, cy: y, r: 13, fill: qualityColor(n.quality), stroke: "#0f1419", "stroke-width": 2 });
    make("text", { x, y: y + 4, fill: "#fff", "font-size": 10, "text-anchor": "middle" }, n.node_id);
  });
  make("circle", { cx, cy, r: 18, fill: "#1f6feb" });
  make("text", { x: cx, y: cy + 4, fill: "#fff", "font-size": 10, "text-anchor": "middle" }, "coord");
  refreshHeatmap(nodes);
}

async function refreshHeatmap(nodes) {
  const rows = await Promise.all(nodes.map((n) => api("GET", `/api/nodes/${n.node_id}`).catch(() => null)));
  const rounds = [...new Set(rows.flatMap((d) => (d ? d.latency_history.map((p) => p.round) : [])))].sort((a, b) => a - b).slice(-16);
  const table = el("table");
  table.append(el("tr", {}, el("th", {}, "node"), ...rounds.map((r) => el("th", {}, r))));
  for (const d of rows) {
    if (!d) continue;
    const byRound = new Map(d.latency_history.map((p) => [p.round, p.rtt_ms]));
    const tr = el("tr", {}, el("th", {}, `#${d.node_id}`));
    for (const r of rounds) {
      const v = byRound.get(r);
      const td = el("td", {}, v === undefined ? "" : v.toFixed(0));
      if (v !== undefined) td.style.background = `hsl(${Math.max(0, 120 - v)} 60% 30%)`;
      tr.append(td);
    }
    table.append(tr);
  }
  $("#heatmap").replaceChildren(rounds.length ? table : el("p", { class: "muted" }, "no rounds yet"));
}

// ---- alerts, chain, sessions ----
function addAlert(e) {
  state.alerts.unshift(e);
  state.alerts = state.alerts.slice(0, 100);
  const list = $("#alerts");
  list.replaceChildren(...state.alerts.map((a) => el("li", { class: a.data.level || "info" },
    new Date(a.time * 1000).toLocaleTimeString(), ` ${a.data.node !== undefined ? `node ${a.data.node}: ` : ""}${a.data.message}`)));
}

async function refreshChain() {
  const [session, contrib] = await Promise.all([api("GET", "/api/blockchain/session"), api("GET", "/api/blockchain/contributions")]);
  const box = $("#chain");
  if (!session.enabled) { box.replaceChildren(el("p", { class: "muted" }, session.reason)); return; }
  // wide tables scroll inside their card instead of running past it
  const table = (rows, cols) => el("div", { class: "scroll" }, el("table", { class: "table" },
    el("tr", {}, ...cols.map((c) => el("th", {}, c))),
    ...rows.map((r) => el("tr", {}, ...cols.map((c) => el("td", { class: c === "status" ? `status-${r[c]}` : "" }, r[c] ?? "–"))))));
  const contributions = contrib.contributions || [];
  const txs = contrib.transactions || [];
  box.replaceChildren(
    el("p", {}, `${session.connected ? "connected" : "disconnected"} · block ${session.block_number ?? "–"}`
      + (session.queue_depth !== undefined ? ` · queue ${session.queue_depth}` : "")),
    el("h3", {}, "contributions and rewards"),
    contributions.length ? table(contributions, Object.keys(contributions[0])) : el("p", { class: "muted" }, "none yet"),
    el("h3", {}, "transactions"),
    txs.length ? table(txs, Object.keys(txs[0])) : el("p", { class: "muted" }, "none yet"));
}

function renderSessions(sessions) {
  $("#sessions tbody").replaceChildren(...sessions.slice().reverse().map((s) => el("tr", {},
    el("td", {}, s.id), el("td", {}, s.label), el("td", {}, s.state), el("td", {}, s.summary ? s.summary.rounds : "–"),
    el("td", {}, heldOutView(s.task).summary(s.summary)), el("td", {}, s.summary ? s.summary.wall_s.toFixed(1) : "–"))));
}

// ---- control panel ----
const form = $("#config-form");
let heldConfig = null;
function getPath(obj, path) { return path.split(".").reduce((o, k) => (o ? o[k] : undefined), obj); }
function setPath(obj, path, v) {
  const keys = path.split("."); const last = keys.pop();
  keys.reduce((o, k) => o[k], obj)[last] = v;
}
async function loadConfig() {
  heldConfig = await api("GET", "/api/config");
  for (const input of form.elements) {
    if (!input.name) continue;
    const v = getPath(heldConfig, input.name);
    // a held choice the form does not list (a preset's, the server's) stays selected, not blanked
    if (input.tagName === "SELECT" && v != null && ![...input.options].some((o) => o.value === String(v))) input.append(el("option", {}, v));
    input.value = v === null || v === undefined ? "" : v;
  }
}
function formConfig() {
  $("#form-error").textContent = "";
  const bad = [...form.elements].filter((i) => i.name && !i.checkValidity());
  if (bad.length) {
    const msg = bad.map((i) => `${i.name}: ${i.validationMessage}`).join("; ");
    $("#form-error").textContent = msg;
    throw new Error(msg);
  }
  const cfg = structuredClone(heldConfig);
  for (const input of form.elements) {
    if (!input.name) continue;
    let v = input.value;
    if (input.type === "number") v = v === "" ? null : Number(v);
    setPath(cfg, input.name, v);
  }
  return cfg;
}
function say(msg, isError) {
  const p = $("#control-msg");
  p.textContent = msg; p.className = isError ? "error" : "muted";
}
async function control(path, body) {
  try { say((await api("POST", path, body)).message); } catch (e) { say(e.message, true); }
  refresh();
}
$("#apply-btn").addEventListener("click", async () => {
  try { heldConfig = await api("PUT", "/api/config", formConfig()); say("configuration applied to the next run"); }
  catch (e) { $("#form-error").textContent = e.message; }
});
$("#start-btn").addEventListener("click", async () => {
  try { say((await api("POST", "/api/training/start", { config: formConfig() })).message); }
  catch (e) { $("#form-error").textContent = e.message; }
  refresh();
});
$("#stop-btn").addEventListener("click", () => control("/api/training/stop"));
$("#pause-btn").addEventListener("click", () => control("/api/training/pause"));
$("#resume-btn").addEventListener("click", () => control("/api/training/resume"));

async function refreshPresets() {
  const presets = await api("GET", "/api/presets");
  $("#preset-list").replaceChildren(...presets.map((p) => el("li", {},
    el("span", {}, p.name), el("span", { class: "spacer" }),
    el("button", { class: "small", onclick: async () => { await control(`/api/presets/${p.name}/load`); loadConfig(); } }, "Load"),
    el("a", { class: "small button", href: `/api/presets/${p.name}`, download: `${p.name}.json` }, "Export"),
    el("button", { class: "small", onclick: async () => { try { await api("DELETE", `/api/presets/${p.name}`); } catch (e) { say(e.message, true); } refreshPresets(); } }, "Delete"))));
}
$("#preset-save").addEventListener("click", async () => {
  const name = $("#preset-name").value.trim();
  try { await api("PUT", `/api/presets/${encodeURIComponent(name)}`, formConfig()); say(`preset ${name} saved`); }
  catch (e) { say(e.message, true); }
  refreshPresets();
});
$("#preset-import").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const name = file.name.replace(/\.json$/, "").replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 64);
  try { await api("PUT", `/api/presets/${name}`, JSON.parse(await file.text())); say(`preset ${name} imported`); }
  catch (err) { say(err.message, true); }
  e.target.value = "";
  refreshPresets();
});

// ---- refresh and the event stream ----
let refreshing = null, again = false;
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    try {
      const [status, nodes, sessions] = await Promise.all([api("GET", "/api/status"), api("GET", "/api/nodes"), api("GET", "/api/sessions")]);
      state.sessions = sessions;
      renderStatus(status); renderNodes(nodes); renderSessions(sessions);
      await refreshCharts();
    } catch (e) { console.warn("refresh failed", e); }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; refresh(); }
}

// /ws needs the API token. A browser cannot set headers on a WebSocket, so the token rides in
// a subprotocol, base64url-encoded (any token then makes a valid protocol name); the server
// answers with "hypergpu".
function wsProtocols(token) {
  const b64 = btoa(String.fromCharCode(...new TextEncoder().encode(token)));
  return ["hypergpu", `hypergpu.token.${b64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}`];
}
let backoff = 250;
let socket = null;
function connect() {
  if (socket) return; // already open or opening (a token change and a retry may both call)
  const token = sessionStorage.getItem("hypergpu-token");
  if (!token) { $("#ws-status").title = "live updates need the API token"; return; }
  const ws = socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?after=${state.lastSeq}`,
    wsProtocols(token));
  ws.onopen = () => { $("#ws-status").className = "dot on"; $("#ws-status").title = "live event stream"; backoff = 250; };
  ws.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.type === "hello") {
      if (e.oldest_seq > state.lastSeq + 1 && state.lastSeq > 0) say(`missed ${e.oldest_seq - state.lastSeq - 1} events while away`);
      refresh();
      return;
    }
    state.lastSeq = e.seq;
    if (e.kind === "alert") addAlert(e);
    if (e.kind === "chain") refreshChain();
    if (e.kind === "training" || e.kind === "node" || e.kind === "decision") refresh();
  };
  ws.onclose = () => {
    $("#ws-status").className = "dot off";
    socket = null;
    setTimeout(connect, backoff); // resume after the last event seen
    backoff = Math.min(5000, backoff * 2);
  };
}

loadConfig().catch((e) => say(e.message, true));
refreshPresets().catch(() => {});
refreshChain().catch(() => {});
refresh();
connect();
setInterval(refresh, 3000); // link figures change between events too
