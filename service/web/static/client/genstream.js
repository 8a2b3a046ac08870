// genstream's client: submit generations and follow a project's events, every event once.
//
// Dependency-free ES module, for browsers and Node (give Node an EventSource, such as the
// npm `eventsource` package's). The built-in page runs on it too: one implementation.
//
//   const client = createClient({ baseUrl: "/genstream", tokenSource: fetchToken });
//   const run = await client.generate(projectId, "a todo app", { onDelta: (text) => ... });
//   await run.done;                         // the generation.completed event
//   for await (const event of client.stream(projectId, { lastEventId })) { ... }
//
// How a feed stays exact (`Feed`): one EventSource on the project stream from a cursor;
// every event, streamed or polled, goes through `deliver`, which drops ids at or below the
// cursor and moves it. A dropped connection is resumed by the EventSource itself, with
// Last-Event-ID. An HTTP error (a proxy's 502 while genstream restarts, a 401 for an
// expired token) closes it for good (WHATWG HTML 9.2.3: a status other than 200 "fails the
// connection", and it does not reconnect): then a fresh token is asked for and a new
// EventSource opened from the cursor, after a backoff that doubles per failure in a row,
// each delay drawn at random in its upper half, so the clients one restart cut off do not
// all come back at once. After `pollAfterFailures` failures in a row it also polls
// `/events?after=` until a stream opens again.

import { EventType, STREAM_CURSOR, TERMINAL_TYPES } from "./protocol.js";

// A named SSE event reaches only the listeners of its name: one per type the log holds.
const EVENT_TYPES = Object.values(EventType);
const TERMINAL = new Set(TERMINAL_TYPES);
// A submit answered so (or not answered at all) is sent again, with the same
// client_request_id, so the server creates the generation at most once.
const RETRY_STATUSES = new Set([408, 429, 500, 502, 503, 504]);
// 401s in a row a request takes a fresh token for, each different from the refused one.
const MAX_TOKEN_TRIES = 10;

export const DEFAULTS = Object.freeze({
  reopenBaseMs: 1000, // a closed stream reopens after 0.5-1 s, doubled per failure ...
  reopenMaxMs: 10_000, // ... up to 5-10 s
  pollAfterFailures: 3, // stream failures in a row before polling /events too
  pollIntervalMs: 2000,
  pageLimit: 1000, // events per /events page
  pollPages: 20, // pages per poll at most; the rest comes on the next one
  submitRetries: 4, // submits sent again after the first
  submitRetryBaseMs: 500,
  submitRetryMaxMs: 5000,
});

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0: no answer (the network)
    this.code = code;
    this.field = field;
  }
}

// A generation that ended otherwise than completed: `code` is the failure's code, or
// "cancelled"; `event` the terminal event.
export class GenerationError extends Error {
  constructor(event) {
    const cancelled = event.type === EventType.GENERATION_CANCELLED;
    super(cancelled ? "the generation was cancelled" : event.message ?? "the generation failed");
    this.name = "GenerationError";
    this.code = cancelled ? "cancelled" : event.code ?? "failed";
    this.event = event;
  }
}

// The delay before the next try after `failures` failures in a row: the ceiling doubles
// from base up to max, and the delay is drawn from its upper half.
export function backoff(failures, baseMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, failures - 1));
  return ceiling * (0.5 + random() / 2);
}

export function newRequestId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

export function segment(value) {
  return encodeURIComponent(value);
}

export function filePath(path) {
  return path.split("/").map(segment).join("/");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function createClient(options = {}) {
  return new GenstreamClient(options);
}

export class GenstreamClient {
  // baseUrl: where genstream's /api is ("" for the page's own origin). token: the one to
  // send. tokenSource({reason, rejected}): an async function giving a fresh token, called
  // before a closed stream is reopened (reason "reopen") and after a 401 ("unauthorized",
  // `rejected` the refused token); a falsy answer keeps the token there is.
  constructor({
    baseUrl = "",
    token = null,
    tokenSource = null,
    fetch = globalThis.fetch?.bind(globalThis),
    EventSource = globalThis.EventSource,
    random = Math.random,
    ...tuning
  } = {}) {
    for (const name of Object.keys(tuning)) {
      if (!(name in DEFAULTS)) throw new TypeError(`createClient: ${name} is not an option`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = token || null;
    this.tokenSource = tokenSource;
    this.fetch = fetch;
    this.EventSource = EventSource;
    this.random = random;
    this.options = { ...DEFAULTS, ...tuning };
    this.pendingToken = null; // one fresh token for every caller that needs one at once
  }

  url(path) {
    return this.baseUrl + path;
  }

  // EventSource cannot send headers: genstream takes ?token= on its stream routes.
  streamUrl(path) {
    if (!this.token) return this.url(path);
    return `${this.url(path)}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(this.token)}`;
  }

  async freshToken(reason, rejected = null) {
    if (!this.tokenSource) return null;
    this.pendingToken ??= Promise.resolve()
      .then(() => this.tokenSource({ reason, rejected }))
      .then((value) => {
        if (value) this.token = value;
        return value || null;
      })
      .finally(() => {
        this.pendingToken = null;
      });
    return this.pendingToken;
  }

  // One JSON call: its answer's JSON (null for none).
  async request(method, path, body, options) {
    const response = await this.send(method, path, body, options);
    return response.json().catch(() => null);
  }

  // One call, its Response once ok. A 401 takes a fresh token from tokenSource and is
  // sent again, as long as the source gives one other than the token refused; any other
  // failure is an ApiError.
  async send(method, path, body, { signal, accept = "application/json" } = {}) {
    for (let tries = 0; ; tries += 1) {
      const headers = { Accept: accept };
      const sent = this.token;
      if (sent) headers.Authorization = `Bearer ${sent}`;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      let response;
      try {
        response = await this.fetch(this.url(path), {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal,
        });
      } catch (error) {
        if (error?.name === "AbortError") throw error;
        throw new ApiError(0, "network", `${method} ${path}: ${error?.message ?? error}`);
      }
      if (response.status === 401 && tries < MAX_TOKEN_TRIES && this.tokenSource) {
        const fresh = await this.freshToken("unauthorized", sent);
        if (fresh && fresh !== sent) continue;
      }
      if (!response.ok) {
        const error = (await response.json().catch(() => null))?.error ?? {};
        throw new ApiError(response.status, error.code ?? "http_error", error.message ?? response.statusText, error.field ?? null);
      }
      return response;
    }
  }

  // The project's files as a .zip, a Blob (genstream streams it: GET .../archive).
  async archive(projectId) {
    const response = await this.send("GET", `/api/projects/${segment(projectId)}/archive`, undefined, {
      accept: "application/zip",
    });
    return response.blob();
  }

  // POST the generation; a lost answer or a 5xx/429 is sent again with the same
  // client_request_id (the server answers a repeat with the generation it created).
  // `pipeline` names the pipeline that runs it (GET /api/pipelines; left out: the
  // project's default), `inputs` its inputs object (checked against its schema).
  async submit(projectId, prompt, { clientRequestId = newRequestId(), imageUrls, pipeline, inputs } = {}) {
    const body = { prompt, client_request_id: clientRequestId };
    if (imageUrls?.length) body.image_urls = imageUrls;
    if (pipeline) body.pipeline = pipeline;
    if (inputs && Object.keys(inputs).length) body.inputs = inputs;
    const { submitRetries, submitRetryBaseMs, submitRetryMaxMs } = this.options;
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.request("POST", `/api/projects/${segment(projectId)}/generations`, body);
      } catch (error) {
        const retriable = error instanceof ApiError && (error.status === 0 || RETRY_STATUSES.has(error.status));
        if (!retriable || attempt >= submitRetries) throw error;
        await sleep(backoff(attempt + 1, submitRetryBaseMs, submitRetryMaxMs, this.random));
      }
    }
  }

  cancel(generationId) {
    return this.request("POST", `/api/generations/${segment(generationId)}/cancel`);
  }

  // Submit, then follow the generation's events from its first to its end. Resolves, once
  // submitted, to {id, generation, userMessage, assistantMessage, created, cancel(), stop(),
  // done}: `done` resolves with generation.completed and rejects with a GenerationError
  // (failed or cancelled). An abort of `signal` cancels the generation (one aborted during
  // the submit is cancelled as soon as the submit answers: none is left running).
  async generate(projectId, prompt, handlers = {}) {
    const { clientRequestId, imageUrls, pipeline, inputs, signal } = handlers;
    if (signal?.aborted) throw signal.reason ?? new DOMException("aborted", "AbortError");
    let answer;
    try {
      answer = await this.submit(projectId, prompt, { clientRequestId, imageUrls, pipeline, inputs });
    } catch (error) {
      handlers.onError?.(error);
      throw error;
    }
    const id = answer.generation.id;
    let settle;
    const done = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    done.catch(() => {}); // reported through onError too: not unhandled when unawaited
    const onAbort = () => this.cancel(id).catch((error) => handlers.onError?.(error));
    const finish = () => {
      feed.stop();
      signal?.removeEventListener("abort", onAbort);
    };
    const feed = this.follow(projectId, {
      after: answer.generation.first_event_id - 1,
      onState: handlers.onState,
      onEvent: (event) => {
        if (event.generation_id !== id) return;
        route(event, handlers);
        if (!TERMINAL.has(event.type)) return;
        finish();
        if (event.type === EventType.GENERATION_COMPLETED) {
          handlers.onComplete?.(event);
          settle.resolve(event);
        } else {
          const error = new GenerationError(event);
          handlers.onError?.(error);
          settle.reject(error);
        }
      },
    });
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort();
    return {
      id,
      generation: answer.generation,
      userMessage: answer.user_message,
      assistantMessage: answer.assistant_message,
      created: answer.created,
      cancel: () => this.cancel(id),
      stop: finish, // stop following; the generation goes on
      done,
    };
  }

  // The project's events after `lastEventId` (none: from now on) as an async iterator, each
  // once and in order, across reconnects, until the loop breaks or `signal` aborts.
  async *stream(projectId, { lastEventId = null, signal, onState } = {}) {
    const queue = [];
    let wake = null;
    const nudge = () => {
      wake?.();
      wake = null;
    };
    const feed = this.follow(projectId, {
      after: lastEventId,
      onState,
      onEvent: (event) => {
        queue.push(event);
        nudge();
      },
    });
    signal?.addEventListener("abort", nudge);
    try {
      for (;;) {
        while (queue.length && !signal?.aborted) yield queue.shift();
        if (signal?.aborted) return;
        await new Promise((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      feed.stop();
      signal?.removeEventListener("abort", nudge);
    }
  }

  // A started Feed: onEvent(event, via) for each event after `after` (null: from now).
  // `types`: event types beyond the built-in ones to take from the stream (a pipeline's,
  // an app's: GET /api/events/schemas names them); a named SSE event reaches only the
  // listeners of its name, so one of a type not listed comes only through /events.
  follow(projectId, { after = null, onEvent, onState, types = [] }) {
    const feed = new Feed(this, projectId, { onEvent, onState, types });
    feed.start(after);
    return feed;
  }

  // One page of /events after `after`.
  events(projectId, after, limit = this.options.pageLimit) {
    return this.request("GET", `/api/projects/${segment(projectId)}/events?after=${after}&limit=${limit}`);
  }

  // Every event of the project after `after`, page by page; resolves to the last id.
  async replay(projectId, after, apply) {
    let cursor = after;
    for (;;) {
      const answer = await this.events(projectId, cursor);
      for (const event of answer.events) apply(event);
      cursor = answer.last_event_id;
      if (!answer.has_more) return cursor;
    }
  }
}

function route(event, handlers) {
  switch (event.type) {
    case EventType.MESSAGE_CREATED:
      handlers.onMessageCreated?.(event.message, event);
      break;
    case EventType.MESSAGE_UPDATED:
      handlers.onMessageUpdated?.(event.message, event);
      break;
    case EventType.MESSAGE_DELTA:
      handlers.onDelta?.(event.delta, event);
      break;
    case EventType.STAGE:
      handlers.onStage?.(event);
      break;
    case EventType.FILE_STARTED:
    case EventType.FILE_DELTA:
    case EventType.FILE_COMPLETED:
      handlers.onFile?.(event);
      break;
    default:
  }
  handlers.onEvent?.(event);
}

// One project's events: an EventSource, reopened and polled as the top of this file says.
// onState(state, detail): "connecting", "live", "reconnecting", "polling", "poll-error",
// "idle" (stopped).
export class Feed {
  constructor(client, projectId, { onEvent, onState, types = [] }) {
    this.client = client;
    this.projectId = projectId;
    this.types = [...new Set([...EVENT_TYPES, ...types])].filter((type) => type !== STREAM_CURSOR);
    this.onEvent = onEvent;
    this.onState = onState ?? (() => {});
    this.cursor = null; // the last id delivered; null: none yet, and the stream says where
    this.failures = 0;
    this.source = null;
    this.reopenTimer = null;
    this.polling = false;
    this.pollRun = 0; // bumped per start and stop of polling: an older loop ends
    this.pollTimer = null;
    this.stopped = false;
    this.state = "idle";
  }

  start(cursor) {
    this.cursor = cursor ?? null;
    this.openStream();
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.source?.close();
    this.source = null;
    clearTimeout(this.reopenTimer);
    this.stopPolling();
    this.setState("idle");
  }

  setState(state, detail = "") {
    this.state = state;
    this.onState(state, detail);
  }

  deliver(event, via) {
    if (this.stopped || (this.cursor !== null && event.id <= this.cursor)) return;
    this.cursor = event.id;
    this.onEvent(event, via);
  }

  openStream() {
    this.reopenTimer = null;
    if (this.stopped) return;
    const EventSourceClass = this.client.EventSource;
    if (!EventSourceClass) throw new TypeError("no EventSource: pass createClient({ EventSource })");
    let path = `/api/projects/${segment(this.projectId)}/stream`;
    if (this.cursor !== null) path += `?last_event_id=${this.cursor}`;
    const source = new EventSourceClass(this.client.streamUrl(path));
    this.source = source;
    // While polling, the state keeps saying so until a stream is really open.
    if (!this.polling) this.setState(this.failures ? "reconnecting" : "connecting");
    source.onopen = () => {
      if (this.source !== source || this.stopped) return;
      this.failures = 0;
      this.stopPolling();
      this.setState("live");
    };
    const handle = (message) => {
      if (this.source === source) this.deliver(JSON.parse(message.data), "stream");
    };
    for (const type of this.types) source.addEventListener(type, handle);
    source.onmessage = handle;
    // Opened with no cursor, the stream says first where it starts (not an event of the log).
    source.addEventListener(STREAM_CURSOR, (message) => {
      if (this.source === source && this.cursor === null) this.cursor = JSON.parse(message.data).last_event_id;
    });
    source.onerror = () => this.streamFailed(source);
  }

  streamFailed(source) {
    if (this.source !== source || this.stopped) return;
    this.failures += 1;
    if (this.failures >= this.client.options.pollAfterFailures && !this.polling) this.startPolling();
    if (source.readyState === EventSourceState.CONNECTING && !this.polling) {
      // A dropped connection: the EventSource reconnects by itself after the server's
      // retry: delay, with Last-Event-ID.
      this.setState("reconnecting", `attempt ${this.failures + 1}`);
      return;
    }
    // Closed for good (an HTTP error, such as a proxy's 502), or polling now: a new
    // EventSource from the cursor, after the backoff.
    source.close();
    this.source = null;
    const { reopenBaseMs, reopenMaxMs } = this.client.options;
    const delay = backoff(this.failures, reopenBaseMs, reopenMaxMs, this.client.random);
    if (!this.polling) {
      this.setState("reconnecting", `attempt ${this.failures + 1} in ${(delay / 1000).toFixed(1)} s`);
    }
    this.reopenTimer = setTimeout(() => this.reopen(), delay);
  }

  // genstream checks a token only when a stream opens, so one that expired meanwhile is
  // refused at the reopen: a fresh one first, when there is a source of them.
  async reopen() {
    try {
      await this.client.freshToken("reopen");
    } catch {
      // No fresh token: the stream is refused, and this goes on with its backoff.
    }
    this.openStream();
  }

  startPolling() {
    this.polling = true;
    this.pollRun += 1;
    this.setState("polling", `every ${this.client.options.pollIntervalMs / 1000} s`);
    this.poll(this.pollRun);
  }

  stopPolling() {
    this.polling = false;
    this.pollRun += 1;
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
  }

  async poll(run) {
    const current = () => run === this.pollRun && !this.stopped;
    const { pollIntervalMs, pollPages } = this.client.options;
    if (!current()) return;
    try {
      if (this.cursor === null) {
        // No stream ever said where "now" was: the project's newest event is.
        const project = await this.client.request("GET", `/api/projects/${segment(this.projectId)}`);
        if (!current()) return;
        this.cursor ??= project.last_event_id;
      }
      for (let page = 0; page < pollPages; page += 1) {
        const answer = await this.client.events(this.projectId, this.cursor);
        if (!current()) return;
        for (const event of answer.events) this.deliver(event, "poll");
        if (!answer.has_more) break;
      }
      if (this.state !== "polling") this.setState("polling", `every ${pollIntervalMs / 1000} s`);
    } catch (error) {
      if (!current()) return;
      this.setState("poll-error", error.message);
    }
    this.pollTimer = setTimeout(() => this.poll(run), pollIntervalMs);
  }
}

// EventSource's readyState values (WHATWG HTML 9.2.2), for an EventSource class that
// does not carry them as statics.
const EventSourceState = Object.freeze({ CONNECTING: 0, OPEN: 1, CLOSED: 2 });
