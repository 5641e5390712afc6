// What opens in the drawer: an event (payload, key, traceparent, its
// deliveries per webhook) and a delivery (its attempts: request headers
// with signatures redacted, response status, headers and capped body,
// timings, the next retry; "Retry now").

import { api } from "./api.js";
import { section } from "./drawer.js";
import { category } from "./events.js";
import {
  button,
  copyButton,
  el,
  facts,
  mono,
  pretty,
  reconcile,
  relTime,
  statusBadge,
  toast,
  when,
} from "./ui.js";

// --- an event --------------------------------------------------------------------------

export function eventPage(ev, ctx) {
  const title = el("span", `dtitle c-${category(ev.type)}`);
  title.append(el("span", "ev-type", ev.type), el("span", "muted", ` #${ev.id}`));
  let table = null;
  let empty = null;
  return {
    title,
    async render(body) {
      const trace = ev.traceparent ? traceFacts(ev.traceparent) : null;
      const cursor = el("div", "copyable inline");
      cursor.append(mono(ev.cursor || "—", "cut"), copyButton(() => ev.cursor || "", "Copy", "copy-cursor"));
      const rows = [
        ["time", when(ev.timestamp)],
        ["key", ev.key ? mono(ev.key) : el("span", "muted", "none")],
        ["traceparent", trace || el("span", "muted", "none")],
        ["cursor", cursor],
      ];
      const payload = el("div", "copyable");
      const pre = el("pre", "payload", pretty(ev.payload));
      pre.dataset.test = "event-payload";
      payload.append(copyButton(() => pretty(ev.payload), "Copy JSON"), pre);
      const parts = [facts(rows), section("Payload", payload)];
      if (ctx.canSeeDeliveries) {
        table = el("table", "grid deliveries-of-event");
        table.dataset.test = "event-deliveries";
        const thead = el("thead");
        const tr = el("tr");
        for (const h of ["webhook", "status", "tries", "HTTP", "updated"]) tr.append(el("th", "", h));
        thead.append(tr);
        table.append(thead, el("tbody"));
        empty = el("p", "muted", "");
        empty.hidden = true;
        parts.push(section("Deliveries", table, empty));
      }
      body.replaceChildren(...parts);
      if (table) await this.refresh();
    },
    async refresh() {
      if (!table) return;
      const data = await api(`/events/${ev.id}/deliveries`);
      const items = data.items || [];
      empty.hidden = items.length > 0;
      empty.textContent = "No webhook receives this event (or its deliveries were removed by retention).";
      table.hidden = !items.length;
      reconcile(table.tBodies[0], items, (d) => d.id, (d) => {
        const tr = el("tr", "clickable");
        tr.dataset.openable = "";
        tr.tabIndex = 0;
        const name = el("td");
        name.append(el("span", "", d.webhook_name));
        if (d.replay) name.append(el("span", "tag", `replay ${d.replay}`));
        const st = el("td");
        st.append(statusBadge(d.status));
        tr.append(name, st, el("td", "num", d.attempt_number), el("td", "num", d.response_status ?? "—"));
        const t = el("td");
        t.append(relTime(d.delivered_at || d.updated_at));
        tr.append(t);
        const go = () => ctx.drawer.push(deliveryPage(d, d.webhook_name, ctx));
        tr.addEventListener("click", go);
        tr.addEventListener("keydown", (e) => e.key === "Enter" && go());
        return tr;
      });
    },
  };
}

function traceFacts(tp) {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(tp);
  const box = el("div", "copyable inline");
  box.append(mono(tp, "cut"), copyButton(tp, "Copy"));
  if (m) box.title = `trace ${m[1]}, parent span ${m[2]}`;
  return box;
}

// --- a delivery ------------------------------------------------------------------------

export function deliveryPage(d, webhookName, ctx) {
  const title = el("span", "dtitle");
  title.append(el("span", "", `Delivery #${d.id}`), el("span", "muted", ` · ${webhookName}`));
  let delivery = d;
  let summary = null;
  let list = null;
  let retry = null;
  return {
    title,
    async render(body) {
      summary = el("div");
      list = el("div", "attempts");
      list.dataset.test = "attempts";
      const head = el("div", "dactions");
      if (ctx.canWrite) {
        retry = button("Retry now", { cls: d.status === "failed" ? "primary write" : "write", test: "retry-now" });
        retry.addEventListener("click", () => this.retry());
        head.append(retry);
      }
      body.replaceChildren(summary, head, section("Attempts", list));
      await this.refresh();
    },
    async refresh() {
      const [fresh, attempts] = await Promise.all([
        findDelivery(delivery),
        api(`/webhooks/${delivery.webhook_id}/deliveries/${delivery.id}/attempts`),
      ]);
      if (fresh) delivery = fresh;
      summary.replaceChildren(deliveryFacts(delivery));
      renderAttempts(list, attempts.items || [], delivery);
    },
    async retry() {
      retry.disabled = true;
      try {
        delivery = await api(`/webhooks/${delivery.webhook_id}/deliveries/${delivery.id}/retry`, { method: "POST" });
        toast(`Delivery #${delivery.id} queued again`, "ok");
        ctx.onChanged?.();
        await this.refresh();
      } catch (err) {
        toast(err.message, "bad");
      } finally {
        retry.disabled = false;
      }
    },
  };
}

// The list endpoint is the only read of a delivery: find it among the newest.
async function findDelivery(d) {
  try {
    const page = await api(`/webhooks/${d.webhook_id}/deliveries?order=desc&limit=200`);
    return (page.items || []).find((x) => x.id === d.id) || null;
  } catch {
    return null;
  }
}

function deliveryFacts(d) {
  const status = el("span", "inline");
  status.append(statusBadge(d.status));
  if (d.replay) status.append(el("span", "tag", `replay ${d.replay}`));
  const next = d.status === "pending" && d.next_retry_at ? relTime(d.next_retry_at) : null;
  const rows = [
    ["status", status],
    ["event", mono(`${d.event_type} #${d.event_id}`)],
    ["attempts", String(d.attempt_number)],
    ["next retry", next || (d.status === "pending" ? "due now" : "—")],
    ["created", when(d.created_at)],
    ["delivered", d.delivered_at ? when(d.delivered_at) : "—"],
    ["last HTTP status", d.response_status ?? "—"],
  ];
  const box = el("div");
  box.append(facts(rows));
  if (d.error_message) box.append(el("p", "callout bad", d.error_message));
  return box;
}

function renderAttempts(list, items, d) {
  if (!items.length) {
    list.replaceChildren(el("p", "muted", d.status === "pending" ? "Not attempted yet: due now." : "No attempts recorded."));
    return;
  }
  const openNow = new Set([...list.querySelectorAll("details[open]")].map((x) => x.dataset.id));
  const newest = items[items.length - 1].id;
  const nodes = [...items].reverse().map((a) => {
    const det = el("details", `attempt o-${a.outcome}`);
    det.dataset.id = String(a.id);
    if (openNow.size ? openNow.has(String(a.id)) : a.id === newest) det.open = true;
    const sum = el("summary");
    const ok = a.outcome === "success";
    sum.append(
      el("span", "anum", `#${a.attempt_number}`),
      statusBadge(ok ? "success" : a.outcome === "retry" ? "retry" : "failed"),
      el("span", "mono", a.response_status ? `HTTP ${a.response_status}` : a.error_class || "no response"),
      el("span", "muted", `${Number(a.duration_ms).toFixed(1)} ms`),
      el("span", "muted grow", when(a.started_at)),
    );
    det.append(sum);
    if (a.error_message) det.append(el("p", "callout bad", `${a.error_class ? `${a.error_class}: ` : ""}${a.error_message}`));
    det.append(headerTable("Request headers", a.request_headers, "signatures redacted"));
    det.append(headerTable("Response headers", a.response_headers, ""));
    const bodyBox = el("div", "copyable");
    const text = a.response_body ?? "";
    bodyBox.append(el("h4", "", "Response body"), el("pre", "payload small", text || "(empty)"));
    if (text) bodyBox.append(el("p", "muted hint", "Stored up to the response body cap (OUTBOX_RESPONSE_BODY_CAP)."));
    det.append(bodyBox);
    return det;
  });
  list.replaceChildren(...nodes);
}

function headerTable(title, headers, note) {
  const box = el("div", "hdrs");
  const h = el("h4", "", title);
  if (note) h.append(el("span", "muted", ` · ${note}`));
  box.append(h);
  if (!headers || !Object.keys(headers).length) {
    box.append(el("p", "muted", headers ? "none" : "not recorded for this attempt"));
    return box;
  }
  const t = el("table", "kv");
  for (const [k, v] of Object.entries(headers).sort(([a], [b]) => a.localeCompare(b))) {
    const tr = el("tr");
    tr.append(el("th", "mono", k), el("td", `mono${v === "[redacted]" ? " redacted" : ""}`, v));
    t.append(tr);
  }
  box.append(t);
  return box;
}
