// The connection to a project's events: one EventSource, and polling when it keeps failing.
//
// The EventSource resumes by itself after a drop, sending Last-Event-ID (the header wins
// over the ?last_event_id= of the first request). Every event goes through `deliver`,
// which drops ids at or below the cursor, so a replay never applies an event twice.

import { api, segment, withToken } from "./api.js";

export const EVENT_TYPES = [
  "message.created",
  "generation.started",
  "stage",
  "message.delta",
  "file.started",
  "file.delta",
  "file.completed",
  "validation",
  "message.updated",
  "generation.completed",
  "generation.failed",
  "generation.cancelled",
];
export const TERMINAL_TYPES = new Set([
  "generation.completed",
  "generation.failed",
  "generation.cancelled",
]);

// Failures in a row (no successful open between them) before falling back to polling.
const MAX_STREAM_FAILURES = 3;
const POLL_INTERVAL_MS = 2000;
// While polling, try the stream again every this many polls (a minute): a server that
// was away comes back, and the page should not poll for the rest of its life.
const STREAM_RETRY_POLLS = 30;
const PAGE_LIMIT = 1000;
// When the browser gives up on a stream (an HTTP error), wait this long per failure.
const REOPEN_DELAY_MS = 1000;

export class Feed {
  constructor(projectId, { onEvent, onState }) {
    this.projectId = projectId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.cursor = 0;
    this.failures = 0;
    this.source = null;
    this.timer = null;
    this.polls = 0;
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
    clearTimeout(this.timer);
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
    if (this.stopped) return;
    const base = `/api/projects/${segment(this.projectId)}/stream?last_event_id=${this.cursor}`;
    const source = new EventSource(withToken(base));
    this.source = source;
    this.setState(this.failures ? "reconnecting" : "connecting");
    source.onopen = () => {
      this.failures = 0;
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
    if (this.failures >= MAX_STREAM_FAILURES) {
      source.close();
      this.source = null;
      this.startPolling();
      return;
    }
    this.setState("reconnecting", `attempt ${this.failures + 1}`);
    if (source.readyState === EventSource.CLOSED) {
      // The browser will not retry this one (an HTTP error): open a new one from our cursor.
      this.timer = setTimeout(() => this.openStream(), REOPEN_DELAY_MS * this.failures);
    }
  }

  startPolling() {
    this.polls = 0;
    this.setState("polling", `every ${POLL_INTERVAL_MS / 1000} s`);
    this.poll();
  }

  retryStream() {
    // One more failure sends it straight back to polling.
    this.failures = MAX_STREAM_FAILURES - 1;
    this.openStream();
  }

  async poll() {
    if (this.stopped) return;
    try {
      // Bounded: at most this many pages per tick; the rest comes on the next tick.
      for (let page = 0; page < 20; page += 1) {
        const path = `/api/projects/${segment(this.projectId)}/events?after=${this.cursor}&limit=${PAGE_LIMIT}`;
        const answer = await api("GET", path);
        for (const event of answer.events) this.deliver(event, "poll");
        if (!answer.has_more) break;
      }
      if (this.state !== "polling") this.setState("polling", `every ${POLL_INTERVAL_MS / 1000} s`);
    } catch (error) {
      this.setState("poll-error", error.message);
    }
    if (this.stopped) return;
    this.polls += 1;
    if (this.polls % STREAM_RETRY_POLLS === 0) {
      this.retryStream();
      return;
    }
    this.timer = setTimeout(() => this.poll(), POLL_INTERVAL_MS);
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
