// The HTTP API: JSON over fetch, with the bearer token when the server asks for one.

const TOKEN_KEY = "genstream.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let askForToken = async () => {
  throw new ApiError(401, "unauthorized", "a token is required");
};
// One question for every request that got a 401 at the same time.
let pendingToken = null;

export function onTokenNeeded(ask) {
  askForToken = ask;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// A page that embeds genstream with a scoped token, which expires, sets
//   window.genstreamTokenSource = async () => (await fetch("/my-app/genstream-token")).text();
// and then a fresh token is fetched before a stream is reopened and after any 401,
// instead of asking the person (README "Scoped tokens").
function tokenSource() {
  return typeof window.genstreamTokenSource === "function" ? window.genstreamTokenSource : null;
}

export async function refreshToken() {
  const source = tokenSource();
  if (!source) return;
  const value = await source();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
}

function obtainToken(rejected) {
  const source = tokenSource();
  pendingToken ??= (source ? source() : askForToken(rejected))
    .then((value) => {
      sessionStorage.setItem(TOKEN_KEY, value);
      return value;
    })
    .finally(() => {
      pendingToken = null;
    });
  return pendingToken;
}

export function segment(value) {
  return encodeURIComponent(value);
}

export function filePath(path) {
  return path.split("/").map(segment).join("/");
}

// EventSource cannot send headers: the server also takes ?token= on stream routes.
export function withToken(url) {
  const value = token();
  if (!value) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(value)}`;
}

export async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const sent = token();
    if (sent) headers.Authorization = `Bearer ${sent}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => null);
    if (response.status === 401 && data?.error?.code === "unauthorized") {
      sessionStorage.removeItem(TOKEN_KEY);
      // Expired or not valid (a 401), unlike a 403 below: ask for another. Waits for the
      // person; each answer is tried once, so this loop moves at their pace.
      await obtainToken(Boolean(sent));
      continue;
    }
    if (!response.ok) {
      const error = data?.error ?? {};
      let message = error.message ?? response.statusText;
      if (response.status === 403) {
        // A valid token, for something outside what it grants: asking again would not help.
        message = `Not allowed with this token (outside its scope): ${message}`;
      }
      throw new ApiError(response.status, error.code ?? "http_error", message);
    }
    return data;
  }
}
