// Webhooks: the list, one webhook's page (its actions and its deliveries,
// newest first, paged, by status) and the write actions. REST only;
// refreshed every few seconds while visible.

import { api, ApiError, Unauthorized } from "./api.js";
import { deliveryPage } from "./inspect.js";
import { confirmDialog, replayDialog, rotateDialog, showSecret, webhookForm } from "./forms.js";
import { $, ago, badge, button, el, mono, reconcile, relTime, statusBadge, tick, toast, when } from "./ui.js";

const REFRESH_MS = 3000;
const PAGE = 25;

export class WebhooksView {
  constructor(ctx) {
    this.ctx = ctx; // {drawer, canWrite, onUnauthorized, navigate}
    this.hooks = [];
    this.selectedId = null;
    this.status = "";
    this.offset = 0;
    this.timer = 0;
    this.busy = false;
    this.els = {
      list: $("hook-list"),
      stats: $("hook-stats"),
      error: $("hooks-error"),
      detail: $("hook-detail"),
      create: $("hook-create"),
    };
    this.els.create.addEventListener("click", () => this.create());
    this.els.list.addEventListener("click", (e) => {
      const li = e.target.closest("li[data-id]");
      if (li) ctx.navigate(`#/webhooks/${li.dataset.id}`);
    });
    document.addEventListener("visibilitychange", () => !document.hidden && this.visible && this.refresh());
  }

  show(id) {
    this.visible = true;
    const next = id ? Number(id) : null;
    if (next !== this.selectedId) {
      this.selectedId = next;
      this.offset = 0;
      this.status = "";
      this.detailFor = null;
    }
    clearInterval(this.timer);
    this.timer = setInterval(() => !document.hidden && this.refresh(), REFRESH_MS);
    return this.refresh();
  }

  hide() {
    this.visible = false;
    clearInterval(this.timer);
  }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      const [stats, page] = await Promise.all([api("/webhooks/stats").catch(() => null), api("/webhooks?limit=200")]);
      this.hooks = page.items || [];
      this.renderStats(stats);
      if (this.selectedId === null && this.hooks.length && window.matchMedia("(min-width: 901px)").matches) {
        this.selectedId = this.hooks[0].id;
      }
      this.renderList();
      await this.renderDetail();
      this.error("");
    } catch (err) {
      if (err instanceof Unauthorized) this.ctx.onUnauthorized(err.message);
      else this.error(err.message);
    } finally {
      this.busy = false;
      tick(this.els.detail);
    }
  }

  error(text) {
    this.els.error.hidden = !text;
    this.els.error.textContent = text;
  }

  renderStats(s) {
    if (!s) return this.els.stats.replaceChildren();
    const items = [
      ["webhooks", `${s.active_webhooks}/${s.total_webhooks}`, "active / total"],
      ["deliveries", s.total_deliveries.toLocaleString(), "within the retention window"],
      ["pending", (s.pending_deliveries ?? 0).toLocaleString(), "deliveries waiting for an attempt or a retry"],
      ["failed deliveries", s.failed_deliveries.toLocaleString(), "deliveries that gave up after their retries"],
      ["delivered", `${Number(s.success_rate).toFixed(1)}%`, "of finished deliveries"],
    ];
    this.els.stats.replaceChildren(
      ...items.map(([label, value, title]) => {
        const d = el("div", "stat");
        d.title = title;
        d.append(el("strong", "", value), el("span", "", label));
        return d;
      }),
    );
  }

  renderList() {
    const list = this.els.list;
    if (!this.hooks.length) {
      const none = el("li", "none");
      none.append(el("p", "", "No webhooks yet."));
      if (this.ctx.canWrite) none.append(el("p", "muted", "Create one to receive signed POSTs of matching events."));
      list.replaceChildren(none);
      return;
    }
    reconcile(list, this.hooks, (h) => h.id, (h) => {
      const li = el("li", "hook");
      li.dataset.id = h.id;
      li.dataset.name = h.name;
      li.tabIndex = 0;
      li.addEventListener("keydown", (e) => e.key === "Enter" && li.click());
      const top = el("div", "hook-top");
      top.append(el("span", "hook-name", h.name), hookState(h));
      const url = el("div", "hook-url", h.url);
      url.title = h.url;
      const counts = el("div", "hook-counts");
      // Attempts, not deliveries (a delivery may take several): said so, as
      // the totals above count deliveries.
      counts.title = "attempts that succeeded / failed (a delivery may take several attempts)";
      counts.append(
        el("span", "count ok", `✓ ${(h.success_count ?? 0).toLocaleString()}`),
        el("span", "count bad", `✗ ${(h.failure_count ?? 0).toLocaleString()}`),
        el("span", "muted small", "attempts"),
        el("span", "muted types", h.event_types.join(", ")),
      );
      li.append(top, url, counts);
      return li;
    }, (li, h) => li.classList.toggle("selected", h.id === this.selectedId));
  }

  // --- one webhook ---------------------------------------------------------------------

  async renderDetail() {
    const box = this.els.detail;
    const hook = this.hooks.find((h) => h.id === this.selectedId);
    document.body.classList.toggle("hook-open", Boolean(hook));
    if (!hook) {
      box.replaceChildren(
        el("p", "empty", this.selectedId ? `Webhook ${this.selectedId} does not exist (any more).` : "Select a webhook to see its deliveries."),
      );
      this.detailFor = null;
      return;
    }
    if (this.detailFor !== hook.id) {
      this.detailFor = hook.id;
      box.replaceChildren(this.skeleton());
    }
    this.fillHeader(hook);
    await Promise.all([this.loadDeliveries(hook), this.loadBlockedKeys(hook)]);
  }

  skeleton() {
    const frag = document.createDocumentFragment();
    const back = button("← All webhooks", { cls: "ghost small only-narrow" });
    back.addEventListener("click", () => this.ctx.navigate("#/webhooks"));
    const head = el("div", "hd-head");
    head.id = "hd-head";
    const actions = el("div", "hd-actions");
    actions.id = "hd-actions";
    const facts = el("div", "hd-facts");
    facts.id = "hd-facts";
    const dhead = el("div", "panel-head sub");
    const h3 = el("h3", "", "Deliveries");
    h3.append(el("span", "muted", ""));
    h3.lastChild.id = "deliveries-total";
    const tabs = el("div", "tabs");
    tabs.id = "delivery-tabs";
    tabs.setAttribute("role", "tablist");
    for (const [status, label] of [["", "all"], ["failed", "failed"], ["pending", "pending"], ["success", "success"]]) {
      const b = button(label);
      b.dataset.status = status;
      b.setAttribute("role", "tab");
      b.setAttribute("aria-selected", String(status === this.status));
      b.addEventListener("click", () => {
        this.status = status;
        this.offset = 0;
        for (const t of tabs.children) t.setAttribute("aria-selected", String(t === b));
        this.refresh();
      });
      tabs.append(b);
    }
    dhead.append(h3, tabs);
    const table = el("table", "grid deliveries");
    table.id = "deliveries-table";
    const thead = el("thead");
    const tr = el("tr");
    for (const [h, cls] of [["status", "c-status"], ["event", "c-event"], ["tries", "c-num"], ["HTTP", "c-num"], ["updated", "c-when"], ["", "c-act"]]) {
      tr.append(el("th", cls, h));
    }
    thead.append(tr);
    const tbody = el("tbody");
    tbody.id = "deliveries";
    table.append(thead, tbody);
    const wrap = el("div", "table-wrap");
    wrap.append(table);
    const pager = el("div", "pager");
    pager.id = "deliveries-pager";
    const keys = el("section", "keys");
    keys.id = "hd-keys";
    keys.hidden = true;
    frag.append(back, head, actions, facts, keys, dhead, wrap, pager);
    return frag;
  }

  fillHeader(hook) {
    const head = $("hd-head");
    const title = el("div", "hd-title");
    title.append(el("h2", "", hook.name), hookState(hook));
    const url = el("div", "copyable inline");
    url.append(mono(hook.url, "hd-url"));
    head.replaceChildren(title, url);
    if (hook.disabled_reason) head.append(el("p", "callout bad", `Disabled: ${hook.disabled_reason}`));

    const actions = $("hd-actions");
    if (this.ctx.canWrite && actions.dataset.for !== String(hook.id) + hook.is_active) {
      actions.dataset.for = String(hook.id) + hook.is_active;
      const b = (text, test, fn, cls = "") => {
        const x = button(text, { cls: `write ${cls}`, test });
        x.addEventListener("click", () => fn(this.current()));
        return x;
      };
      actions.replaceChildren(
        b("Send test", "send-test", (h) => this.sendTest(h)),
        b("Replay…", "replay", (h) => this.replay(h)),
        b("Edit", "edit", (h) => this.edit(h)),
        b(hook.is_active ? "Pause" : "Activate", "toggle-active", (h) => this.toggle(h)),
        b("Rotate secret", "rotate", (h) => this.rotate(h)),
        b("Delete", "delete", (h) => this.remove(h), "danger-text"),
      );
    } else if (!this.ctx.canWrite) {
      actions.replaceChildren();
    }

    const rows = [
      ["events", hook.event_types.join(", ")],
      ["payload", hook.payload_format],
      ["ordering", hook.ordering || "none"],
      ["succeeded", `${(hook.success_count ?? 0).toLocaleString()} attempts`],
      ["failed", `${(hook.failure_count ?? 0).toLocaleString()} attempts`],
      ["last success", hook.last_success_at ? ago(hook.last_success_at) : "never"],
      ["failing since", hook.failing_since ? when(hook.failing_since) : "—"],
      ["secret rotation", hook.previous_secret_expires_at && new Date(hook.previous_secret_expires_at) > Date.now() ? `old secret signs until ${when(hook.previous_secret_expires_at)}` : "—"],
    ];
    if (hook.headers && Object.keys(hook.headers).length) rows.push(["headers", Object.keys(hook.headers).join(", ")]);
    if (hook.description) rows.push(["description", hook.description]);
    const facts = $("hd-facts");
    const dl = el("dl", "facts cols");
    for (const [k, v] of rows) dl.append(el("dt", "", k), el("dd", "", v));
    facts.replaceChildren(dl);
  }

  current() {
    return this.hooks.find((h) => h.id === this.selectedId);
  }

  async loadDeliveries(hook) {
    const q = new URLSearchParams({ order: "desc", limit: String(PAGE), offset: String(this.offset) });
    if (this.status) q.set("status", this.status);
    const data = await api(`/webhooks/${hook.id}/deliveries?${q}`);
    this.page = data;
    const items = data.items || [];
    const body = $("deliveries");
    if (!body) return;
    $("deliveries-total").textContent = ` · ${data.total.toLocaleString()}${this.status ? ` ${this.status}` : ""}`;
    if (!items.length) {
      const tr = el("tr");
      const td = el("td", "none", this.status ? `No ${this.status} deliveries.` : "No deliveries yet. Send a test, or wait for a matching event.");
      td.colSpan = 6;
      tr.append(td);
      body.replaceChildren(tr);
    } else {
      reconcile(body, items, (d) => d.id, (d) => this.deliveryRow(hook, d), (tr, d) => {
        tr.querySelector("time.rel").textContent = ago(d.delivered_at || d.updated_at);
      });
    }
    this.renderPager(data);
  }

  deliveryRow(hook, d) {
    const tr = el("tr", `clickable d-${d.status}`);
    tr.dataset.id = d.id;
    tr.dataset.openable = "";
    tr.tabIndex = 0;
    const status = el("td", "c-status");
    status.append(statusBadge(d.status));
    const ev = el("td", "c-event");
    ev.append(el("span", "mono", d.event_type), el("span", "muted", ` #${d.event_id}`));
    if (d.replay) ev.append(el("span", "tag", `replay ${d.replay}`));
    if (d.key) ev.append(el("span", "ev-key inline-key", d.key));
    if (d.waiting) ev.append(el("span", "tag wait", "waiting for its key"));
    if (d.error_message && d.status !== "success") ev.append(el("div", "err-line", d.error_message));
    const when = el("td", "c-when");
    when.append(relTime(d.delivered_at || d.updated_at));
    const act = el("td", "c-act");
    if (d.status === "pending" && d.next_retry_at) act.append(el("span", "muted", `retry ${ago(d.next_retry_at)}`));
    else if (d.status === "failed" && this.ctx.canWrite) {
      const b = button("Retry", { cls: "small write", test: "retry" });
      b.dataset.retry = d.id;
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        this.retry(hook, d, b);
      });
      act.append(b);
    }
    tr.append(status, ev, el("td", "c-num num", d.attempt_number), el("td", "c-num num", d.response_status ?? "—"), when, act);
    const open = () => {
      for (const s of $("deliveries").querySelectorAll("tr.selected")) s.classList.remove("selected");
      tr.classList.add("selected");
      this.ctx.drawer.open(deliveryPage(d, hook.name, { ...this.ctx, onChanged: () => this.refresh() }));
    };
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => e.key === "Enter" && open());
    return tr;
  }

  // Per-key order (GET /webhooks/{id}/blocked-keys): the keys held back by a
  // failing head, what waits behind each, and the operator's way out:
  // retry the head now, or skip it (it ends failed; the key moves on).
  async loadBlockedKeys(hook) {
    const box = $("hd-keys");
    if (!box) return;
    if ((hook.ordering || "none") !== "key") {
      box.hidden = true;
      return;
    }
    let data;
    try {
      data = await api(`/webhooks/${hook.id}/blocked-keys?limit=20`);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        box.hidden = true; // a server without per-key order
        return;
      }
      throw err;
    }
    box.hidden = false;
    const head = el("div", "panel-head sub");
    const h3 = el("h3", "", "Per-key order");
    const summary = el("span", "muted", ` · ${data.queues.toLocaleString()} keys queued, ${data.waiting.toLocaleString()} deliveries waiting`);
    h3.append(summary);
    head.append(h3);
    if (data.blocked_keys) head.append(badge(`${data.blocked_keys} blocked`, "bad"));
    const parts = [head];
    if (!data.items.length) {
      parts.push(el("p", "muted small", "No key is blocked: every key's head is being delivered normally."));
    } else {
      const t = el("table", "grid blocked");
      t.dataset.test = "blocked-keys";
      const tr = el("tr");
      for (const x of ["key", "head (failing)", "tries", "next retry", "waiting", ""]) tr.append(el("th", "", x));
      const thead = el("thead");
      thead.append(tr);
      const body = el("tbody");
      for (const k of data.items) {
        const row = el("tr");
        row.dataset.key = k.key;
        const what = el("td");
        what.append(el("span", "mono", `${k.event_type} #${k.event_id}`));
        if (k.error_message) what.append(el("div", "err-line", k.error_message));
        const next = el("td");
        next.append(k.next_retry_at ? relTime(k.next_retry_at) : el("span", "muted", "—"));
        const act = el("td", "c-act");
        if (this.ctx.canWrite) {
          const retry = button("Retry now", { cls: "small write", test: "key-retry" });
          retry.addEventListener("click", () => this.keyAction(hook, k, "retry", retry));
          const skip = button("Skip", { cls: "small write danger-text", test: "key-skip" });
          skip.title = "End this delivery failed, unsent, so the key moves on";
          skip.addEventListener("click", () => this.keyAction(hook, k, "skip", skip));
          act.append(retry, skip);
        }
        row.append(el("td", "mono", k.key), what, el("td", "num", k.attempt_number), next, el("td", "num", k.waiting.toLocaleString()), act);
        body.append(row);
      }
      t.append(thead, body);
      const wrap = el("div", "table-wrap");
      wrap.append(t);
      parts.push(wrap);
    }
    box.replaceChildren(...parts);
  }

  async keyAction(hook, k, action, b) {
    if (action === "skip") {
      const ok = await confirmDialog(
        "Skip the head of this key",
        [
          el("p", "", `Delivery #${k.delivery_id} (${k.event_type} #${k.event_id}) ends failed without being sent to ${hook.name}.`),
          el("p", "muted", `The next of the ${k.waiting.toLocaleString()} waiting deliveries of key ${k.key} is sent at once. Replay can send the skipped event later.`),
        ],
        { confirm: "Skip it", danger: true, test: "skip-dialog" },
      );
      if (!ok) return;
    }
    b.disabled = true;
    try {
      await api(`/webhooks/${hook.id}/deliveries/${k.delivery_id}/${action}`, { method: "POST" });
      toast(action === "skip" ? `Skipped delivery #${k.delivery_id}: key ${k.key} moves on` : `Delivery #${k.delivery_id} queued again`, "ok");
      await this.refresh();
    } catch (err) {
      b.disabled = false;
      toast(err.message, "bad");
    }
  }

  renderPager(data) {
    const pager = $("deliveries-pager");
    const from = data.total ? data.offset + 1 : 0;
    const to = Math.min(data.offset + data.items.length, data.total);
    const newer = button("← Newer", { cls: "small", test: "page-newer" });
    newer.disabled = data.offset === 0;
    newer.addEventListener("click", () => {
      this.offset = Math.max(0, this.offset - PAGE);
      this.refresh();
    });
    const older = button("Older →", { cls: "small", test: "page-older" });
    older.disabled = to >= data.total;
    older.addEventListener("click", () => {
      this.offset += PAGE;
      this.refresh();
    });
    const note = el("span", "muted", data.total ? `${from.toLocaleString()}–${to.toLocaleString()} of ${data.total.toLocaleString()}, newest first` : "");
    pager.replaceChildren(newer, note, older);
  }

  // --- write actions -------------------------------------------------------------------

  async create() {
    const hook = await webhookForm(null);
    if (!hook) return;
    await showSecret(hook);
    this.ctx.navigate(`#/webhooks/${hook.id}`);
    await this.refresh();
  }

  async edit(hook) {
    const updated = await webhookForm(hook);
    if (updated) {
      toast(`Saved ${updated.name}`, "ok");
      await this.refresh();
    }
  }

  async toggle(hook) {
    try {
      await api(`/webhooks/${hook.id}`, { method: "PATCH", body: { is_active: !hook.is_active } });
      toast(hook.is_active ? `${hook.name} paused: deliveries wait until it is active` : `${hook.name} is active`, "ok");
      await this.refresh();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async sendTest(hook) {
    try {
      const d = await api(`/webhooks/${hook.id}/test`, { method: "POST" });
      toast(`Test event sent to ${hook.name} (delivery #${d.id})`, "ok");
      this.status = "";
      this.offset = 0;
      await this.refresh();
    } catch (err) {
      toast(err instanceof ApiError && err.status === 409 ? `${err.message}` : err.message, "bad");
    }
  }

  async retry(hook, d, b) {
    b.disabled = true;
    b.textContent = "…";
    try {
      await api(`/webhooks/${hook.id}/deliveries/${d.id}/retry`, { method: "POST" });
      b.textContent = "queued";
      setTimeout(() => this.refresh(), 500);
    } catch (err) {
      b.disabled = false;
      b.textContent = "Retry";
      toast(err.message, "bad");
    }
  }

  async rotate(hook) {
    const rotated = await rotateDialog(hook);
    if (!rotated) return;
    await showSecret(rotated, { rotation: rotated.rotation });
    await this.refresh();
  }

  async replay(hook) {
    const done = await replayDialog(hook, { firstFailure: await this.firstFailure(hook) });
    if (done) {
      this.status = "";
      this.offset = 0;
      for (const t of $("delivery-tabs").children) t.setAttribute("aria-selected", String(t.dataset.status === ""));
      await this.refresh();
    }
  }

  // The time of the oldest event among the failed deliveries of the current
  // failure streak (since failing_since, when the webhook has one): where a
  // replay "since the first failure" starts. Event time, not delivery time:
  // a replay by time selects events by when they were written.
  async firstFailure(hook) {
    try {
      const page = await api(`/webhooks/${hook.id}/deliveries?status=failed&order=desc&limit=200`);
      const since = hook.failing_since ? Date.parse(hook.failing_since) : -Infinity;
      const times = (page.items || [])
        .filter((d) => d.event_created_at && Date.parse(d.updated_at) >= since)
        .map((d) => d.event_created_at)
        .sort();
      return times[0] || null;
    } catch {
      return null;
    }
  }

  async remove(hook) {
    const msg = [
      el("p", "", `Delete ${hook.name} (${hook.url})?`),
      el("p", "muted", "Its delivery history and attempts are deleted with it. To keep them, pause the webhook instead."),
    ];
    if (!(await confirmDialog("Delete webhook", msg, { confirm: "Delete webhook", danger: true, test: "delete-dialog" }))) return;
    try {
      await api(`/webhooks/${hook.id}`, { method: "DELETE" });
      toast(`Deleted ${hook.name}`, "ok");
      this.ctx.navigate("#/webhooks");
      this.selectedId = null;
      await this.refresh();
    } catch (err) {
      toast(err.message, "bad");
    }
  }
}

function hookState(h) {
  if (h.is_active) return badge("active", "ok");
  return badge(h.disabled_reason ? "disabled" : "paused", h.disabled_reason ? "bad" : "off");
}
