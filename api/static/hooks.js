// The webhooks panel: stats, the list with success/failure counts, a
// webhook's recent deliveries with a retry button. REST only; refreshed
// every few seconds while the tab is visible.

import { api, Unauthorized } from "./api.js";

const REFRESH_MS = 3000;

export class HooksPanel {
  constructor(els, { onUnauthorized }) {
    this.els = els;
    this.onUnauthorized = onUnauthorized;
    this.selected = null;
    this.status = "";
    this.timer = null;
    this.busy = false;
    els.list.addEventListener("click", (e) => {
      const li = e.target.closest("li[data-id]");
      if (li) this.select(Number(li.dataset.id), li.dataset.name);
    });
    els.tabs.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-status]");
      if (!b) return;
      this.status = b.dataset.status;
      for (const t of els.tabs.querySelectorAll("button")) t.setAttribute("aria-selected", String(t === b));
      this.refresh();
    });
    els.deliveries.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-retry]");
      if (b) this.retry(b);
    });
    els.refresh.addEventListener("click", () => this.refresh());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.refresh();
    });
  }

  start() {
    this.stop();
    this.refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
  }

  select(id, name) {
    this.selected = { id, name };
    this.refresh();
  }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      const [stats, hooks] = await Promise.all([
        api("/webhooks/stats").catch(() => null),
        api("/webhooks?limit=50"),
      ]);
      this.renderStats(stats);
      this.renderHooks(hooks.items || []);
      if (!this.selected && hooks.items && hooks.items.length) {
        const first = hooks.items[0];
        this.selected = { id: first.id, name: first.name };
        this.renderHooks(hooks.items);
      }
      if (this.selected) await this.loadDeliveries();
      this.error("");
    } catch (err) {
      if (err instanceof Unauthorized) {
        this.stop();
        this.onUnauthorized(err.message);
      } else {
        this.error(err.message);
      }
    } finally {
      this.busy = false;
    }
  }

  error(text) {
    this.els.error.hidden = !text;
    this.els.error.textContent = text;
  }

  renderStats(s) {
    const box = this.els.stats;
    if (!s) {
      box.replaceChildren();
      return;
    }
    const items = [
      ["webhooks", `${s.active_webhooks}/${s.total_webhooks}`, "active / total"],
      ["deliveries", s.total_deliveries, "all time"],
      ["failed", s.failed_deliveries, "gave up after retries"],
      ["success", `${Number(s.success_rate).toFixed(1)}%`, "success rate"],
    ];
    box.replaceChildren(
      ...items.map(([label, value, title]) => {
        const d = el("div", "stat");
        d.title = title;
        d.append(el("strong", "", String(value)), el("span", "", label));
        return d;
      }),
    );
  }

  renderHooks(items) {
    const list = this.els.list;
    if (!items.length) {
      list.replaceChildren(el("li", "none", "No webhooks yet: POST /webhooks to add one."));
      return;
    }
    reconcile(list, items, (h) => {
      const li = el("li", "hook");
      li.dataset.id = h.id;
      li.dataset.name = h.name;
      if (!h.is_active) li.classList.add("inactive");
      const top = el("div", "hook-top");
      top.append(el("span", "hook-name", h.name), el("span", `badge ${h.is_active ? "ok" : "off"}`, h.is_active ? "active" : "disabled"));
      const url = el("div", "hook-url", h.url);
      url.title = h.url;
      const counts = el("div", "hook-counts");
      counts.append(
        el("span", "count ok", `✓ ${h.success_count ?? 0}`),
        el("span", "count bad", `✗ ${h.failure_count ?? 0}`),
        el("span", "muted when", ""),
      );
      li.append(top, url, counts);
      return li;
    }, (li, h) => {
      li.classList.toggle("selected", Boolean(this.selected && this.selected.id === h.id));
      li.querySelector(".when").textContent = h.last_triggered_at ? `last ${ago(h.last_triggered_at)}` : "never triggered";
    });
  }

  async loadDeliveries() {
    const { id, name } = this.selected;
    const q = new URLSearchParams({ limit: "15" });
    if (this.status) q.set("status", this.status);
    const data = await api(`/webhooks/${id}/deliveries?${q}`);
    this.els.box.hidden = false;
    this.els.title.textContent = `Recent deliveries · ${name}`;
    const items = data.items || [];
    const body = this.els.deliveries;
    if (!items.length) {
      const tr = el("tr");
      const td = el("td", "none", this.status ? `No ${this.status} deliveries.` : "No deliveries yet.");
      td.colSpan = 6;
      tr.append(td);
      body.replaceChildren(tr);
      return;
    }
    reconcile(body, items, (d) => {
      const tr = el("tr", `d-${d.status}`);
      tr.title = d.error_message || "";
      const status = el("td");
      status.append(el("span", `badge ${d.status === "success" ? "ok" : d.status === "failed" ? "bad" : "wait"}`, d.status));
      const tries = el("td", "num", String(d.attempt_number ?? 0));
      const http = el("td", "num", d.response_status ? String(d.response_status) : "—");
      const act = el("td", "act");
      if (d.status === "failed") {
        const b = el("button", "small", "Retry");
        b.type = "button";
        b.dataset.retry = String(d.id);
        b.dataset.hook = String(id);
        act.append(b);
      } else if (d.status === "pending" && d.next_retry_at) {
        act.append(el("span", "muted", "retrying"));
      }
      tr.append(status, el("td", "mono", d.event_type), tries, http, el("td", "muted when"), act);
      return tr;
    }, (tr, d) => {
      tr.querySelector(".when").textContent = ago(d.delivered_at || d.next_retry_at || d.created_at);
    });
  }

  async retry(button) {
    button.disabled = true;
    button.textContent = "…";
    try {
      await api(`/webhooks/${button.dataset.hook}/deliveries/${button.dataset.retry}/retry`, { method: "POST" });
      button.textContent = "queued";
      setTimeout(() => this.refresh(), 500);
    } catch (err) {
      button.disabled = false;
      button.textContent = "Retry";
      this.error(err.message);
    }
  }
}

// Update a list in place, keyed by id: a row whose data did not change is
// kept (a button under the pointer survives the refresh); only its relative
// time is refreshed.
function reconcile(container, items, build, update) {
  const old = new Map();
  for (const node of container.children) if (node.dataset.key) old.set(node.dataset.key, node);
  const nodes = items.map((item) => {
    const key = String(item.id);
    const sig = JSON.stringify(item);
    let node = old.get(key);
    if (!node || node.dataset.sig !== sig) {
      node = build(item);
      node.dataset.key = key;
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

function el(tag, cls = "", text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// Compact relative time ("12s ago", "in 5m"): the table column is narrow.
function ago(iso) {
  if (!iso) return "";
  const s = (new Date(iso) - Date.now()) / 1000;
  if (isNaN(s)) return iso;
  const a = Math.abs(s);
  const [n, unit] = a < 60 ? [a, "s"] : a < 3600 ? [a / 60, "m"] : a < 86400 ? [a / 3600, "h"] : [a / 86400, "d"];
  const text = `${Math.round(n)}${unit}`;
  if (a < 1) return "now";
  return s < 0 ? `${text} ago` : `in ${text}`;
}
