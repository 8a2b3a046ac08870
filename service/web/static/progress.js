// The stepper (the stages the generation's pipeline declares: Planning -> Generating ->
// Validating -> Complete for code), the percentage and the file being written.

import { $, duration, el } from "./dom.js";
import { GenerationStatus } from "./protocol.js";

const ENDED_LABELS = { [GenerationStatus.CANCELLED]: "Cancelled", [GenerationStatus.FAILED]: "Failed" };

export class ProgressView {
  constructor() {
    this.stepper = $("stepper");
    this.fill = $("bar-fill");
    this.bar = this.fill.parentElement;
    this.percent = $("percent");
    this.current = $("current-file");
    this.eta = $("eta");
    this.state = null;
    this.version = -1;
    this.idle = null;
  }

  // The estimated time remaining, also redrawn every second between events.
  renderEta(state) {
    const left = state.remainingMs();
    this.eta.hidden = left === null;
    this.eta.textContent = left === null ? "" : left < 1000 ? "almost done" : `about ${Math.ceil(left / 1000)} s left`;
  }

  // `idle`: {pipeline, stages} of the pipeline the composer would run next, shown while
  // no generation is, or once an ended one of another pipeline was shown.
  render(state, idle) {
    this.renderEta(state);
    const idleKey = `${idle.pipeline}\u0000${idle.stages.map((s) => s.id).join(" ")}`;
    if (state === this.state && state.versions.progress === this.version && idleKey === this.idle) return;
    this.state = state;
    this.version = state.versions.progress;
    this.idle = idleKey;
    const own = state.generation;
    const mine = own && (state.generating || !idle.pipeline || !own.pipeline || own.pipeline === idle.pipeline);
    const generation = mine ? own : null;
    const list = generation?.stages.length ? generation.stages : idle.stages;
    this.stepper.dataset.pipeline = generation?.pipeline ?? idle.pipeline ?? "";
    const index = generation ? list.findIndex((s) => s.id === generation.stage) : -1;
    const ended = generation && !state.generating;
    this.stepper.replaceChildren(
      ...list.map((stage, i) => {
        const item = el("li", "step");
        item.dataset.stage = stage.id;
        let status = "todo";
        if (i < index || (i === index && generation.stageStatus === "complete")) status = "done";
        else if (i === index) status = ended ? "stopped" : "active";
        if (generation?.status === GenerationStatus.COMPLETED) status = "done";
        item.dataset.status = status;
        item.append(el("span", "dot", status === "done" ? "\u2713" : String(i + 1)), el("span", "label", stage.label));
        if (status === "active") item.setAttribute("aria-current", "step");
        return item;
      }),
    );
    const progress = generation?.progress ?? 0;
    this.fill.style.width = `${progress}%`;
    this.bar.setAttribute("aria-valuenow", String(progress));
    this.bar.dataset.status = generation?.status ?? "idle";
    this.percent.textContent = `${progress}%`;
    this.current.textContent = describe(state, generation);
    this.current.dataset.status = generation?.status ?? "idle";
  }
}

function describe(state, generation) {
  if (!generation) return "Idle: send a prompt to start a generation.";
  if (generation.currentFile) return `Writing ${generation.currentFile}`;
  if (state.generating) {
    const stage = generation.stages.find((s) => s.id === generation.stage);
    return stage ? `${stage.label}...` : "Waiting for a free slot...";
  }
  if (generation.status in ENDED_LABELS) {
    const reason = generation.error ? `: ${generation.error.message}` : "";
    return `${ENDED_LABELS[generation.status]}${reason}`;
  }
  if (generation.summary) return generation.summary;
  const total = generation.timings?.total_ms;
  return total == null ? "Complete." : `Complete in ${duration(total)}.`;
}
