// The /ws connection: connect, follow the cursor, reconnect and resume.
//
// The cursor starts as the history's `next_cursor` (GET /events?order=desc),
// so the live feed continues exactly where the history ended: no gap, no
// repeat. Afterwards it is that of the last event processed. Reconnecting
// with ?since=CURSOR makes the server replay everything after it, so
// nothing is lost; repeats (same id) are dropped by the caller.

const PING_EVERY_MS = 25000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];

export class Feed {
  constructor({ url, token, onEvent, onState, onNotice, onUnauthorized }) {
    this.url = url;
    this.token = token;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onNotice = onNotice;
    this.onUnauthorized = onUnauthorized;
    this.cursor = null;
    this.ws = null;
    this.failures = 0;
    this.stopped = true;
    this.timer = null;
    this.pinger = null;
  }

  start(cursor) {
    this.stop();
    this.stopped = false;
    if (cursor) this.cursor = cursor;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }

  wsUrl() {
    const q = new URLSearchParams({ token: this.token() });
    if (this.cursor) q.set("since", this.cursor);
    return `${this.url}?${q}`;
  }

  connect() {
    clearTimeout(this.timer);
    this.onState(this.failures ? "resuming" : "connecting", this.failures ? "resuming…" : "connecting…");
    let opened = false;
    let closeInfo = null;
    const ws = new WebSocket(this.wsUrl());
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (msg) => {
      let data;
      try {
        data = JSON.parse(msg.data);
      } catch {
        return;
      }
      this.handle(data, (info) => (closeInfo = info));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      clearInterval(this.pinger);
      this.ws = null;
      if (this.stopped) return;
      if (ev.code === 1008 && /unauthori[sz]ed/i.test(ev.reason)) {
        this.onState("unauthorized", "token rejected");
        this.onUnauthorized();
        return;
      }
      if (closeInfo === "expired") this.cursor = null;
      if (!opened) this.failures += 1;
      else this.failures = Math.max(1, this.failures);
      this.scheduleReconnect(ev, opened);
    };
  }

  handle(data, setCloseInfo) {
    switch (data.type) {
      case "connection":
        this.failures = 0;
        if (!this.cursor && data.cursor) this.cursor = data.cursor;
        this.onState("live", "live");
        clearInterval(this.pinger);
        this.pinger = setInterval(() => {
          if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send('{"type":"ping"}');
        }, PING_EVERY_MS);
        return;
      case "pong":
      case "subscribed":
        return;
      case "error":
        if (data.code === "cursor_expired") {
          setCloseInfo("expired");
          this.onNotice("The page was away longer than the retention window: events older than it are gone. Continuing from now.");
        } else {
          this.onNotice(`Server: ${data.message || "error"}`);
        }
        return;
      default:
        if (typeof data.id === "number" && "payload" in data) {
          this.onEvent(data);
          if (data.cursor) this.cursor = data.cursor;
        }
    }
  }

  scheduleReconnect(ev, opened) {
    const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    const jittered = Math.round(delay * (0.8 + Math.random() * 0.4));
    const why = ev.code === 1013 ? "the page fell behind; " : "";
    this.onState("reconnecting", `${why}reconnecting in ${(jittered / 1000).toFixed(1)} s`);
    // A refused handshake (HTTP 403) looks like any network error: after a
    // few, ask the REST API whether the token is the problem.
    if (!opened && this.failures === 2) this.onUnauthorized(true);
    this.timer = setTimeout(() => this.connect(), jittered);
  }
}
