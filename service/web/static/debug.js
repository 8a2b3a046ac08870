// The developer console: raw events, connection state, per-stage timings, the generation's
// usage, a timeline of its events by type, and an export of the session as JSON lines.
// Toggled by Ctrl+Shift+D (Cmd+Shift+D on a Mac) or ?debug=true; remembered in localStorage.

import { $, clock, duration, el } from "./dom.js";
import { APP_PREFIX } from "./protocol.js";

const OPEN_KEY = "genstream.debug";
const MAX_EVENTS = 2000; // the oldest rows go, so a long session does not grow the page
const MAX_STATES = 50;
// What the export holds: every event and state change of the session, up to this many
// lines (the oldest go first), whatever the rows on screen were cleared or trimmed to.
const MAX_LOG = 100_000;
const TIMELINE_BUCKETS = 60;
// An app event's row shows its data inline, cut to this many characters (the whole JSON
// opens with the row).
const APP_DATA_CHARS = 160;

export class DebugDrawer {
  constructor() {
    this.drawer = $("debug");
    this.events = $("debug-events");
    this.count = $("debug-count");
    this.timings = $("debug-timings");
    this.connlog = $("debug-connlog");
    this.connection = $("debug-connection");
    this.usage = $("debug-usage");
    this.timeline = $("debug-timeline");
    this.total = 0;
    this.pending = [];
    this.log = []; // the session, for the export: {kind: "event" | "connection", ...}
    this.timed = []; // [ts, type] of the shown generation's events, for the timeline
    this.timelineShown = "";
    $("debug-close").addEventListener("click", () => this.toggle(false));
    $("debug-clear").addEventListener("click", () => {
      this.events.replaceChildren();
      this.pending = [];
      this.total = 0;
      this.count.textContent = "";
    });
    $("debug-export").addEventListener("click", () => this.export());
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.shiftKey && event.code === "KeyD") {
        event.preventDefault();
        this.toggle();
      }
    });
    const asked = new URLSearchParams(location.search).get("debug");
    if (asked !== null) localStorage.setItem(OPEN_KEY, asked === "true" || asked === "1" ? "1" : "0");
    this.toggle(localStorage.getItem(OPEN_KEY) === "1");
  }

  get open() {
    return !this.drawer.hidden;
  }

  toggle(open = !this.open) {
    this.drawer.hidden = !open;
    document.body.classList.toggle("with-drawer", open);
    localStorage.setItem(OPEN_KEY, open ? "1" : "0");
  }

  record(line) {
    this.log.push(line);
    if (this.log.length > MAX_LOG) this.log.splice(0, this.log.length - MAX_LOG);
  }

  // The session as a file: one JSON object a line, in the order things happened.
  export() {
    const text = this.log.map((line) => JSON.stringify(line)).join("\n") + (this.log.length ? "\n" : "");
    const link = el("a");
    link.href = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    link.download = `genstream-session-${stamp}.jsonl`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  event(event, via) {
    this.record({ kind: "event", received_at: Date.now(), via, event });
    if (event.generation_id) {
      if (this.timed.length && this.timed.at(-1)[2] !== event.generation_id) this.timed = [];
      this.timed.push([event.ts, event.type, event.generation_id]);
    }
    this.total += 1;
    const row = el("li", "event");
    row.dataset.type = event.type;
    row.dataset.id = String(event.id);
    const details = el("details");
    const summary = el("summary");
    summary.append(
      el("span", "id", String(event.id)),
      el("span", "type", event.type),
      el("span", "time", clock(event.ts)),
      el("span", "via", via),
    );
    details.append(summary);
    // The JSON is built only when a row is opened: most rows never are.
    details.addEventListener("toggle", () => {
      if (details.open && !details.querySelector("pre.json")) {
        details.append(el("pre", "json", JSON.stringify(event, null, 2)));
      }
    });
    row.append(details);
    if (event.type.startsWith(APP_PREFIX)) {
      // An app's own event (POST /api/projects/{pid}/events): what it carries, at a glance.
      row.classList.add("app");
      const data = JSON.stringify(event.data ?? null);
      row.append(el("div", "app-data", data.length > APP_DATA_CHARS ? `${data.slice(0, APP_DATA_CHARS)}...` : data));
    }
    this.pending.push(row);
    if (this.pending.length > MAX_EVENTS) this.pending.shift();
  }

  // Rows are added once per frame: measuring the scroll position per event would force a
  // layout per event.
  flush() {
    if (!this.pending.length) return;
    const scroller = this.events.parentElement;
    const stick = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    this.events.append(...this.pending.splice(0));
    let extra = this.events.childElementCount - MAX_EVENTS;
    while (extra-- > 0) this.events.firstElementChild.remove();
    this.count.textContent = `(${this.total})`;
    if (stick) scroller.scrollTop = scroller.scrollHeight;
  }

  state(state, label) {
    this.record({ kind: "connection", at: Date.now(), state, label });
    this.connection.dataset.state = state;
    this.connection.textContent = label;
    const row = el("li");
    row.append(el("span", "time", clock(Date.now())), el("span", "", label));
    row.dataset.state = state;
    this.connlog.append(row);
    while (this.connlog.childElementCount > MAX_STATES) this.connlog.firstElementChild.remove();
  }

  renderTimings(generation) {
    const rows = [];
    if (generation) {
      const now = Date.now();
      for (const stage of generation.stages) {
        const times = generation.stageTimes[stage.id];
        const server = generation.timings?.stages?.[stage.id];
        let shown = "";
        if (server != null) shown = duration(server);
        else if (times?.end != null) shown = duration(times.end - times.start);
        else if (times) shown = `${duration(now - times.start)}...`;
        const row = el("tr");
        row.dataset.stage = stage.id;
        row.append(el("th", "", stage.label), el("td", "", shown || "-"));
        rows.push(row);
      }
      if (generation.timings?.total_ms != null) {
        const row = el("tr", "total");
        row.append(el("th", "", "Total"), el("td", "", duration(generation.timings.total_ms)));
        rows.push(row);
      }
    }
    this.timings.replaceChildren(...rows);
    this.renderUsage(generation);
    this.renderTimeline();
  }

  // Tokens, first-token latency and speed: what the generation's end reported.
  renderUsage(generation) {
    const usage = generation?.usage;
    const timings = generation?.timings;
    const facts = [
      ["Prompt tokens", usage?.prompt_tokens],
      ["Completion tokens", usage?.completion_tokens],
      ["First token", timings?.first_token_ms == null ? null : duration(timings.first_token_ms)],
      ["Tokens/s", timings?.tokens_per_second == null ? null : timings.tokens_per_second.toFixed(1)],
    ].filter(([, value]) => value != null);
    if (generation && !facts.length) facts.push(["Reported when it ends", "-"]);
    this.usage.replaceChildren(
      ...facts.map(([label, value]) => {
        const row = el("tr");
        row.append(el("th", "", label), el("td", "", String(value)));
        return row;
      }),
    );
  }

  // The shown generation's events over time, a row per type: each bucket's shade says how
  // many of that type fell in its slice of the run.
  renderTimeline() {
    const key = `${this.timed.length}:${this.timed[0]?.[2] ?? ""}`;
    if (key === this.timelineShown) return;
    this.timelineShown = key;
    if (!this.timed.length) {
      this.timeline.replaceChildren();
      return;
    }
    const start = this.timed[0][0];
    const span = Math.max(1, this.timed.at(-1)[0] - start);
    const rows = new Map();
    for (const [ts, type] of this.timed) {
      const counts = rows.get(type) ?? rows.set(type, new Array(TIMELINE_BUCKETS).fill(0)).get(type);
      counts[Math.min(TIMELINE_BUCKETS - 1, Math.floor(((ts - start) / span) * TIMELINE_BUCKETS))] += 1;
    }
    const most = Math.max(...[...rows.values()].flat());
    this.timeline.replaceChildren(
      ...[...rows].map(([type, counts]) => {
        const row = el("li");
        row.dataset.series = type; // not data-type: that marks the event rows
        const track = el("span", "track");
        counts.forEach((count, index) => {
          if (!count) return;
          const mark = el("span", "mark");
          mark.style.left = `${(index / TIMELINE_BUCKETS) * 100}%`;
          mark.style.opacity = String(0.35 + (0.65 * count) / most);
          mark.title = `${count} ${type}`;
          track.append(mark);
        });
        row.append(el("span", "type", type), track, el("span", "meta", String(counts.reduce((a, b) => a + b, 0))));
        return row;
      }),
    );
    this.timeline.title = `over ${duration(span)}`;
  }
}
