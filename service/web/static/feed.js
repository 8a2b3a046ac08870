// The connection to a project's events: one EventSource, and polling when it keeps failing.
//
// The EventSource resumes by itself after a drop, sending Last-Event-ID (the header wins
// over the ?last_event_id= of the first request). An HTTP error closes it for good
// (WHATWG HTML 9.2: a status other than 200 "fails the connection", and then it "does not
// attempt to reconnect"), and a proxy in front of a restarting genstream answers 502:
// then the page opens a new one from its cursor, after a backoff. Every event goes through `deliver`, which drops ids at or
// below the cursor, so a replay, or a poll racing the stream, never applies an event twice.

import { api, refreshToken, segment, withToken } from "./api.js";
import { EventType } from "./protocol.js";

// Every type the log holds gets a listener: a named SSE event reaches only those.
const EVENT_TYPES = Object.values(EventType);

// Failures in a row (no successful open between them) before also polling /events; the
// stream is still reopened on its backoff meanwhile, and the first open ends the polling.
const MAX_STREAM_FAILURES = 3;
const POLL_INTERVAL_MS = 2000;
const PAGE_LIMIT = 1000;
// A closed stream is reopened after REOPEN_BASE_MS doubled per failure in a row, capped
// at REOPEN_MAX_MS, each delay drawn from its upper half (0.5 s .. 10 s in all), so the
// pages that one restart cut off do not all come back in the same instant.
const REOPEN_BASE_MS = 1000;
const REOPEN_MAX_MS = 10_000;

export function reopenDelay(failures, random = Math.random) {
  const ceiling = Math.min(REOPEN_MAX_MS, REOPEN_BASE_MS * 2 ** Math.max(0, failures - 1));
  return ceiling * (0.5 + random() / 2);
}

export class Feed {
  constructor(projectId, { onEvent, onState, random = Math.random }) {
    this.projectId = projectId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.random = random;
    this.cursor = 0;
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
    this.cursor = cursor;
    this.openStream();
  }

  stop() {
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
    if (this.stopped || event.id <= this.cursor) return;
    this.cursor = event.id;
    this.onEvent(event, via);
  }

  openStream() {
    this.reopenTimer = null;
    if (this.stopped) return;
    const base = `/api/projects/${segment(this.projectId)}/stream?last_event_id=${this.cursor}`;
    const source = new EventSource(withToken(base));
    this.source = source;
    // While polling, the top bar keeps saying so until a stream is really open.
    if (!this.polling) this.setState(this.failures ? "reconnecting" : "connecting");
    source.onopen = () => {
      if (this.source !== source || this.stopped) return;
      this.failures = 0;
      this.stopPolling();
      this.setState("live");
    };
    const handle = (message) => this.deliver(JSON.parse(message.data), "stream");
    for (const type of EVENT_TYPES) source.addEventListener(type, handle);
    source.onmessage = handle;
    source.onerror = () => this.streamFailed(source);
  }

  streamFailed(source) {
    if (this.source !== source || this.stopped) return;
    this.failures += 1;
    if (this.failures >= MAX_STREAM_FAILURES && !this.polling) this.startPolling();
    if (source.readyState === EventSource.CONNECTING && !this.polling) {
      // A dropped connection: the browser reconnects by itself after the server's
      // retry: delay, with Last-Event-ID.
      this.setState("reconnecting", `attempt ${this.failures + 1}`);
      return;
    }
    // Closed for good by the browser (an HTTP error, such as a proxy's 502), or polling
    // now: a new EventSource from our cursor, after the backoff.
    source.close();
    this.source = null;
    const delay = reopenDelay(this.failures, this.random);
    if (!this.polling) {
      this.setState("reconnecting", `attempt ${this.failures + 1} in ${(delay / 1000).toFixed(1)} s`);
    }
    this.reopenTimer = setTimeout(() => this.reopen(), delay);
  }

  // The server checks a token only when a stream opens, so one that expired meanwhile is
  // refused at the reopen: fetch a fresh one first (when the embedding page gives a source).
  async reopen() {
    try {
      await refreshToken();
    } catch {
      // No fresh token: the stream is refused, and polling's 401 asks for one.
    }
    this.openStream();
  }

  startPolling() {
    this.polling = true;
    this.pollRun += 1;
    this.setState("polling", `every ${POLL_INTERVAL_MS / 1000} s`);
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
    if (!current()) return;
    try {
      // Bounded: at most this many pages per tick; the rest comes on the next tick.
      for (let page = 0; page < 20; page += 1) {
        const path = `/api/projects/${segment(this.projectId)}/events?after=${this.cursor}&limit=${PAGE_LIMIT}`;
        const answer = await api("GET", path);
        if (!current()) return;
        for (const event of answer.events) this.deliver(event, "poll");
        if (!answer.has_more) break;
      }
      if (this.state !== "polling") this.setState("polling", `every ${POLL_INTERVAL_MS / 1000} s`);
    } catch (error) {
      if (!current()) return;
      this.setState("poll-error", error.message);
    }
    this.pollTimer = setTimeout(() => this.poll(run), POLL_INTERVAL_MS);
  }
}

// Every event of the project after `after`, page by page (used to rebuild state on load).
export async function replay(projectId, after, apply) {
  let cursor = after;
  for (;;) {
    const path = `/api/projects/${segment(projectId)}/events?after=${cursor}&limit=${PAGE_LIMIT}`;
    const answer = await api("GET", path);
    for (const event of answer.events) apply(event);
    cursor = answer.last_event_id;
    if (!answer.has_more) return cursor;
  }
}
