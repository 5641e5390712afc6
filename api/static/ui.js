// Small DOM and formatting helpers shared by every view. No framework:
// elements are built with el() and updated in place.

export function el(tag, cls = "", text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

export function button(text, { cls = "", title = "", onClick, test } = {}) {
  const b = el("button", cls, text);
  b.type = "button";
  if (title) b.title = title;
  if (test) b.dataset.test = test;
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

export const $ = (id) => document.getElementById(id);

// Compact relative time ("12s ago", "in 5m").
export function ago(iso) {
  if (!iso) return "";
  const s = (new Date(iso) - Date.now()) / 1000;
  if (Number.isNaN(s)) return String(iso);
  const a = Math.abs(s);
  if (a < 1) return "now";
  const [n, unit] = a < 60 ? [a, "s"] : a < 3600 ? [a / 60, "m"] : a < 86400 ? [a / 3600, "h"] : [a / 86400, "d"];
  const text = `${Math.floor(n)}${unit}`;
  return s < 0 ? `${text} ago` : `in ${text}`;
}

const clock = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  fractionalSecondDigits: 3,
  hour12: false,
});
const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

export function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso || "") : clock.format(d);
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : dateTime.format(d);
}

// A <time> showing the relative age, the exact time on hover; refreshed by tick().
export function relTime(iso) {
  const t = el("time", "rel", iso ? ago(iso) : "—");
  if (iso) {
    t.dateTime = iso;
    t.title = when(iso);
  }
  return t;
}

export function tick(root = document) {
  for (const t of root.querySelectorAll("time.rel[datetime]")) t.textContent = ago(t.dateTime);
}

export function badge(text, kind) {
  return el("span", `badge ${kind || ""}`, text);
}

export function statusBadge(status) {
  const kind = { success: "ok", failed: "bad", pending: "wait", retry: "wait" }[status] || "";
  const b = badge(status, kind);
  b.dataset.status = status;
  return b;
}

export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

// A copy-to-clipboard button for `text()`; says "Copied" for a moment.
export function copyButton(text, label = "Copy", test) {
  const b = button(label, { cls: "small", test });
  b.addEventListener("click", async () => {
    const value = typeof text === "function" ? text() : text;
    let ok = false;
    try {
      await navigator.clipboard.writeText(value);
      ok = true;
    } catch {
      // No clipboard permission (plain http): select it for Ctrl-C instead.
      ok = selectText(b.closest(".copyable")?.querySelector("code, pre"));
    }
    b.textContent = ok ? "Copied" : "Select + Ctrl-C";
    setTimeout(() => (b.textContent = label), 1500);
  });
  return b;
}

function selectText(node) {
  if (!node) return false;
  const range = document.createRange();
  range.selectNodeContents(node);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  return true;
}

// Definition list rows: [[label, value-or-node], ...]
export function facts(rows, cls = "facts") {
  const dl = el("dl", cls);
  for (const [label, value] of rows) {
    if (value === undefined) continue;
    const dt = el("dt", "", label);
    const dd = el("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value === null || value === "" ? "—" : String(value);
    dl.append(dt, dd);
  }
  return dl;
}

export function mono(text, cls = "") {
  return el("code", `mono ${cls}`.trim(), text);
}

let toastTimer = 0;
export function toast(text, kind = "") {
  const t = $("toast");
  t.textContent = text;
  t.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.className = "toast"), 4000);
}

// Update a container's children in place, keyed by `key(item)`: a node
// whose item did not change is kept (the button under the pointer survives).
export function reconcile(container, items, key, build, update = () => {}) {
  const old = new Map();
  for (const node of container.children) if (node.dataset.key) old.set(node.dataset.key, node);
  const nodes = items.map((item) => {
    const k = String(key(item));
    const sig = JSON.stringify(item);
    let node = old.get(k);
    if (!node || node.dataset.sig !== sig) {
      node = build(item);
      node.dataset.key = k;
      node.dataset.sig = sig;
    }
    update(node, item);
    return node;
  });
  nodes.forEach((node, i) => {
    if (container.children[i] !== node) container.insertBefore(node, container.children[i] || null);
  });
  while (container.children.length > nodes.length) container.lastElementChild.remove();
}

export function empty(text, cls = "none") {
  return el("div", cls, text);
}
