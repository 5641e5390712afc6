// The REST API with the token: `Authorization: Bearer` on every call.
// Errors keep what the API said: status, detail and, for a 422, the
// fields it names (`errors: [{field, message}]`), so forms can show each
// message next to its field.

const TOKEN_KEY = "outbox.token";

export class ApiError extends Error {
  constructor(status, detail, errors = []) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    this.errors = errors;
  }

  // The message for one field ("url", "event_types.0" counts as "event_types").
  forField(name) {
    return this.errors
      .filter((e) => e.field === name || e.field.startsWith(`${name}.`))
      .map((e) => e.message)
      .join("; ");
  }
}

export class Unauthorized extends ApiError {}

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
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message || err})`);
  }
  if (res.ok) return res.status === 204 ? null : res.json();
  const data = await res.json().catch(() => ({}));
  const detail = typeof data.detail === "string" ? data.detail : res.statusText;
  const errors = Array.isArray(data.errors) ? data.errors : [];
  if (res.status === 401) throw new Unauthorized(401, detail || "Unauthorized");
  throw new ApiError(res.status, detail, errors);
}
