// The admin live feed: wires the token prompt, the /ws feed, the event
// list, the filter, pause/resume, the rate meter and the webhooks panel.

import { api, token, Unauthorized } from "./api.js";
import { Feed } from "./feed.js";
import { HooksPanel } from "./hooks.js";
import { EventList, MAX_ROWS } from "./list.js";

const $ = (id) => document.getElementById(id);
const PATTERN = /^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*\.\*|[a-z0-9_]+(\.[a-z0-9_]+)+)$/;
const SPARK_BARS = 30;

const state = { total: 0, buckets: new Array(SPARK_BARS).fill(0), types: new Set() };

const list = new EventList($("events"), { onRender: renderCounts });
const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
const feed = new Feed({
  url: `${wsScheme}//${location.host}/ws`,
  token: () => token.get(),
  onEvent,
  onState: setStatus,
  onNotice: notice,
  onUnauthorized: (maybe) => checkToken(maybe),
});
const hooks = new HooksPanel(
  {
    list: $("webhooks"),
    stats: $("hook-stats"),
    error: $("hooks-error"),
    box: $("deliveries-box"),
    title: $("deliveries-title"),
    tabs: $("delivery-tabs"),
    deliveries: $("deliveries"),
    refresh: $("hooks-refresh"),
  },
  { onUnauthorized: (msg) => askToken(msg) },
);

function onEvent(ev) {
  if (!list.push(ev)) return; // a repeat after a resume
  state.total += 1;
  state.buckets[state.buckets.length - 1] += 1;
  if (!state.types.has(ev.type)) addChip(ev.type);
}

// --- status, counters, rate ---------------------------------------------------------

function setStatus(kind, text) {
  const s = $("status");
  s.dataset.state = kind;
  $("status-text").textContent = text;
}

let countsQueued = false;
function renderCounts() {
  if (countsQueued) return;
  countsQueued = true;
  requestAnimationFrame(() => {
    countsQueued = false;
    $("total").textContent = state.total.toLocaleString();
    const rows = list.rows;
    $("empty").hidden = rows > 0 || list.held.length > 0;
    const held = list.held.length + list.heldDropped;
    $("shown-note").textContent = list.paused
      ? `· paused, ${held.toLocaleString()} new`
      : rows >= MAX_ROWS
        ? `· newest ${MAX_ROWS}`
        : "";
  });
}

const spark = $("spark");
for (let i = 0; i < SPARK_BARS; i++) spark.appendChild(document.createElement("i"));
setInterval(() => {
  const b = state.buckets;
  const recent = b.slice(-5);
  $("rate").textContent = Math.round(recent.reduce((x, y) => x + y, 0) / recent.length).toLocaleString();
  const max = Math.max(1, ...b);
  b.forEach((n, i) => {
    spark.children[i].style.height = `${Math.max(1, Math.round((n / max) * 100))}%`;
  });
  b.shift();
  b.push(0);
  renderCounts();
}, 1000);

function notice(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
}

// --- filter ------------------------------------------------------------------------

function parseFilter(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  const bad = parts.filter((p) => !PATTERN.test(p));
  return { parts: parts.length ? parts : ["*"], bad };
}

function applyFilter(text) {
  const { parts, bad } = parseFilter(text);
  if (bad.length) {
    $("filter-state").textContent = `not a type or pattern: ${bad.join(", ")}`;
    $("filter-state").classList.add("error");
    return;
  }
  $("filter-state").classList.remove("error");
  $("filter-state").textContent = parts.join(",") === "*" ? "showing all types" : `showing ${parts.join(", ")}`;
  feed.subscribe(parts);
  for (const chip of $("chips").children) chip.setAttribute("aria-pressed", String(parts.includes(chip.dataset.type)));
}

$("filter-form").addEventListener("submit", (e) => {
  e.preventDefault();
  applyFilter($("filter-input").value);
});

function addChip(type) {
  state.types.add(type);
  const chips = $("chips");
  const b = document.createElement("button");
  b.type = "button";
  b.className = `chip c-${type.split(".")[0]}`;
  b.dataset.type = type;
  b.textContent = type;
  b.setAttribute("aria-pressed", "false");
  const sorted = [...chips.children].find((c) => c.dataset.type > type);
  chips.insertBefore(b, sorted || null);
}

// A chip toggles its type in the filter.
$("chips").addEventListener("click", (e) => {
  const chip = e.target.closest(".chip");
  if (!chip) return;
  const { parts } = parseFilter($("filter-input").value);
  const set = new Set(parts.filter((p) => p !== "*"));
  if (set.has(chip.dataset.type)) set.delete(chip.dataset.type);
  else set.add(chip.dataset.type);
  $("filter-input").value = [...set].join(", ");
  applyFilter($("filter-input").value);
});

// --- pause, clear ------------------------------------------------------------------

$("pause").addEventListener("click", () => {
  const paused = !list.paused;
  list.setPaused(paused);
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(paused));
});
$("clear").addEventListener("click", () => list.clear());

// --- token -------------------------------------------------------------------------

function askToken(message) {
  feed.stop();
  hooks.stop();
  setStatus("unauthorized", "token needed");
  $("token-error").hidden = !message;
  $("token-error").textContent = message || "";
  $("token-input").value = "";
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
  $("token-input").focus();
}

// After repeated refused handshakes: is it the token? (A browser cannot
// read the HTTP status of a refused WebSocket handshake.)
async function checkToken(onlyIfRejected) {
  if (!onlyIfRejected) {
    askToken("The server rejected this token.");
    return;
  }
  try {
    await api("/webhooks?limit=1");
  } catch (err) {
    if (err instanceof Unauthorized) askToken(err.message);
  }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  token.set(value);
  $("token-dialog").close();
  start();
});
$("token-dialog").addEventListener("cancel", (e) => {
  if (!token.get()) e.preventDefault(); // nothing works without one
});
$("token-change").addEventListener("click", () => askToken(""));

function start() {
  notice("");
  feed.stop();
  feed.start();
  hooks.start();
  loadTypes();
}

// Types known to the server, so the chips exist before the first event.
async function loadTypes() {
  try {
    const data = await api("/event-types");
    const items = Array.isArray(data) ? data : data.items || data.event_types || [];
    for (const it of items) {
      const name = typeof it === "string" ? it : it.event_type || it.name || it.type;
      if (name && PATTERN.test(name) && !name.includes("*") && !state.types.has(name)) addChip(name);
    }
  } catch {
    // optional: chips also appear as events arrive
  }
}

token.fromHash();
applyFilter("");
if (token.get()) start();
else askToken("");
