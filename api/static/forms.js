// Dialogs for the write actions: create/edit a webhook, the secret shown
// once, confirm, rotate the secret, replay a range. Each is a call to the
// REST API; a 422's messages appear next to the field they name.

import { api, ApiError } from "./api.js";
import { button, copyButton, el, mono, toast } from "./ui.js";

// A modal <dialog> built for one use and removed when closed.
function dialog(title, { wide = false, test } = {}) {
  const d = el("dialog", wide ? "wide" : "");
  if (test) d.dataset.test = test;
  const form = el("form");
  form.method = "dialog";
  form.noValidate = true;
  const head = el("div", "dhead");
  head.append(el("h2", "", title));
  const x = button("×", { cls: "ghost icon", title: "Close" });
  x.addEventListener("click", () => d.close());
  head.append(x);
  const body = el("div", "dbody");
  const actions = el("div", "actions");
  form.append(head, body, actions);
  d.append(form);
  d.addEventListener("close", () => d.remove());
  document.body.append(d);
  return { d, form, body, actions };
}

// A labelled field with a slot for its error: {wrap, input, error}.
function field(label, input, { hint, name } = {}) {
  const wrap = el("div", "field");
  const id = `f-${name || label.replace(/\W+/g, "-").toLowerCase()}-${Math.random().toString(36).slice(2, 7)}`;
  input.id = id;
  if (name) input.name = name;
  const l = el("label", "", label);
  l.htmlFor = id;
  const error = el("p", "ferror");
  error.hidden = true;
  if (name) error.dataset.errorFor = name;
  wrap.append(l, input);
  if (hint) wrap.append(el("p", "hint", hint));
  wrap.append(error);
  return { wrap, input, error };
}

function input(type = "text", value = "", placeholder = "") {
  const i = el("input");
  i.type = type;
  i.value = value ?? "";
  if (placeholder) i.placeholder = placeholder;
  i.autocomplete = "off";
  i.spellcheck = false;
  return i;
}

function select(options, value) {
  const s = el("select");
  for (const [v, label] of options) {
    const o = el("option", "", label);
    o.value = v;
    if (v === value) o.selected = true;
    s.append(o);
  }
  return s;
}

// Fields the API may name differently from the form (the seed's singular).
const ALIASES = { event_type: "event_types" };

// Show an ApiError on the fields it names; the rest in `general`.
function showErrors(err, fields, general) {
  for (const f of Object.values(fields)) {
    f.error.hidden = true;
    f.wrap.classList.remove("invalid");
  }
  let rest = err instanceof ApiError && err.errors.length ? "" : err.message;
  if (err instanceof ApiError) {
    for (const e of err.errors) {
      const base = e.field.split(".")[0];
      const f = fields[base] || fields[ALIASES[base]];
      if (f) {
        // A field the form offers but this server does not know yet.
        const msg = e.message === "unknown field" ? "unknown field: this server does not support it yet" : e.message;
        f.error.textContent = f.error.hidden ? msg : `${f.error.textContent}; ${msg}`;
        f.error.hidden = false;
        f.wrap.classList.add("invalid");
      } else {
        rest += `${rest ? "; " : ""}${e.field ? `${e.field}: ` : ""}${e.message}`;
      }
    }
  }
  general.textContent = rest;
  general.hidden = !rest;
  const first = Object.values(fields).find((f) => !f.error.hidden);
  if (first) first.input.focus();
}

function generalError() {
  const p = el("p", "callout bad");
  p.hidden = true;
  p.dataset.test = "form-error";
  return p;
}

// --- the webhook form -------------------------------------------------------------------

// hook: null to create; returns the created/updated webhook (or null if cancelled).
export function webhookForm(hook) {
  return new Promise((resolve) => {
    const editing = Boolean(hook);
    const { d, form, body, actions } = dialog(editing ? `Edit ${hook.name}` : "New webhook", { wide: true, test: "webhook-form" });
    const types = (hook?.event_types || ["*"]).join(", ");
    const fields = {
      name: field("Name", input("text", hook?.name || "", "crm sync"), { name: "name" }),
      url: field("Endpoint URL", input("url", hook?.url || "", "the receiver's http(s) URL"), {
        name: "url",
        hint: "http(s) only; private and loopback addresses are refused unless OUTBOX_WEBHOOK_ALLOW_NETWORKS allows them.",
      }),
      event_types: field("Event types", input("text", types, "* or ticket.*, user.created"), {
        name: "event_types",
        hint: "Exact types, prefix.* or *, comma-separated.",
      }),
      payload_format: field("Payload", select([["raw", "raw: the event payload"], ["envelope", "envelope: {id, type, timestamp, key, data}"]], hook?.payload_format || "raw"), { name: "payload_format" }),
      ordering: field("Ordering", select([["none", "none: deliver as soon as possible"], ["key", "key: one at a time per event key, in order"]], hook?.ordering || "none"), {
        name: "ordering",
        hint: "With key ordering, delivery n+1 of a key waits until delivery n succeeded or failed.",
      }),
      headers: headersField(hook?.headers || {}),
      description: field("Description", input("text", hook?.description || "", "optional"), { name: "description" }),
      is_active: activeField(hook ? hook.is_active : true),
    };
    const general = generalError();
    body.append(general, ...Object.values(fields).map((f) => f.wrap));
    const cancel = button("Cancel", { cls: "ghost" });
    cancel.addEventListener("click", () => d.close());
    const save = el("button", "primary", editing ? "Save changes" : "Create webhook");
    save.type = "submit";
    save.dataset.test = "webhook-save";
    actions.append(cancel, save);
    let result = null;
    d.addEventListener("close", () => resolve(result));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const payload = collect(fields, hook);
      if (editing && !Object.keys(payload).length) return d.close();
      save.disabled = true;
      try {
        result = editing
          ? await api(`/webhooks/${hook.id}`, { method: "PATCH", body: payload })
          : await api("/webhooks", { method: "POST", body: payload });
        d.close();
      } catch (err) {
        showErrors(err, fields, general);
      } finally {
        save.disabled = false;
      }
    });
    d.showModal();
    fields[editing ? "url" : "name"].input.focus();
  });
}

function activeField(active) {
  const wrap = el("div", "field check");
  const i = input("checkbox");
  i.checked = active;
  i.id = `f-active-${Math.random().toString(36).slice(2, 7)}`;
  const l = el("label", "", "Active: deliver events to this endpoint");
  l.htmlFor = i.id;
  const error = el("p", "ferror");
  error.hidden = true;
  wrap.append(i, l, error);
  return { wrap, input: i, error };
}

// Custom request headers as name/value rows.
function headersField(headers) {
  const wrap = el("div", "field");
  const l = el("label", "", "Custom headers");
  const rows = el("div", "hrows");
  const error = el("p", "ferror");
  error.hidden = true;
  const add = (name = "", value = "") => {
    const r = el("div", "hrow");
    const n = input("text", name, "X-Name");
    n.className = "hname";
    const v = input("text", value, "value");
    v.className = "hvalue";
    const rm = button("Remove", { cls: "small ghost" });
    rm.addEventListener("click", () => r.remove());
    r.append(n, v, rm);
    rows.append(r);
    return n;
  };
  for (const [k, v] of Object.entries(headers)) add(k, v);
  const more = button("Add header", { cls: "small", test: "add-header" });
  more.addEventListener("click", () => add().focus());
  wrap.append(l, rows, more, el("p", "hint", "Sent with every request. Not hop-by-hop, Content-* or signature headers."), error);
  const inputEl = {
    focus: () => (rows.querySelector("input") || more).focus(),
    get value() {
      const out = {};
      for (const r of rows.children) {
        const k = r.querySelector(".hname").value.trim();
        if (k) out[k] = r.querySelector(".hvalue").value;
      }
      return out;
    },
  };
  return { wrap, input: inputEl, error };
}

// The body: on create every field that is set (ordering and headers only
// when used, so an API without them still creates); on edit only changes.
function collect(f, hook) {
  const types = f.event_types.input.value.split(/[\s,]+/).filter(Boolean);
  const out = {
    name: f.name.input.value.trim(),
    url: f.url.input.value.trim(),
    event_types: types,
    payload_format: f.payload_format.input.value,
    ordering: f.ordering.input.value,
    headers: f.headers.input.value,
    description: f.description.input.value.trim() || null,
    is_active: f.is_active.input.checked,
  };
  if (!hook) {
    if (out.ordering === "none") delete out.ordering;
    if (!Object.keys(out.headers).length) delete out.headers;
    if (!out.description) delete out.description;
    return out;
  }
  const before = {
    name: hook.name,
    url: hook.url,
    event_types: hook.event_types,
    payload_format: hook.payload_format,
    ordering: hook.ordering || "none",
    headers: hook.headers || {},
    description: hook.description || null,
    is_active: hook.is_active,
  };
  for (const k of Object.keys(out)) {
    if (JSON.stringify(out[k]) === JSON.stringify(before[k])) delete out[k];
  }
  return out;
}

// --- the secret, shown once ---------------------------------------------------------------

export function showSecret(hook, { rotation } = {}) {
  return new Promise((resolve) => {
    const { d, body, actions } = dialog(rotation ? "New signing secret" : "Webhook created", { test: "secret-dialog" });
    body.append(el("p", "", rotation ? `The new secret of ${hook.name}.` : `${hook.name} is ready. Its signing secret:`));
    const box = el("div", "copyable secret");
    const code = mono(hook.secret);
    code.dataset.test = "secret";
    box.append(code, copyButton(hook.secret, "Copy", "copy-secret"));
    body.append(box, el("p", "callout warn", "This is the only time the secret is shown. Store it with the receiver now; later you can only rotate it."));
    if (rotation) {
      const ul = el("ul", "rotation");
      ul.append(
        li("webhook-signature", rotation.webhook_signature),
        li("X-Webhook-Signature", rotation.x_webhook_signature),
      );
      body.append(el("h4", "", "When each signature header switches"), ul);
    }
    const ok = button("I have stored it", { cls: "primary", test: "secret-done" });
    ok.addEventListener("click", () => d.close());
    actions.append(ok);
    d.addEventListener("close", () => resolve());
    d.showModal();
  });
}

function li(name, text) {
  const item = el("li");
  item.append(mono(name), el("span", "", ` ${text}`));
  return item;
}

// --- confirm ------------------------------------------------------------------------------

export function confirmDialog(title, message, { confirm = "Confirm", danger = false, test } = {}) {
  return new Promise((resolve) => {
    const { d, body, actions } = dialog(title, { test: test || "confirm-dialog" });
    body.append(...(Array.isArray(message) ? message : [el("p", "", message)]));
    const no = button("Cancel", { cls: "ghost" });
    const yes = button(confirm, { cls: danger ? "danger" : "primary", test: "confirm" });
    let answer = false;
    no.addEventListener("click", () => d.close());
    yes.addEventListener("click", () => {
      answer = true;
      d.close();
    });
    actions.append(no, yes);
    d.addEventListener("close", () => resolve(answer));
    d.showModal();
    yes.focus();
  });
}

// --- rotate the secret --------------------------------------------------------------------

export function rotateDialog(hook) {
  return new Promise((resolve) => {
    const { d, form, body, actions } = dialog(`Rotate the secret of ${hook.name}`, { test: "rotate-dialog" });
    const fields = {
      overlap_seconds: field("Overlap", select([["86400", "24 hours (default)"], ["3600", "1 hour"], ["604800", "7 days"], ["0", "none: the old secret stops now"]], "86400"), {
        name: "overlap_seconds",
        hint: "While it lasts the old secret still signs, so receivers switch at their own pace.",
      }),
      seed_signature: field("X-Webhook-Signature during the overlap", select([["old", "old secret, until the overlap ends (seed receivers keep working)"], ["new", "new secret, from now"]], "old"), {
        name: "seed_signature",
        hint: "webhook-signature (Standard Webhooks) carries both signatures during the overlap either way.",
      }),
    };
    const general = generalError();
    body.append(general, fields.overlap_seconds.wrap, fields.seed_signature.wrap);
    const no = button("Cancel", { cls: "ghost" });
    no.addEventListener("click", () => d.close());
    const go = el("button", "primary", "Rotate secret");
    go.type = "submit";
    go.dataset.test = "rotate-go";
    actions.append(no, go);
    let result = null;
    d.addEventListener("close", () => resolve(result));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      go.disabled = true;
      try {
        result = await api(`/webhooks/${hook.id}/rotate-secret`, {
          method: "POST",
          body: {
            overlap_seconds: Number(fields.overlap_seconds.input.value),
            seed_signature: fields.seed_signature.input.value,
          },
        });
        d.close();
      } catch (err) {
        showErrors(err, fields, general);
      } finally {
        go.disabled = false;
      }
    });
    d.showModal();
  });
}

// --- replay a range -----------------------------------------------------------------------

function localInput(iso) {
  // <input type=datetime-local> wants local time without a zone.
  if (!iso) return "";
  const t = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
}

function isoOf(local) {
  return local ? new Date(local).toISOString() : null;
}

// suggest: {since: ISO time of the first failure, label}
export function replayDialog(hook, { firstFailure } = {}) {
  return new Promise((resolve) => {
    const { d, form, body, actions } = dialog(`Replay events to ${hook.name}`, { wide: true, test: "replay-dialog" });
    body.append(el("p", "muted", "Sends a new delivery of every event in the range that this webhook subscribes to — also of those already delivered. Count first, then confirm."));
    const mode = select([["time", "a time range"], ["cursor", "a cursor range (from an event's cursor)"]], "time");
    const modeField = field("Range by", mode);
    const sinceT = field("From (inclusive)", input("datetime-local", localInput(firstFailure || new Date(Date.now() - 3600e3).toISOString())), { name: "since" });
    sinceT.input.step = "1";
    const untilT = field("Until (exclusive, empty: now)", input("datetime-local", ""), { name: "until" });
    untilT.input.step = "1";
    const sinceC = field("After cursor", input("text", "", "the cursor of the last event the receiver got"), { name: "since" });
    const untilC = field("Up to cursor (empty: now)", input("text", ""), { name: "until" });
    const presets = el("div", "presets");
    const preset = (label, iso, test) => {
      const b = button(label, { cls: "small", test });
      b.addEventListener("click", () => {
        mode.value = "time";
        sync();
        sinceT.input.value = localInput(iso);
        untilT.input.value = "";
        reset();
      });
      presets.append(b);
    };
    if (firstFailure) preset("Since the first failure", firstFailure, "preset-failure");
    preset("Last hour", new Date(Date.now() - 3600e3).toISOString());
    preset("Last 24 hours", new Date(Date.now() - 86400e3).toISOString());
    const general = generalError();
    const count = el("p", "callout info");
    count.hidden = true;
    count.dataset.test = "replay-count";
    body.append(general, modeField.wrap, presets, sinceT.wrap, untilT.wrap, sinceC.wrap, untilC.wrap, count);
    const sync = () => {
      const byTime = mode.value === "time";
      sinceT.wrap.hidden = untilT.wrap.hidden = presets.hidden = !byTime;
      sinceC.wrap.hidden = untilC.wrap.hidden = byTime;
    };
    sync();
    const no = button("Cancel", { cls: "ghost" });
    no.addEventListener("click", () => d.close());
    const go = el("button", "primary", "Count events");
    go.type = "submit";
    go.dataset.test = "replay-go";
    actions.append(no, go);
    let counted = null; // the body that was counted
    let result = null;
    const reset = () => {
      counted = null;
      count.hidden = true;
      go.textContent = "Count events";
      go.classList.remove("danger");
    };
    for (const f of [sinceT, untilT, sinceC, untilC]) f.input.addEventListener("input", reset);
    mode.addEventListener("change", () => {
      sync();
      reset();
    });
    const request = () => {
      const byTime = mode.value === "time";
      const since = byTime ? isoOf(sinceT.input.value) : sinceC.input.value.trim();
      const until = byTime ? isoOf(untilT.input.value) : untilC.input.value.trim() || null;
      const b = { since: since || "" };
      if (until) b.until = until;
      return b;
    };
    const fieldsNow = () => (mode.value === "time" ? { since: sinceT, until: untilT } : { since: sinceC, until: untilC });
    d.addEventListener("close", () => resolve(result));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      go.disabled = true;
      try {
        if (!counted) {
          const b = request();
          const r = await api(`/webhooks/${hook.id}/replay`, { method: "POST", body: { ...b, dry_run: true } });
          showErrors({ message: "" }, fieldsNow(), general);
          count.hidden = false;
          if (!r.matched) {
            count.textContent = "No event in this range goes to this webhook.";
            return;
          }
          counted = b;
          count.textContent = `${r.matched.toLocaleString()} event${r.matched === 1 ? "" : "s"} in this range will be delivered again to ${hook.name} (${hook.url}).`;
          go.textContent = `Replay ${r.matched.toLocaleString()} event${r.matched === 1 ? "" : "s"}`;
          return;
        }
        result = await api(`/webhooks/${hook.id}/replay`, { method: "POST", body: counted });
        toast(`Replay queued: ${result.queued.toLocaleString()} new deliveries to ${hook.name}`, "ok");
        d.close();
      } catch (err) {
        showErrors(err, fieldsNow(), general);
      } finally {
        go.disabled = false;
      }
    });
    d.showModal();
  });
}
