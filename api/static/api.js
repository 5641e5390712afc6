// The REST API with the token: `Authorization: Bearer` on every call.

const TOKEN_KEY = "outbox.token";

export class Unauthorized extends Error {}

export const token = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  },
  set(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
  // `outbox demo` prints a link with #token=...: take it, then drop it from
  // the address bar so it is not left in the history or a screenshot.
  fromHash() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!m) return false;
    this.set(decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  },
};

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${token.get()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (res.status === 401) throw new Unauthorized((await detail(res)) || "Unauthorized");
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${(await detail(res)) || res.statusText}`);
  if (res.status === 204) return null;
  return res.json();
}

async function detail(res) {
  try {
    const data = await res.json();
    return typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
  } catch {
    return "";
  }
}
