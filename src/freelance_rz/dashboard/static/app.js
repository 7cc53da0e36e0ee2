// The freelance_rz dashboard page: renders each snapshot the server streams over
// Server-Sent Events (/events). Everything a producer sent is written as text
// (textContent), never as markup. With a token (#token=... in the address, kept in
// sessionStorage), running jobs can be cancelled and failures retried.
"use strict";

const $ = (id) => document.getElementById(id);
const openDetails = new Set();  // tracebacks the user opened, kept open across updates
const charts = {};
window.frzLatencies = [];  // ms from each poll's answer (and from its ask) to the screen
window.frzState = null;

const TOKEN_KEY = "freelance_rz_token";
(function takeToken() {
  const match = /[#&]token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
})();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "number" ? String(Math.round(v * 1000) / 1000) : String(v));
const ms = (v) => (v === null || v === undefined ? "" : v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(2)} s`);
const secs = (v) => (v === null || v === undefined ? "" : v < 120 ? `${v.toFixed(1)} s` : v < 7200 ? `${Math.round(v / 60)} min` : `${(v / 3600).toFixed(1)} h`);

function num(value, attrs) {
  return el("td", Object.assign({ class: "num" }, attrs || {}), fmt(value));
}

function fill(tableId, rows, emptyText, columns) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colSpan: columns }, emptyText))]));
}

function renderProducers(state) {
  const rows = state.producers.map((p) => {
    const cell = (field) => num(p[field], { "data-producer": p.id, "data-field": field });
    const status = p.up ? "up" : "down";
    return el("tr", { class: status, "data-producer": p.id },
      el("td", { class: `state ${status}`, "data-producer": p.id, "data-field": "state",
        title: p.error || "" }, p.up ? "up" : `down${p.stale_s !== null ? ` (${secs(p.stale_s)})` : ""}`),
      el("td", {}, p.id), el("td", {}, p.endpoint),
      cell("pending"), cell("leased"), cell("done"), cell("failed"), cell("dead"), cell("cancelled"),
      cell("workers"), cell("parked_claims"), cell("finished_last_min"),
      el("td", { class: "num" }, secs(p.uptime_s)));
  });
  fill("producers", rows, "no producer found yet", 13);
}

function renderTotals(state) {
  const up = state.producers.filter((p) => p.up);
  const sum = (key) => up.reduce((acc, p) => acc + (p[key] || 0), 0);
  const items = [["producers up", `${up.length} / ${state.producers.length}`], ["pending", sum("pending")],
    ["running", sum("leased")], ["done", sum("done")], ["failed", sum("failed")], ["dead", sum("dead")],
    ["workers", state.workers.length], ["free slots", state.workers.reduce((a, w) => a + w.free, 0)]];
  $("totals").replaceChildren(...items.map(([label, value]) =>
    el("div", { "data-total": label }, el("b", {}, String(value)), label)));
}

function renderTasks(state) {
  fill("tasks", state.tasks.map((t) => el("tr", {},
    el("td", {}, t.producer), el("td", {}, t.task),
    ...["pending", "leased", "done", "failed", "dead", "cancelled", "retried"].map((k) =>
      num(t[k], { "data-producer": t.producer, "data-task": t.task, "data-field": k })),
    el("td", { class: "num" }, ms(t.wait_mean_ms)), el("td", { class: "num" }, ms(t.run_mean_ms)))),
  "no job yet", 11);
}

function plainText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  }
  return String(value);
}

function renderWorkers(state) {
  fill("workers", state.workers.map((w) => el("tr", { "data-worker": w.id },
    el("td", {}, w.id), num(w.busy, { "data-worker": w.id, "data-field": "busy" }),
    num(w.free, { "data-worker": w.id, "data-field": "free" }),
    el("td", {}, plainText(w.resources)), el("td", {}, plainText(w.labels)),
    el("td", { class: "num" }, w.last_seen_s === null ? "" : `${secs(w.last_seen_s)} ago`),
    el("td", {}, w.producers.join(", ")))), "no worker heard from in the last minute", 7);
}

async function act(action, endpoint, jobId, button) {
  let token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    token = prompt("Admin token of this dashboard");
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
  }
  button.disabled = true;
  const response = await fetch("/api/action", {
    method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({ endpoint, action, job_id: jobId }),
  });
  const answer = await response.json().catch(() => ({ ok: false, error: response.statusText }));
  if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
  button.textContent = answer.ok ? `${action} sent` : `${action} refused`;
  button.title = answer.error || "";
}

function actionButton(state, action, endpoint, jobId) {
  if (!state.admin) return null;
  const button = el("button", { type: "button", "data-action": action, "data-job": String(jobId) }, action);
  button.addEventListener("click", () => act(action, endpoint, jobId, button));
  return button;
}

function renderRunning(state) {
  fill("running", state.running.map((j) => {
    let progress = "";
    if (j.done !== null) {
      const share = j.total ? Math.max(0, Math.min(1, j.done / j.total)) : null;
      progress = el("span", {},
        share === null ? "" : el("span", { class: "bar" }, el("div", { style: `width:${(share * 100).toFixed(1)}%` })),
        el("span", { class: "progress-text" }, `${fmt(j.done)}${j.total !== null ? ` / ${fmt(j.total)}` : ""} ${j.message}`));
    }
    return el("tr", { "data-job": `${j.producer}/${j.job_id}` },
      el("td", {}, j.producer), num(j.job_id), el("td", {}, j.task), el("td", {}, j.worker),
      num(j.attempt), el("td", { class: "num" }, secs(j.running_s)), el("td", {}, progress),
      el("td", {}, actionButton(state, "cancel", j.endpoint, j.job_id)));
  }), "no job running", 8);
}

function renderFailures(state) {
  fill("failures", state.failures.map((f) => {
    const key = `${f.producer}/${f.job_id}/${f.at}`;
    const details = el("details", { "data-job": `${f.producer}/${f.job_id}` },
      el("summary", {}, `${f.type}: ${f.message}`),
      f.traceback ? el("pre", { class: "traceback" }, f.traceback) : null);
    details.open = openDetails.has(key);
    details.addEventListener("toggle", () => (details.open ? openDetails.add(key) : openDetails.delete(key)));
    return el("tr", { "data-failure": `${f.producer}/${f.job_id}` },
      el("td", {}, f.at ? new Date(f.at * 1000).toLocaleTimeString() : ""), el("td", {}, f.producer),
      num(f.job_id), el("td", {}, f.task), el("td", {}, f.kind === "dead" ? "dead letter" : "failed"),
      el("td", { class: "error" }, details), el("td", {}, f.worker), num(f.attempt),
      el("td", {}, actionButton(state, "retry", f.endpoint, f.job_id)));
  }), "no failure", 9);
}

function renderWaiting(state) {
  $("waiting-section").hidden = state.waiting.length === 0;
  $("waiting").replaceChildren(...state.waiting.map((w) => {
    const value = w.value;
    if (Array.isArray(value) && value.length && typeof value[0] === "object") {
      const keys = [...new Set(value.flatMap((v) => Object.keys(v || {})))];
      return el("div", {}, el("h3", {}, `${w.producer}: ${w.key}`), el("table", {},
        el("thead", {}, el("tr", {}, ...keys.map((k) => el("th", {}, k)))),
        el("tbody", {}, ...value.map((v) => el("tr", v && v.task ? { "data-waiting": `${w.producer}/${v.task}` } : {},
          ...keys.map((k) => el("td", { "data-field": k }, plainText(v[k]))))))));
    }
    return el("div", {}, el("b", {}, `${w.producer}: ${w.key} `), plainText(value));
  }));
}

function chart(id, series, data) {
  const target = $(id);
  const width = Math.max(300, target.clientWidth || 500);
  if (!charts[id]) {
    charts[id] = new uPlot({ width, height: 220, series: [{}, ...series], axes: [{}, { size: 60 }],
      scales: { x: { time: true } } }, data, target);
  } else {
    charts[id].setData(data);
  }
}

function renderCharts(state) {
  const s = state.series;
  const t = [], rate = [], failRate = [], wait = [], run = [], p95 = [];
  for (let i = 1; i < s.length; i++) {
    const dt = s[i].t - s[i - 1].t;
    if (dt <= 0) continue;
    t.push(s[i].t); rate.push(s[i].finished / dt); failRate.push(s[i].failed / dt);
    wait.push(s[i].wait_ms); run.push(s[i].run_ms); p95.push(s[i].run_p95_ms);
  }
  chart("chart-throughput", [{ label: "finished/s", stroke: "#3b7dd8", width: 2 },
    { label: "failed or dead/s", stroke: "#c62828" }], [t, rate, failRate]);
  chart("chart-latency", [{ label: "mean wait", stroke: "#8e44ad" }, { label: "mean run", stroke: "#1a8f3c" },
    { label: "run p95", stroke: "#e67e22" }], [t, wait, run, p95]);
}

function render(state) {
  window.frzState = state;
  $("group").textContent = state.group ? `group ${state.group}` : "";
  renderTotals(state); renderProducers(state); renderTasks(state); renderWorkers(state);
  renderRunning(state); renderFailures(state); renderWaiting(state); renderCharts(state);
  $("updated").textContent = `updated ${new Date(state.at * 1000).toLocaleTimeString()} · poll ${state.polls}`;
  $("footer").textContent = state.admin ? "Admin actions on (token required)." : "Read-only.";
  // two animation frames: the second runs once the first, with this update, was painted
  requestAnimationFrame(() => requestAnimationFrame(() => {
    const now = Date.now();
    window.frzLatencies.push({ poll: state.polls, fromAnswer: now - state.at * 1000,
      fromAsk: state.asked_at ? now - state.asked_at * 1000 : null });
    if (window.frzLatencies.length > 1000) window.frzLatencies.shift();
    $("updated").textContent += ` · on screen ${Math.round(now - state.at * 1000)} ms after the answer`;
  }));
}

function connect() {
  const source = new EventSource("/events");
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "live on"; };
  source.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "live off"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
}

connect();
