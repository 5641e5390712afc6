// The admin console: the token, what it may do (GET /whoami), the three
// views (events, webhooks, health), the drawer, the status bar.
//
// Scopes: `admin` sees and does everything; `read` sees everything and is
// offered no write action; `feed` sees only the event feed. The page asks
// the API rather than guessing, and the API enforces it anyway.

import { api, token, Unauthorized } from "./api.js";
import { Drawer } from "./drawer.js";
import { EventsView, typeMatcher } from "./events.js";
import { Feed } from "./feed.js";
import { HealthView } from "./health.js";
import { WebhooksView } from "./hooks.js";
import { eventPage } from "./inspect.js";
import { $, el, tick, toast } from "./ui.js";

const SPARK_BARS = 30;
const SCOPES = {
  admin: { label: "admin", canRead: true, canWrite: true },
  read: { label: "read only", canRead: true, canWrite: false },
  feed: { label: "feed only", canRead: false, canWrite: false },
};

const state = { total: 0, buckets: new Array(SPARK_BARS).fill(0), types: new Set(), scope: SCOPES.feed };
const drawer = new Drawer();

// One context object handed to the views; its scope fields are filled in by whoami().
const ctx = {
  drawer,
  canRead: false,
  canWrite: false,
  canSeeDeliveries: false,
  onUnauthorized: (msg) => askToken(msg),
  navigate: (hash) => {
    if (location.hash !== hash) location.hash = hash;
    else route();
  },
};

const events = new EventsView(
  {
    list: $("events"),
    scroller: $("events-scroller"),
    more: $("older"),
    newer: $("newer"),
    empty: $("empty"),
  },
  {
    onOpen: (ev) => drawer.open(eventPage(ev, ctx)),
    onCount: renderCounts,
    onError: (err) => (err instanceof Unauthorized ? askToken(err.message) : notice(err.message)),
  },
);
const hooks = new WebhooksView(ctx);
const health = new HealthView(ctx);

const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
const feed = new Feed({
  url: `${wsScheme}//${location.host}/ws`,
  token: () => token.get(),
  onEvent,
  onState: setStatus,
  onNotice: notice,
  onUnauthorized: (maybe) => checkToken(maybe),
});

function onEvent(ev) {
  if (!events.push(ev)) return;
  state.total += 1;
  state.buckets[state.buckets.length - 1] += 1;
  if (!state.types.has(ev.type)) addChip(ev.type);
}

// --- routing ------------------------------------------------------------------------------

function route() {
  const m = /^#\/(events|webhooks|health)(?:\/(\d+))?/.exec(location.hash) || [];
  let view = m[1] || "events";
  if (!ctx.canRead && view !== "events") view = "events";
  document.body.dataset.view = view;
  for (const a of document.querySelectorAll(".nav a")) a.setAttribute("aria-current", String(a.dataset.view === view));
  for (const v of ["events", "webhooks", "health"]) $(`view-${v}`).hidden = v !== view;
  if (view === "webhooks") hooks.show(m[2]);
  else hooks.hide();
  if (view === "health") health.show();
  else health.hide();
}
window.addEventListener("hashchange", route);

// --- status, counters, rate ---------------------------------------------------------------

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status-text").textContent = text;
}

function renderCounts({ rows, stored, filtered, paused, waiting }) {
  $("total").textContent = state.total.toLocaleString();
  const parts = [];
  if (filtered) parts.push(`${rows.toLocaleString()} shown of ${stored.toLocaleString()} loaded`);
  else if (stored) parts.push(`${stored.toLocaleString()} loaded`);
  if (paused) parts.push(`paused${waiting ? `, ${waiting.toLocaleString()} new` : ""}`);
  $("shown-note").textContent = parts.length ? `· ${parts.join(" · ")}` : "";
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
  tick(document.getElementById("drawer"));
}, 1000);

function notice(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
}

// --- filters ------------------------------------------------------------------------------

function applyFilter() {
  const types = $("filter-types").value;
  const key = $("filter-key").value;
  const text = $("filter-text").value;
  const out = $("filter-state");
  try {
    typeMatcher(types);
  } catch (err) {
    out.textContent = err.message;
    out.classList.add("error");
    return;
  }
  out.classList.remove("error");
  events.setFilter({ types, key, text });
  const said = [];
  const parts = types.split(/[\s,]+/).filter(Boolean);
  if (parts.length && !parts.includes("*")) said.push(`types ${parts.join(", ")}`);
  if (key.trim()) said.push(`key ${key.trim()}`);
  if (text.trim()) said.push(`payload contains “${text.trim()}”`);
  out.textContent = said.length ? `Showing events with ${said.join(" and ")}.` : "";
  for (const chip of $("chips").children) chip.setAttribute("aria-pressed", String(parts.includes(chip.dataset.type)));
}

let filterTimer = 0;
$("filter-form").addEventListener("submit", (e) => {
  e.preventDefault();
  applyFilter();
});
// As you type (debounced): the filters apply to what is already on screen.
$("filter-form").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(applyFilter, 200);
});

function addChip(type) {
  state.types.add(type);
  const chips = $("chips");
  const b = el("button", `chip c-${type.split(".")[0]}`, type);
  b.type = "button";
  b.dataset.type = type;
  b.setAttribute("aria-pressed", "false");
  const after = [...chips.children].find((c) => c.dataset.type > type);
  chips.insertBefore(b, after || null);
}

// A chip toggles its type in the type filter.
$("chips").addEventListener("click", (e) => {
  const chip = e.target.closest(".chip");
  if (!chip) return;
  const input = $("filter-types");
  const set = new Set(input.value.split(/[\s,]+/).filter((p) => p && p !== "*"));
  if (set.has(chip.dataset.type)) set.delete(chip.dataset.type);
  else set.add(chip.dataset.type);
  input.value = [...set].join(", ");
  applyFilter();
});

$("clear").addEventListener("click", () => events.clear());

$("pause").addEventListener("click", () => {
  const paused = !events.paused;
  events.setPaused(paused);
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(paused));
});

// --- token and scope ----------------------------------------------------------------------

function askToken(message) {
  feed.stop();
  hooks.hide();
  health.hide();
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
  if (!onlyIfRejected) return askToken("The server rejected this token.");
  try {
    await api("/whoami");
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

async function whoami() {
  let me;
  try {
    me = await api("/whoami");
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    me = { scope: "admin", name: "" }; // an older server without /whoami
  }
  const scope = SCOPES[me.scope] || SCOPES.feed;
  state.scope = scope;
  Object.assign(ctx, { canRead: scope.canRead, canWrite: scope.canWrite, canSeeDeliveries: scope.canRead });
  document.body.dataset.scope = me.scope in SCOPES ? me.scope : "feed";
  const badgeEl = $("scope");
  badgeEl.textContent = scope.label;
  badgeEl.dataset.scope = document.body.dataset.scope;
  badgeEl.title = `token ${me.name || ""}: ${scope.canWrite ? "may change everything" : scope.canRead ? "may read everything, change nothing" : "may read the event feed only"}${me.events ? ` (${me.events.join(", ")})` : ""}`;
}

async function start() {
  notice("");
  feed.stop();
  try {
    await whoami();
    route();
    const cursor = await events.loadHistory();
    for (const ev of events.store) if (!state.types.has(ev.type)) addChip(ev.type);
    feed.start(cursor);
    loadTypes();
  } catch (err) {
    if (err instanceof Unauthorized) askToken(err.message);
    else {
      notice(`Could not load the console: ${err.message}`);
      toast(err.message, "bad");
      setTimeout(start, 3000);
    }
  }
}

// Types known to the server, so the chips exist before the first event.
async function loadTypes() {
  if (!ctx.canRead) return;
  try {
    const data = await api("/event-types");
    for (const it of data.items || []) {
      const name = it.event_type;
      if (name && !name.includes("*") && !state.types.has(name)) addChip(name);
    }
  } catch {
    // optional: chips also appear as events arrive
  }
}

token.fromHash();
if (token.get()) start();
else askToken("");
