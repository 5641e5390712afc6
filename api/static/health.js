// Health at a glance: GET /health's parts (database, listener, role, feed
// and dispatcher lag, whatever else the process reports), the webhook
// totals, and each sink's lag and last error when GET /sinks exists (the
// panel stays hidden on a 404). Refreshed every few seconds while shown.

import { api, ApiError, token } from "./api.js";
import { $, ago, badge, el, reconcile, when } from "./ui.js";

const REFRESH_MS = 5000;

export class HealthView {
  constructor(ctx) {
    this.ctx = ctx;
    this.timer = 0;
    this.sinksKnown = null; // null: not asked yet; false: the API has no /sinks
  }

  show() {
    clearInterval(this.timer);
    this.timer = setInterval(() => !document.hidden && this.refresh(), REFRESH_MS);
    return this.refresh();
  }

  hide() {
    clearInterval(this.timer);
  }

  async refresh() {
    const [health, sinks] = await Promise.all([readHealth(), this.readSinks()]);
    this.renderHealth(health);
    this.renderSinks(sinks);
  }

  async readSinks() {
    if (this.sinksKnown === false || !this.ctx.canRead) return null;
    try {
      const page = await api("/sinks?limit=200");
      this.sinksKnown = true;
      return page.items || [];
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) this.sinksKnown = false;
      return null;
    }
  }

  renderHealth(h) {
    const summary = $("health-summary");
    if (!h) {
      summary.replaceChildren(badge("no answer", "bad"), el("span", "", " /health did not answer"));
      setNav(false);
      return;
    }
    const ok = h.status === "ok";
    summary.replaceChildren(
      badge(ok ? "ok" : h.status || "degraded", ok ? "ok" : "bad"),
      el("span", "", ok ? " Every part of this process works." : ` ${(h.problems || []).join("; ") || "degraded"}`),
    );
    summary.dataset.status = h.status;
    $("health-tiles").replaceChildren(...tiles(h));
    // Every part as reported, the ones above included: whatever a newer
    // server adds (sinks, capture rules, ...) shows up without a page change.
    const parts = Object.entries(h).filter(([k, v]) => !["status", "problems"].includes(k) && v && typeof v === "object");
    $("health-parts").replaceChildren(...parts.map(([name, value]) => card(name, value)).filter(Boolean));
    setNav(ok);
  }

  renderSinks(items) {
    const panel = $("sinks-panel");
    panel.hidden = items === null;
    if (items === null) return;
    const body = $("sinks");
    if (!items.length) {
      const tr = el("tr");
      const td = el("td", "none", "No sinks. Add one with POST /sinks or outbox sink add.");
      td.colSpan = 6;
      tr.append(td);
      body.replaceChildren(tr);
      return;
    }
    reconcile(body, items, (s) => s.id, (s) => {
      const tr = el("tr");
      const name = el("td");
      name.append(el("strong", "", s.name), el("div", "muted mono small", s.url));
      const state = el("td");
      state.append(s.last_error ? badge("failing", "bad") : s.is_active ? badge("active", "ok") : badge("paused", "off"));
      const lag = s.lag ? events(s.lag.events, s.lag.capped) : "—";
      const age = s.lag && s.lag.events ? ` (oldest ${Math.round(s.lag.oldest_seconds)} s)` : "";
      const err = el("td", "err-cell", s.last_error || "—");
      if (s.last_error_at) err.title = `since ${when(s.last_error_at)}`;
      tr.append(
        name,
        el("td", "mono", s.kind),
        state,
        el("td", "num", lag + age),
        el("td", "num", `${Number(s.rate || 0).toFixed(1)}/s · ${(s.published_count || 0).toLocaleString()}`),
        err,
      );
      return tr;
    });
  }
}

async function readHealth() {
  try {
    // 503 while degraded still carries the parts: read the body either way.
    const res = await fetch("/health", { cache: "no-store", headers: { Authorization: `Bearer ${token.get()}` } });
    return await res.json();
  } catch {
    return null;
  }
}

function events(n, capped) {
  return `${n.toLocaleString()}${capped ? "+" : ""} event${n === 1 && !capped ? "" : "s"}`;
}

function lagText(lag) {
  if (!lag) return ["—", ""];
  const n = events(lag.events, lag.capped);
  return [n, lag.events ? `oldest ${seconds(lag.oldest_seconds)}` : "caught up"];
}

function seconds(s) {
  return s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s / 60)} min`;
}

function tile(label, value, note, state) {
  const t = el("div", "tile");
  t.dataset.state = state;
  t.append(el("span", "", label), el("strong", "", value), el("small", "", note || "\u00a0"));
  return t;
}

function tiles(h) {
  const db = h.database || {};
  const feed = h.feed || {};
  const [feedLag, feedNote] = lagText(feed.lag);
  const [dispLag, dispNote] = lagText(h.dispatcher && h.dispatcher.lag);
  const stateOf = (v) => (GOOD.has(v) ? "ok" : v ? "bad" : "");
  return [
    tile("database", db.status || "—", db.error || "", stateOf(db.status)),
    tile("listener", h.listener || "—", "the LISTEN connection", stateOf(h.listener)),
    tile("role", h.role || "—", h.instance ? `instance ${h.instance}` : "", h.role ? "ok" : ""),
    tile("feed", feed.state || "—", feed.error || (feed.last_read_at ? `read ${ago(epoch(feed.last_read_at))}` : ""), stateOf(feed.state)),
    tile("feed lag", feedLag, feedNote, feed.lag && feed.lag.events > 1000 ? "wait" : "ok"),
    tile("dispatch lag", dispLag, dispNote, h.dispatcher && h.dispatcher.lag && h.dispatcher.lag.events > 1000 ? "wait" : "ok"),
  ];
}

// Times come as ISO strings or unix seconds.
function epoch(v) {
  return typeof v === "number" ? new Date(v * 1000).toISOString() : v;
}

function setNav(ok) {
  const dot = $("nav-health-dot");
  if (dot) dot.dataset.state = ok ? "ok" : "bad";
}

const GOOD = new Set(["ok", "connected", "leader", "follower", "running", "disabled"]);

function card(name, value) {
  const c = el("div", "hcard");
  c.dataset.part = name;
  const head = el("div", "hcard-head");
  head.append(el("h3", "", label(name)));
  const state = typeof value === "object" && value ? value.status || value.state : value;
  if (typeof state === "string") head.append(badge(state, GOOD.has(state) ? "ok" : /error|unreach|fail|stale|down|reconnect/.test(state) ? "bad" : "wait"));
  c.append(head);
  if (value && typeof value === "object") {
    const dl = el("dl", "facts");
    for (const [k, v] of flatten(value)) {
      if (k === "status" || k === "state") continue;
      const dd = el("dd", /cursor|instance/.test(k) ? "mono cut" : "");
      if (Array.isArray(v) && v.length && typeof v[0] === "object") dd.append(items(v));
      else dd.textContent = show(k, v);
      dl.append(el("dt", "", k.replace(/_/g, " ")), dd);
    }
    if (!dl.childElementCount) return null; // its state alone: the tiles say it
    c.append(dl);
  }
  return c;
}

// A list of objects (e.g. the sinks this process publishes): one line each,
// its name and state, and its error when it has one.
function items(list) {
  const ul = el("ul", "hitems");
  for (const it of list) {
    const li = el("li");
    const state = it.state || it.status;
    li.append(el("span", "mono", it.name || it.id || "?"));
    if (state) li.append(badge(state, GOOD.has(state) ? "ok" : "bad"));
    if (it.last_error || it.error) li.append(el("div", "err-cell", it.last_error || it.error));
    ul.append(li);
  }
  return ul;
}

function label(name) {
  return name.replace(/_/g, " ");
}

function flatten(obj, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix} ${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length <= 6) out.push(...flatten(v, key));
    else out.push([key, v]);
  }
  return out;
}

function show(k, v) {
  if (v === null || v === undefined) return "—";
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "object" ? JSON.stringify(x) : x)).join(", ") : "none";
  if (typeof v === "number" && /seconds/.test(k)) return `${v.toFixed(1)} s`;
  if (/_at$|\bat$/.test(k) && (typeof v === "number" || !Number.isNaN(Date.parse(v)))) return `${ago(epoch(v))} (${when(epoch(v))})`;
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
