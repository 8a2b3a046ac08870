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

function obtainToken(rejected) {
  pendingToken ??= askForToken(rejected)
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
      // Waits for the person; each answer is tried once, so this loop moves at their pace.
      await obtainToken(Boolean(sent));
      continue;
    }
    if (!response.ok) {
      const error = data?.error ?? {};
      throw new ApiError(response.status, error.code ?? "http_error", error.message ?? response.statusText);
    }
    return data;
  }
}
