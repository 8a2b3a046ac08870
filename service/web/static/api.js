// The HTTP API, through the client module (client/genstream.js, the one implementation the
// page shares with every app that embeds genstream): the page adds where its token lives
// (sessionStorage, gone when the tab closes) and who gives a new one.

import { ApiError, createClient, filePath, segment } from "./client/genstream.js";

export { ApiError, filePath, segment };

const TOKEN_KEY = "genstream.token";

let askForToken = async () => {
  throw new ApiError(401, "unauthorized", "a token is required");
};

export function onTokenNeeded(ask) {
  askForToken = ask;
}

// A page that embeds genstream with a scoped token, which expires, sets
//   window.genstreamTokenSource = async () => (await fetch("/my-app/genstream-token")).text();
// and then a fresh token is fetched before a stream is reopened and after any 401,
// instead of asking the person (README "Scoped tokens").
function embedderSource() {
  return typeof window.genstreamTokenSource === "function" ? window.genstreamTokenSource : null;
}

async function tokenSource({ reason, rejected }) {
  const source = embedderSource();
  if (reason === "unauthorized") sessionStorage.removeItem(TOKEN_KEY);
  // Without the embedder's source a reopen keeps the token; a 401 asks the person, whose
  // every answer is tried once (this moves at their pace).
  if (!source && reason === "reopen") return null;
  const value = source ? await source() : await askForToken(Boolean(rejected));
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  return value;
}

export const client = createClient({ token: sessionStorage.getItem(TOKEN_KEY), tokenSource });

async function explained(call) {
  try {
    return await call();
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      // A valid token, for something outside what it grants: asking again would not help.
      error.message = `Not allowed with this token (outside its scope): ${error.message}`;
    }
    throw error;
  }
}

export function api(method, path, body) {
  return explained(() => client.request(method, path, body));
}

// A submit whose answer is lost is sent again with the same client_request_id.
// `options`: the pipeline and its inputs (client.submit).
export function submitPrompt(projectId, prompt, options) {
  return explained(() => client.submit(projectId, prompt, options));
}
