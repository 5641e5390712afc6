// The side panel where an event or a delivery opens. A stack: an event's
// delivery opens on top of the event and "Back" returns to it. Each page
// may refresh itself while shown (pending deliveries move on).

import { $, button, el } from "./ui.js";

export class Drawer {
  constructor() {
    this.root = $("drawer");
    this.title = $("drawer-title");
    this.body = $("drawer-body");
    this.back = $("drawer-back");
    this.stack = [];
    this.timer = 0;
    $("drawer-close").addEventListener("click", () => this.close());
    this.back.addEventListener("click", () => this.pop());
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !this.root.hidden && !document.querySelector("dialog[open]")) this.close();
    });
    this.stale = $("drawer-stale");
    setInterval(() => this.refreshTop(), 3000);
  }

  // A refresh that fails (the server is gone, say) keeps what is shown and
  // says so; the next one tries again. Never an uncaught rejection.
  refreshTop() {
    const top = this.current;
    if (!top || !top.refresh || document.hidden || this.root.hidden) return;
    Promise.resolve()
      .then(() => top.refresh())
      .then(
        () => this.current === top && this.setStale(""),
        (err) => this.current === top && this.setStale(`Not refreshed: ${err.message || err}`),
      );
  }

  setStale(text) {
    this.stale.textContent = text;
    this.stale.hidden = !text;
  }

  // page: {title, render(body) -> Promise|void, refresh?}
  open(page, { replace = true } = {}) {
    if (replace) this.stack = [];
    this.stack.push(page);
    this.show();
  }

  push(page) {
    this.open(page, { replace: false });
  }

  pop() {
    this.stack.pop();
    if (this.stack.length) this.show();
    else this.close();
  }

  show() {
    const page = this.stack[this.stack.length - 1];
    this.root.hidden = false;
    document.body.classList.add("drawer-open");
    this.title.replaceChildren(...(page.title instanceof Node ? [page.title] : [el("span", "", page.title)]));
    this.back.hidden = this.stack.length < 2;
    this.setStale("");
    this.body.replaceChildren(el("p", "muted", "Loading…"));
    this.body.scrollTop = 0;
    Promise.resolve(page.render(this.body)).catch((err) => {
      this.body.replaceChildren(el("p", "error", err.message || String(err)));
    });
  }

  close() {
    this.stack = [];
    this.root.hidden = true;
    document.body.classList.remove("drawer-open");
    for (const s of document.querySelectorAll(".selected[data-openable]")) s.classList.remove("selected");
  }

  get current() {
    return this.stack[this.stack.length - 1];
  }
}

export function section(title, ...children) {
  const s = el("section", "dsec");
  const h = el("h3", "", title);
  s.append(h, ...children);
  return s;
}

export { button };
