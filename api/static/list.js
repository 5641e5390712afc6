// The event list: newest first, at most MAX_ROWS rows in the DOM, one
// render per animation frame however many events arrived since the last.
// At 1,000 events/s that is ~17 events per frame and a constant-size DOM.

export const MAX_ROWS = 500;
const SEEN_MAX = 20000;

const CATEGORIES = new Set(["user", "transaction", "payment", "ticket", "webhook"]);
const timeFmt = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  fractionalSecondDigits: 3,
  hour12: false,
});

export class EventList {
  constructor(ol, { onRender } = {}) {
    this.ol = ol;
    this.onRender = onRender || (() => {});
    this.queue = [];
    this.held = [];
    this.heldDropped = 0;
    this.paused = false;
    this.frame = 0;
    // Resume may repeat events (same id): remember recent ids, bounded.
    this.seen = new Set();
    this.seenOrder = [];
    ol.addEventListener("click", (e) => this.toggle(e));
  }

  // Returns false for a repeat.
  push(ev) {
    if (this.seen.has(ev.id)) return false;
    this.seen.add(ev.id);
    this.seenOrder.push(ev.id);
    if (this.seenOrder.length > SEEN_MAX) {
      for (const id of this.seenOrder.splice(0, SEEN_MAX / 4)) this.seen.delete(id);
    }
    if (this.paused) {
      this.held.push(ev);
      if (this.held.length > MAX_ROWS) this.heldDropped += this.held.splice(0, this.held.length - MAX_ROWS).length;
      this.onRender();
      return true;
    }
    this.queue.push(ev);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    return true;
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused && this.held.length) {
      this.queue.push(...this.held);
      this.held = [];
      this.heldDropped = 0;
      if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    }
    this.onRender();
  }

  clear() {
    this.queue = [];
    this.held = [];
    this.heldDropped = 0;
    this.ol.replaceChildren();
    this.onRender();
  }

  get rows() {
    return this.ol.childElementCount;
  }

  flush() {
    this.frame = 0;
    // Only the newest MAX_ROWS can survive the trim below: skip building the rest.
    const batch = this.queue.length > MAX_ROWS ? this.queue.slice(-MAX_ROWS) : this.queue;
    this.queue = [];
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.appendChild(row(batch[i]));
    this.ol.insertBefore(frag, this.ol.firstChild);
    let extra = this.ol.childElementCount - MAX_ROWS;
    while (extra-- > 0) this.ol.lastElementChild.remove();
    this.onRender();
  }

  toggle(e) {
    const head = e.target.closest(".ev-head");
    if (!head) return;
    const li = head.parentElement;
    const open = li.classList.toggle("open");
    head.setAttribute("aria-expanded", String(open));
    if (open && !li.querySelector("pre")) {
      // Pretty JSON only on demand: cheap rows at high rates.
      const pre = document.createElement("pre");
      pre.className = "payload";
      pre.textContent = JSON.stringify(li.eventData.payload, null, 2);
      li.appendChild(pre);
    }
  }
}

function category(type) {
  const head = type.split(".")[0];
  return CATEGORIES.has(head) ? head : "other";
}

function row(ev) {
  const li = document.createElement("li");
  li.className = `ev c-${category(ev.type)}`;
  li.dataset.id = ev.id;
  li.dataset.type = ev.type;
  li.eventData = ev;
  const head = document.createElement("button");
  head.type = "button";
  head.className = "ev-head";
  head.setAttribute("aria-expanded", "false");
  const type = document.createElement("span");
  type.className = "ev-type";
  type.textContent = ev.type;
  const time = document.createElement("time");
  time.className = "ev-time";
  time.dateTime = ev.timestamp;
  const when = new Date(ev.timestamp);
  time.textContent = isNaN(when) ? ev.timestamp : timeFmt.format(when);
  const id = document.createElement("span");
  id.className = "ev-id";
  id.textContent = `#${ev.id}`;
  const summary = document.createElement("span");
  summary.className = "ev-sum";
  summary.textContent = preview(ev.payload);
  head.append(type, summary, time, id);
  li.appendChild(head);
  return li;
}

// One line of the payload's most telling fields.
const PREFERRED = ["username", "first_name", "title", "status", "type", "amount_kopeks", "message_text", "user_id", "ticket_id"];

function preview(payload) {
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
  return text.length > 140 ? `${text.slice(0, 139)}…` : text;
}
