// The developer console: raw events, connection state, per-stage timings.
// Toggled by Ctrl+Shift+D (Cmd+Shift+D on a Mac) or ?debug=true; remembered in localStorage.

import { $, clock, duration, el } from "./dom.js";

const OPEN_KEY = "genstream.debug";
const MAX_EVENTS = 2000; // the oldest rows go, so a long session does not grow the page
const MAX_STATES = 50;

export class DebugDrawer {
  constructor() {
    this.drawer = $("debug");
    this.events = $("debug-events");
    this.count = $("debug-count");
    this.timings = $("debug-timings");
    this.connlog = $("debug-connlog");
    this.connection = $("debug-connection");
    this.total = 0;
    this.pending = [];
    $("debug-close").addEventListener("click", () => this.toggle(false));
    $("debug-clear").addEventListener("click", () => {
      this.events.replaceChildren();
      this.pending = [];
      this.total = 0;
      this.count.textContent = "";
    });
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

  event(event, via) {
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
      if (details.open && details.childElementCount === 1) {
        details.append(el("pre", "json", JSON.stringify(event, null, 2)));
      }
    });
    row.append(details);
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
  }
}
