// The event feed: history from GET /events?order=desc, then live over /ws
// from the history's cursor; scrolling back pages further into history.
//
// Every event lands in one store (newest first, de-duplicated by id). The
// filters (type patterns, key, free text over the payload) decide what of
// the store is shown, so changing them re-renders what is already on
// screen. At most MAX_ROWS rows are in the DOM while following live; new
// events are rendered once per animation frame however many arrived.
// Scrolled away from the top (or paused), new events wait above the list
// ("N new") instead of moving what is being read.

import { api } from "./api.js";
import { el, timeOf } from "./ui.js";

export const MAX_ROWS = 500;
const STORE_MAX = 20000;
const PAGE = 100;
const CATEGORIES = new Set(["user", "transaction", "payment", "ticket", "webhook"]);
const PATTERN = /^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*\.\*|[a-z0-9_]+(\.[a-z0-9_]+)+)$/;

export function category(type) {
  const head = String(type).split(".")[0];
  return CATEGORIES.has(head) ? head : "other";
}

// "ticket.*, user.created" -> a predicate; throws on a malformed pattern.
export function typeMatcher(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  const bad = parts.filter((p) => !PATTERN.test(p));
  if (bad.length) throw new Error(`not a type or pattern: ${bad.join(", ")}`);
  if (!parts.length || parts.includes("*")) return null;
  const exact = new Set(parts.filter((p) => !p.endsWith(".*")));
  const prefixes = parts.filter((p) => p.endsWith(".*")).map((p) => p.slice(0, -1));
  return (type) => exact.has(type) || prefixes.some((p) => type.startsWith(p));
}

export class EventsView {
  constructor(els, { onOpen, onCount, onError }) {
    this.els = els;
    this.onOpen = onOpen;
    this.onCount = onCount;
    this.onError = onError;
    this.store = []; // newest first
    this.ids = new Set();
    this.text = new WeakMap(); // event -> lower-cased payload text (free-text filter)
    this.match = () => true;
    this.shown = 0; // rows of the store (matching) in the DOM, from the top
    this.queue = []; // live events not yet rendered
    this.frame = 0;
    this.paused = false;
    this.older = null; // before= cursor for the next older page; null: none known
    this.exhausted = false; // the log has nothing older
    this.loading = false;
    this.selected = null;

    els.list.addEventListener("click", (e) => {
      const row = e.target.closest("li.ev");
      if (row) this.open(row);
    });
    els.list.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
      const row = e.target.closest("li.ev");
      const next = row && (e.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling);
      if (next) {
        e.preventDefault();
        next.querySelector(".ev-head").focus();
      }
    });
    els.more.addEventListener("click", () => this.loadOlder());
    els.newer.addEventListener("click", () => this.jumpToTop());
    els.scroller.addEventListener("scroll", () => {
      if (this.atTop() && !this.paused && this.queue.length) this.schedule();
    });
    // Scrolling to the end loads the next older page by itself.
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && this.store.length) this.loadOlder();
    }, { root: els.scroller, rootMargin: "200px" }).observe(els.more);
  }

  // --- loading ------------------------------------------------------------------------

  // The newest page of history; returns the cursor the live feed continues from.
  async loadHistory() {
    const page = await api(`/events?order=desc&limit=${PAGE}`);
    this.reset();
    for (const ev of page.items) this.addOld(ev);
    this.older = page.prev_cursor || null;
    this.exhausted = !page.has_more;
    this.render();
    return page.next_cursor;
  }

  // Clear the screen. "Load older" then pages back from the newest event seen.
  clear() {
    const top = this.store[0];
    this.reset();
    if (top) {
      this.older = top.cursor;
      this.exhausted = false;
    }
    this.count();
  }

  reset() {
    this.store = [];
    this.ids = new Set();
    this.queue = [];
    this.shown = 0;
    this.older = null;
    this.exhausted = false;
    this.els.list.replaceChildren();
  }

  async loadOlder() {
    if (this.loading) return;
    // What the store already holds below the rendered rows comes first.
    if (this.renderMore()) return;
    if (this.exhausted || !this.older) return this.updateFooter();
    this.loading = true;
    this.updateFooter();
    try {
      const q = new URLSearchParams({ order: "desc", limit: String(PAGE * 2), before: this.older });
      const page = await api(`/events?${q}`);
      for (const ev of page.items) this.addOld(ev);
      this.older = page.prev_cursor || null;
      this.exhausted = !page.has_more;
      this.renderMore();
    } catch (err) {
      this.onError(err);
    } finally {
      this.loading = false;
      this.updateFooter();
    }
  }

  addOld(ev) {
    if (this.ids.has(ev.id)) return;
    this.ids.add(ev.id);
    this.store.push(ev);
  }

  // A live event from /ws.
  push(ev) {
    if (this.ids.has(ev.id)) return false; // a repeat after a resume
    this.ids.add(ev.id);
    this.store.unshift(ev);
    if (this.store.length > STORE_MAX) {
      for (const old of this.store.splice(STORE_MAX - STORE_MAX / 10)) this.ids.delete(old.id);
      // Older pages continue below what is kept (repeats are dropped by id).
      this.older = this.store[this.store.length - 1].cursor;
      this.exhausted = false;
    }
    if (this.match(ev)) {
      this.queue.push(ev);
      this.schedule();
    }
    return true;
  }

  // --- filtering -----------------------------------------------------------------------

  setFilter({ types, key, text }) {
    const byType = typeMatcher(types || ""); // throws on a bad pattern
    const keyText = (key || "").trim();
    const prefix = keyText.endsWith("*") ? keyText.slice(0, -1) : null;
    const needle = (text || "").trim().toLowerCase();
    this.match = (ev) =>
      (!byType || byType(ev.type)) &&
      (!keyText || (prefix !== null ? (ev.key || "").startsWith(prefix) : ev.key === keyText)) &&
      (!needle || this.payloadText(ev).includes(needle));
    this.filtered = Boolean(byType || keyText || needle);
    this.render();
  }

  payloadText(ev) {
    let t = this.text.get(ev);
    if (t === undefined) {
      t = `${ev.type} ${JSON.stringify(ev.payload)}`.toLowerCase();
      this.text.set(ev, t);
    }
    return t;
  }

  // --- rendering -----------------------------------------------------------------------

  atTop() {
    return this.els.scroller.scrollTop < 8;
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused) this.schedule();
    this.count();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  // New live events: on top while following, else counted in the "N new" bar.
  flush() {
    this.frame = 0;
    if (this.paused || !this.atTop() || !this.queue.length) return this.count();
    const batch = this.queue.length > MAX_ROWS ? this.queue.slice(-MAX_ROWS) : this.queue;
    const skipped = this.queue.length - batch.length;
    this.queue = [];
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.appendChild(this.row(batch[i]));
    this.els.list.insertBefore(frag, this.els.list.firstChild);
    this.shown += batch.length + skipped;
    let extra = this.els.list.childElementCount - MAX_ROWS;
    if (extra > 0) this.shown -= extra;
    while (extra-- > 0) this.els.list.lastElementChild.remove();
    this.shown = Math.min(this.shown, this.els.list.childElementCount);
    this.count();
  }

  // Everything from scratch: the newest matching rows of the store.
  render() {
    this.queue = [];
    const rows = [];
    for (const ev of this.store) {
      if (!this.match(ev)) continue;
      rows.push(this.row(ev));
      if (rows.length >= MAX_ROWS) break;
    }
    this.els.list.replaceChildren(...rows);
    this.shown = rows.length;
    this.els.scroller.scrollTop = 0;
    this.count();
  }

  // Append the next matching rows of the store below what is shown; false if
  // none. The rows on screen are always a run of the store's matching events
  // (newest first), so the next ones follow the last row's place in it.
  renderMore() {
    const last = this.els.list.lastElementChild;
    if (!last) {
      if (!this.store.some((ev) => this.match(ev))) return false;
      this.render();
      return true;
    }
    const lastId = Number(last.dataset.id);
    const start = this.store.findIndex((ev) => ev.id === lastId) + 1;
    const frag = document.createDocumentFragment();
    let added = 0;
    for (let i = start; i > 0 && i < this.store.length && added < PAGE * 2; i++) {
      if (!this.match(this.store[i])) continue;
      frag.appendChild(this.row(this.store[i]));
      added += 1;
    }
    this.els.list.appendChild(frag);
    this.shown += added;
    this.count();
    return added > 0;
  }

  jumpToTop() {
    this.els.scroller.scrollTop = 0;
    this.render();
  }

  count() {
    const waiting = this.queue.length;
    this.els.newer.hidden = waiting === 0;
    this.els.newer.textContent = `${waiting.toLocaleString()} new event${waiting === 1 ? "" : "s"} · show`;
    const rows = this.els.list.childElementCount;
    this.els.empty.hidden = rows > 0;
    this.els.empty.textContent = this.store.length
      ? "No event on screen matches the filters. Change them, or load older events."
      : "Waiting for events… Insert a row into a tracked table, or run outbox demo.";
    this.onCount({ rows, stored: this.store.length, filtered: this.filtered, paused: this.paused, waiting });
    this.updateFooter();
  }

  updateFooter() {
    const more = this.els.more;
    more.disabled = this.loading;
    more.textContent = this.loading
      ? "Loading older events…"
      : this.exhausted && !this.older
        ? "Start of the log: nothing older"
        : "Load older events";
    more.classList.toggle("end", this.exhausted && !this.older);
  }

  row(ev) {
    const li = el("li", `ev c-${category(ev.type)}`);
    li.dataset.id = ev.id;
    li.dataset.type = ev.type;
    li.eventData = ev;
    if (this.selected === ev.id) li.classList.add("selected");
    const head = el("button", "ev-head");
    head.type = "button";
    const time = el("time", "ev-time", timeOf(ev.timestamp));
    time.dateTime = ev.timestamp;
    const key = el("span", "ev-key", ev.key || "");
    if (ev.key) key.title = `key ${ev.key}`;
    head.append(
      el("span", "ev-type", ev.type),
      el("span", "ev-sum", preview(ev.payload)),
      key,
      time,
      el("span", "ev-id", `#${ev.id}`),
    );
    li.appendChild(head);
    return li;
  }

  open(row) {
    for (const s of this.els.list.querySelectorAll("li.selected")) s.classList.remove("selected");
    row.classList.add("selected");
    this.selected = row.eventData.id;
    this.onOpen(row.eventData);
  }
}

// One line of the payload's most telling fields.
const PREFERRED = ["username", "first_name", "title", "status", "type", "amount_kopeks", "message_text", "user_id", "ticket_id"];

export function preview(payload) {
  if (payload === null || typeof payload !== "object") return JSON.stringify(payload);
  const parts = [];
  for (const k of PREFERRED) {
    if (payload[k] === undefined || payload[k] === null) continue;
    let v = payload[k];
    if (k === "amount_kopeks") v = `${(v / 100).toFixed(2)} ₽`;
    else if (k === "status" && payload.previous && payload.previous.status) v = `${payload.previous.status} → ${v}`;
    parts.push(k === "amount_kopeks" ? v : `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    if (parts.length === 4) break;
  }
  if (!parts.length) {
    for (const [k, v] of Object.entries(payload).slice(0, 3)) parts.push(`${k}=${JSON.stringify(v)}`);
  }
  const text = parts.join("  ·  ");
  return text.length > 160 ? `${text.slice(0, 159)}…` : text;
}
