// The dashboard: polls the gateway's API and renders with textContent only (message bodies are data
// from anyone who can publish, never markup). Every change is a POST carrying the page's CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const QUEUES_EVERY_MS = 2000;
const DEAD_EVERY_MS = 3000;

function status(text, isError) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.style.color = isError ? "#f86368" : "";
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

function emptyRow(tbody, columns, text) {
  const tr = document.createElement("tr");
  tr.className = "empty";
  const td = cell(tr, text);
  td.colSpan = columns;
  tbody.appendChild(tr);
}

const rate = (value) => (value || 0).toFixed(1);

async function act(label, method, path, after) {
  try {
    const result = await api(method, path);
    status(label(result), false);
  } catch (e) {
    status(e.message, true);
  }
  await after();
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

async function refreshQueues() {
  let data;
  try {
    data = await api("GET", "api/queues");
  } catch (e) {
    status(e.message, true);
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
  document.getElementById("queues-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function refreshDead() {
  let data;
  try {
    data = await api("GET", "api/dead?limit=100");
  } catch (e) {
    status(e.message, true);
    return;
  }
  const tbody = document.querySelector("#dead tbody");
  tbody.replaceChildren();
  document.getElementById("dead-total").textContent = data.exists
    ? `${data.queue}: ${data.total} message(s)` : `${data.queue} does not exist yet`;
  for (const m of data.messages) {
    const tr = document.createElement("tr");
    tr.dataset.messageId = m.message_id || "";
    cell(tr, m.message_id, "code");
    cell(tr, m.routing_key, "code");
    cell(tr, m.queue, "code");
    cell(tr, m.attempts, "n");
    cell(tr, m.failed_at ? new Date(m.failed_at).toLocaleString() : "");
    cell(tr, m.error, "error");
    cell(tr, m.body, "code body");
    const actions = cell(tr, "");
    if (m.message_id) {
      const id = encodeURIComponent(m.message_id);
      actions.appendChild(button("Requeue", () => act(
        (r) => `requeued ${r.requeued.length} message(s)`, "POST", `api/dead/requeue?message_id=${id}`,
        refreshAll), "requeue"));
      actions.appendChild(button("Delete", () => {
        if (!confirm(`Delete dead message ${m.message_id} for good?`)) return;
        act((r) => `deleted ${r.deleted} message(s)`, "POST", `api/dead/delete?message_id=${id}`, refreshAll);
      }, "danger delete"));
    }
    tbody.appendChild(tr);
  }
  if (!data.messages.length) emptyRow(tbody, 8, "no dead messages");
}

async function refreshAll() {
  await Promise.all([refreshQueues(), refreshDead()]);
}

document.getElementById("requeue-all").addEventListener("click", () => act(
  (r) => `requeued ${r.requeued.length} message(s)` + (r.left.length ? `, ${r.left.length} left` : ""),
  "POST", "api/dead/requeue?all=true", refreshAll));
document.getElementById("delete-all").addEventListener("click", () => {
  if (!confirm("Delete every dead message for good?")) return;
  act((r) => `deleted ${r.deleted} message(s)`, "POST", "api/dead/delete?all=true&confirm=true", refreshAll);
});

refreshAll();
setInterval(refreshQueues, QUEUES_EVERY_MS);
setInterval(refreshDead, DEAD_EVERY_MS);
