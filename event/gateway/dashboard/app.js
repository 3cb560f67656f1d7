// The dashboard: polls the gateway's API and renders with textContent only (message bodies are data
// from anyone who can publish, never markup). Every change is a POST carrying the page's CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const QUEUES_EVERY_MS = 2000;
const DEAD_EVERY_MS = 3000;

function status(text, isError) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function api(method, path) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: method === "GET" ? {} : { "X-CSRF-Token": csrf },
  });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${method} ${path}: HTTP ${response.status}`);
  }
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(label, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

// Each cell names its column (data-label), which a phone's layout shows before it: there the rows
// are cards and the header row is hidden.
function labelCells(table) {
  const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const tr of table.querySelectorAll("tbody tr:not(.empty)")) {
    [...tr.children].forEach((td, i) => { td.dataset.label = names[i] || ""; });
  }
}

function emptyRow(tbody, columns, text) {
  const tr = document.createElement("tr");
  tr.className = "empty";
  const td = cell(tr, text);
  td.colSpan = columns;
  tbody.appendChild(tr);
}

const rate = (value) => (value || 0).toFixed(1);

// What keeps a table from showing anything (the broker down, a wrong password, the management API
// off): said in the table itself, in the gateway's words, which name the fix.
function problem(tbody, columns, text) {
  tbody.replaceChildren();
  emptyRow(tbody, columns, text);
  tbody.lastChild.classList.add("problem");
  tbody.lastChild.setAttribute("role", "alert");
}

// A table is not redrawn on its timer while the pointer is over it or focus is in it: a redraw between
// the press and the release of a click would swallow the click. What a click changed is redrawn at once.
function busy(table) {
  return table.matches(":hover") || table.contains(document.activeElement);
}

async function act(label, method, path, after) {
  try {
    const result = await api(method, path);
    status(label(result), false);
  } catch (e) {
    status(e.message, true);
  }
  await after(true);
}

function duration(ms) {
  const s = ms / 1000;
  if (s >= 86400 && s % 86400 === 0) return `${s / 86400} d`;
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
  if (s >= 60 && s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}

function roleText(q) {
  if (q.role === "park" || q.role === "delay") return `${q.role} ${duration(q.level_s * 1000)}`;
  if (q.role === "dead") {
    const parts = [];
    if (q.ttl_ms) parts.push(`kept ${duration(q.ttl_ms)}`);
    if (q.max_length) parts.push(`at most ${q.max_length.toLocaleString("en")}`);
    return parts.length ? `dead (${parts.join(", ")})` : "dead";
  }
  if (q.role === "control") return q.worker ? `control of ${q.worker}` : "control";
  return q.role;
}

function stateText(q) {
  if (q.role !== "consumer") return "";
  if (q.paused) return "paused";
  return q.consumers ? "consuming" : "no consumer";
}

// Park queues (event's delays and retries) and hutch-schedule's delay queues: 21 levels each, shown
// only while they hold messages, summed up in one line per role.
const LEVEL_ROLES = { park: "park queues (retries and delayed events)", delay: "hutch-schedule delay queues" };

async function refreshQueues(force) {
  if (!force && busy(document.getElementById("queues"))) return;
  let data;
  try {
    data = await api("GET", "api/queues");
  } catch (e) {
    status("", false);
    problem(document.querySelector("#queues tbody"), 9, e.message);
    return;
  }
  const tbody = document.querySelector("#queues tbody");
  tbody.replaceChildren();
  for (const q of data.queues) {
    if (q.role in LEVEL_ROLES && !q.messages && !q.unacked) continue;
    const tr = document.createElement("tr");
    tr.dataset.queue = q.name;
    tr.dataset.role = q.role;
    if (q.paused) tr.classList.add("paused");
    cell(tr, q.name, "code name");
    cell(tr, roleText(q), "role");
    cell(tr, q.messages, "n depth");
    cell(tr, q.unacked, "n unacked");
    cell(tr, q.consumers, "n consumers");
    cell(tr, rate(q.publish_rate), "n");
    cell(tr, rate(q.deliver_rate), "n");
    const state = cell(tr, stateText(q), "state");
    if (q.paused) state.classList.add("state-paused");
    const actions = cell(tr, "");
    if (q.role === "consumer" && (q.pausable || q.paused)) {
      const verb = q.paused ? "resume" : "pause";
      const b = button(q.paused ? "Resume" : "Pause", () => act(
        () => `${verb}d ${q.name} on every running worker`, "POST",
        `api/consumers/${encodeURIComponent(q.name)}/${verb}`, refreshQueues));
      b.setAttribute("aria-label", `${q.paused ? "Resume" : "Pause"} ${q.name}`);
      actions.appendChild(b);
    }
    tbody.appendChild(tr);
  }
  for (const [role, label] of Object.entries(LEVEL_ROLES)) {
    const levels = data.queues.filter((q) => q.role === role);
    if (!levels.length) continue;
    const waiting = levels.reduce((sum, q) => sum + q.messages + q.unacked, 0);
    emptyRow(tbody, 9, `${levels.length} ${label}: ${waiting} message(s) waiting`);
    tbody.lastChild.classList.add("levels", `levels-${role}`);
  }
  if (!data.queues.length) emptyRow(tbody, 9, "no queues in this namespace yet");
  labelCells(document.getElementById("queues"));
  document.getElementById("queues-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// The dead queue: a page of the gateway's snapshot, newest first (see the docs: the gateway reads the
// queue again only when it changed, so polling it here costs the broker nothing).
const PAGE = 50;
const dead = { offset: 0, matching: 0, total: 0, selected: new Set(), filter: new URLSearchParams() };

function filterFromForm() {
  const form = new FormData(document.getElementById("dead-filter"));
  const params = new URLSearchParams();
  for (const [name, value] of form.entries()) {
    if (!value) continue;
    // datetime-local has no zone: the browser's own, sent as an ISO time with its offset.
    params.set(name, name === "since" || name === "until" ? new Date(value).toISOString() : value);
  }
  return params;
}

function deadQuery(extra) {
  const params = new URLSearchParams(dead.filter);
  for (const [k, v] of Object.entries(extra || {})) params.set(k, v);
  return params.toString();
}

function shorten(text, length) {
  if (!text) return "";
  return text.length > length ? text.slice(0, length - 1) + "…" : text;
}

async function refreshDead(force) {
  if (!force && busy(document.getElementById("dead"))) return;
  let data;
  try {
    data = await api("GET", `api/dead?${deadQuery({ offset: dead.offset, limit: PAGE })}`);
  } catch (e) {
    problem(document.querySelector("#dead tbody"), 8, e.message);
    return;
  }
  dead.matching = data.matching;
  dead.total = data.total;
  const filtered = dead.filter.toString() !== "";
  document.getElementById("dead-total").textContent = data.exists
    ? `${data.queue}: ${data.total} message(s)${filtered ? `, ${data.matching} matching` : ""}`
    : `${data.queue} does not exist yet`;
  const tbody = document.querySelector("#dead tbody");
  tbody.replaceChildren();
  for (const m of data.messages) {
    const tr = document.createElement("tr");
    tr.dataset.messageId = m.message_id || "";
    tr.dataset.key = m.key;
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.checked = dead.selected.has(m.key);
    pick.setAttribute("aria-label", `Select dead message ${m.message_id || m.key}`);
    pick.addEventListener("change", () => {
      if (pick.checked) dead.selected.add(m.key); else dead.selected.delete(m.key);
      updateSelection();
    });
    cell(tr, "").appendChild(pick);
    cell(tr, m.failed_at ? new Date(m.failed_at).toLocaleString() : "", "when");
    cell(tr, m.routing_key, "code");
    cell(tr, m.queue, "code");
    cell(tr, m.attempts, "n");
    cell(tr, shorten(m.error, 160), "error");
    cell(tr, m.body_preview, "code body");
    const open = button("Open", () => openMessage(m.key), "open");
    open.setAttribute("aria-label", `Open dead message ${m.message_id || m.key}`);
    cell(tr, "").appendChild(open);
    tbody.appendChild(tr);
  }
  if (!data.messages.length) emptyRow(tbody, 8, filtered ? "no dead message matches" : "no dead messages");
  labelCells(document.getElementById("dead"));
  const first = data.matching ? dead.offset + 1 : 0;
  const last = dead.offset + data.messages.length;
  document.getElementById("page-info").textContent = `${first}–${last} of ${data.matching}`;
  document.getElementById("page-first").disabled = dead.offset === 0;
  document.getElementById("page-prev").disabled = dead.offset === 0;
  document.getElementById("page-next").disabled = last >= data.matching;
  document.getElementById("page-last").disabled = last >= data.matching;
  document.getElementById("requeue-matching").textContent = `Requeue all ${filtered ? "matching " : ""}(${data.matching})`;
  document.getElementById("delete-matching").textContent = `Delete all ${filtered ? "matching " : ""}(${data.matching})`;
  document.getElementById("select-page").checked =
    data.messages.length > 0 && data.messages.every((m) => dead.selected.has(m.key));
  document.getElementById("dead-read").textContent = data.read_at
    ? `Read from the broker at ${new Date(data.read_at).toLocaleTimeString()}; read again only when the dead queue changes (each read hands every dead message out and back once).`
    : "";
}

function updateSelection() {
  const n = dead.selected.size;
  for (const [id, verb] of [["requeue-selected", "Requeue"], ["delete-selected", "Delete"]]) {
    const b = document.getElementById(id);
    b.disabled = n === 0;
    b.textContent = n ? `${verb} ${n} selected` : `${verb} selected`;
  }
}

function keysQuery() {
  const params = new URLSearchParams();
  for (const key of dead.selected) params.append("key", key);
  return params.toString();
}

async function afterDeadChange() {
  dead.selected.clear();
  updateSelection();
  await refreshAll(true);
}

function requeued(r) {
  return `requeued ${r.requeued.length} message(s)` + (r.left.length ? `, ${r.left.length} left: ${r.left[0].reason}` : "");
}

async function openMessage(key) {
  let m;
  try {
    m = await api("GET", `api/dead/messages/${encodeURIComponent(key)}`);
  } catch (e) {
    status(e.message, true);
    return;
  }
  const facts = document.getElementById("dead-message-facts");
  facts.replaceChildren();
  for (const [name, value] of [["message id", m.message_id || m.key], ["routing key", m.routing_key],
    ["queue", m.queue], ["attempts", m.attempts], ["failed at", m.failed_at ? new Date(m.failed_at).toLocaleString() : ""]]) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value === null || value === undefined ? "" : String(value);
    facts.append(dt, dd);
  }
  document.getElementById("dead-message-error").textContent = m.error || "(none)";
  document.getElementById("dead-message-body").textContent = m.is_json && !m.body_truncated
    ? JSON.stringify(m.body_json, null, 2) : m.body;
  document.getElementById("dead-message-size").textContent =
    `${m.size} bytes${m.is_json ? ", JSON" : ""}${m.body_truncated ? ", the first 256 KiB shown" : ""}`;
  document.getElementById("dead-message-headers").textContent = JSON.stringify(m.headers, null, 2);
  const dialog = document.getElementById("dead-message");
  dialog.dataset.key = m.key;
  dialog.dataset.messageId = m.message_id || "";
  dialog.showModal();
}

function deadAction(id, handler) {
  document.getElementById(id).addEventListener("click", handler);
}

deadAction("dead-message-close", () => document.getElementById("dead-message").close());
deadAction("dead-message-requeue", () => {
  const dialog = document.getElementById("dead-message");
  dialog.close();
  act(requeued, "POST", `api/dead/requeue?key=${encodeURIComponent(dialog.dataset.key)}`, afterDeadChange);
});
deadAction("dead-message-delete", () => {
  const dialog = document.getElementById("dead-message");
  if (!confirm(`Delete dead message ${dialog.dataset.messageId || dialog.dataset.key} for good?`)) return;
  dialog.close();
  act((r) => `deleted ${r.deleted} message(s)`, "POST", `api/dead/delete?key=${encodeURIComponent(dialog.dataset.key)}`, afterDeadChange);
});
deadAction("requeue-selected", () => {
  const n = dead.selected.size;
  if (!confirm(`Requeue ${n} selected dead message(s) to the queues they failed in?`)) return;
  act(requeued, "POST", `api/dead/requeue?${keysQuery()}`, afterDeadChange);
});
deadAction("delete-selected", () => {
  const n = dead.selected.size;
  if (!confirm(`Delete ${n} selected dead message(s) for good?`)) return;
  act((r) => `deleted ${r.deleted} message(s)`, "POST", `api/dead/delete?${keysQuery()}`, afterDeadChange);
});
deadAction("requeue-matching", () => {
  const what = dead.filter.toString() ? "matching this filter" : "in the dead queue";
  if (!confirm(`Requeue all ${dead.matching} dead message(s) ${what}?`)) return;
  act(requeued, "POST", `api/dead/requeue?${deadQuery({ matching: "true" })}`, afterDeadChange);
});
deadAction("delete-matching", () => {
  const what = dead.filter.toString() ? "matching this filter" : "in the dead queue";
  if (!confirm(`Delete all ${dead.matching} dead message(s) ${what} for good?`)) return;
  act((r) => `deleted ${r.deleted} message(s)`, "POST",
    `api/dead/delete?${deadQuery({ matching: "true", confirm: "true" })}`, afterDeadChange);
});
deadAction("select-page", (event) => {
  for (const tr of document.querySelectorAll("#dead tbody tr[data-key]")) {
    const pick = tr.querySelector("input[type=checkbox]");
    pick.checked = event.target.checked;
    if (pick.checked) dead.selected.add(tr.dataset.key); else dead.selected.delete(tr.dataset.key);
  }
  updateSelection();
});
deadAction("page-first", () => { dead.offset = 0; refreshDead(true); });
deadAction("page-prev", () => { dead.offset = Math.max(0, dead.offset - PAGE); refreshDead(true); });
deadAction("page-next", () => { dead.offset += PAGE; refreshDead(true); });
deadAction("page-last", () => {
  dead.offset = Math.max(0, Math.floor((dead.matching - 1) / PAGE) * PAGE);
  refreshDead(true);
});
document.getElementById("dead-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  dead.filter = filterFromForm();
  dead.offset = 0;
  dead.selected.clear();
  updateSelection();
  refreshDead(true);
});
document.getElementById("dead-filter").addEventListener("reset", () => {
  dead.filter = new URLSearchParams();
  dead.offset = 0;
  dead.selected.clear();
  updateSelection();
  setTimeout(() => refreshDead(true), 0);
});

// History: one small chart per consumer queue and the dead queue, drawn as SVG polylines (a chart
// library would be more code than this, and nothing to load from elsewhere). A consumer queue has a
// second chart: the messages its workers processed, failed, retried and sent to the dead queue in each
// interval, as they report them.
const SVG = "http://www.w3.org/2000/svg";
const CHART_W = 300;
const CHART_H = 60;
const LINES = [["ready", "line-ready", "ready"], ["in", "line-in", "in/s"], ["out", "line-out", "out/s"]];
const OUTCOME_LINES = [
  ["processed", "line-processed", "processed"], ["failed", "line-failed", "failed"],
  ["retried", "line-retried", "retried"], ["dead", "line-dead", "dead"],
];

function polyline(values, top, className) {
  const line = document.createElementNS(SVG, "polyline");
  const step = values.length > 1 ? CHART_W / (values.length - 1) : 0;
  const points = [];
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    points.push(`${(i * step).toFixed(1)},${(CHART_H - (top ? (v / top) * (CHART_H - 4) : 0) - 2).toFixed(1)}`);
  });
  if (points.length === 1) points.push(`${CHART_W},${points[0].split(",")[1]}`); // one sample: a level line
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", className);
  return line;
}

// One SVG of ``lines`` from ``series`` and its legend; ``describe`` words each line's peak.
function plot(series, lines, describe) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${CHART_W} ${CHART_H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const peaks = [];
  for (const [key, className, label] of lines) {
    const values = series[key] || [];
    const top = Math.max(0, ...values.filter((v) => v !== null));
    svg.appendChild(polyline(values, top, className));
    peaks.push(describe(key, label, top, values));
  }
  const legend = document.createElement("p");
  legend.className = "legend";
  for (const [i, [, className]] of lines.entries()) {
    const key = document.createElement("span");
    key.className = `key ${className}`;
    key.textContent = peaks[i];
    legend.appendChild(key);
  }
  return [svg, legend, peaks];
}

function chart(name, series, minutes, interval) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.dataset.queue = name;
  const caption = document.createElement("figcaption");
  caption.textContent = name;
  const [svg, legend, peaks] = plot(series, LINES, (key, label, top) => `${label} up to ${key === "ready" ? top : top.toFixed(1)}`);
  const last = (series.ready || []).filter((v) => v !== null).slice(-1)[0];
  svg.setAttribute("aria-label", `${name} over the last ${minutes} min: ${peaks.join(", ")}; ready now ${last ?? "unknown"}`);
  figure.append(caption, svg, legend);
  if (series.processed) {
    const [outcomes, outcomeLegend, totals] = plot(series, OUTCOME_LINES, (key, label, top, values) =>
      `${label} ${values.reduce((sum, v) => sum + (v || 0), 0)}`);
    outcomes.classList.add("outcomes");
    outcomes.setAttribute("aria-label",
      `${name}, messages per ${interval} s over the last ${minutes} min, as its workers report them: ${totals.join(", ")}`);
    figure.append(outcomes, outcomeLegend);
  }
  return figure;
}

async function refreshWorkers() {
  let data;
  try {
    data = await api("GET", "api/workers");
  } catch (e) {
    problem(document.querySelector("#workers tbody"), 7, e.message);
    return;
  }
  const tbody = document.querySelector("#workers tbody");
  tbody.replaceChildren();
  for (const w of data.workers) {
    const tr = document.createElement("tr");
    tr.dataset.connection = w.connection;
    cell(tr, `${w.name || "worker"} (${w.platform || "?"})`);
    cell(tr, w.host ? `${w.hostname ? w.hostname + " " : ""}${w.host}:${w.port}` : "", "code");
    cell(tr, w.pid ?? "?", "n pid");
    cell(tr, w.version ?? "?", "version");
    cell(tr, w.connected_at ? new Date(w.connected_at).toLocaleString() : "", "when");
    // Per consumer, as the worker reports it; a worker that did not answer: what the broker shows.
    const consumes = w.consumers
      ? w.consumers.map((c) => `${c.queue} (${c.paused ? "paused" : "consuming"}, ${c.in_flight} running)`).join(", ")
      : w.queues.join(", ");
    cell(tr, consumes || "nothing (every queue paused?)", "code queues");
    cell(tr, w.in_flight, "n in-flight");
    tbody.appendChild(tr);
  }
  if (!data.workers.length) emptyRow(tbody, 7, "no worker of this namespace is running");
  labelCells(document.getElementById("workers"));
}

async function refreshHistory() {
  let data;
  try {
    data = await api("GET", "api/history");
  } catch (e) {
    return; // the queue table says what is wrong
  }
  const box = document.getElementById("history");
  box.replaceChildren();
  const minutes = Math.max(1, Math.round((data.times.length * data.interval_s) / 60));
  for (const [name, series] of Object.entries(data.series)) box.appendChild(chart(name, series, minutes, data.interval_s));
  if (!Object.keys(data.series).length) {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = "no samples yet: the first comes within 10 s";
    box.appendChild(p);
  }
}

async function refreshAll(force) {
  await Promise.all([refreshQueues(force), refreshDead(force)]);
}

refreshAll(true);
refreshHistory();
refreshWorkers();
setInterval(refreshHistory, 10_000);
setInterval(refreshWorkers, 5000);
setInterval(refreshQueues, QUEUES_EVERY_MS);
setInterval(refreshDead, DEAD_EVERY_MS);
