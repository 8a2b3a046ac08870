// What the page knows about one project, built from REST snapshots and events.
// Every event, streamed or polled or replayed, goes through `apply`.

import { PreviewEvent, SceneEvent } from "./pipelines.js";
import { ACTIVE_STATUSES, EventType, GenerationStatus } from "./protocol.js";

// Earlier generations the estimate is taken from, at most.
export const HISTORY = 5;
// A page's sections kept, at most: its events are a model's output, bounded here too.
const MAX_SECTIONS = 100;
const ENDINGS = {
  [EventType.GENERATION_COMPLETED]: GenerationStatus.COMPLETED,
  [EventType.GENERATION_FAILED]: GenerationStatus.FAILED,
  [EventType.GENERATION_CANCELLED]: GenerationStatus.CANCELLED,
};

// `stages`: the pipeline's declared ones, as the catalog (GET /api/pipelines) has them
// until its generation.started says.
function newGeneration(id, from = {}, stages = []) {
  return {
    id,
    pipeline: from.pipeline ?? null,
    status: from.status ?? GenerationStatus.PENDING,
    stage: from.stage ?? null,
    stageStatus: "active",
    progress: from.progress ?? 0,
    stages,
    currentFile: null,
    stageTimes: {},
    error: from.error ?? null,
    timings: from.timings ?? null,
    usage: from.usage ?? null,
    summary: "",
  };
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export class ProjectState {
  // `catalog`: the server's pipelines (pipelines.js), for each generation's stages.
  constructor(project, catalog) {
    this.project = project;
    this.catalog = catalog;
    this.messages = new Map(); // id -> {id, role, status, content, streamed, created_at}
    this.files = new Map(); // path -> {path, size, sha256, content|null, writing}
    this.generation = null;
    // The page pipeline's last page: {generationId, title, sections (by index), complete}.
    this.preview = null;
    this.scenes = new Map(); // scene id -> the scene as the last snapshot or event had it
    // Stage times ({pipeline, stages: ms by stage id}) of earlier completed generations,
    // newest last: what the estimated time remaining is taken from.
    this.stageHistory = [];
    // Bumped on each change, so views redraw only what moved.
    this.versions = { messages: 0, files: 0, progress: 0, preview: 0, scenes: 0 };
  }

  get generating() {
    return this.generation !== null && ACTIVE_STATUSES.includes(this.generation.status);
  }

  rememberTimings(pipeline, timings) {
    if (!timings?.stages || !Object.keys(timings.stages).length) return;
    this.stageHistory.push({ pipeline, stages: timings.stages });
    if (this.stageHistory.length > HISTORY) this.stageHistory.shift();
  }

  // The running generation's time remaining in ms, from the mean time of each stage over
  // the earlier generations; null while there is none to base it on.
  remainingMs(now = Date.now()) {
    const generation = this.generation;
    if (!this.generating || !this.stageHistory.length) return null;
    // Another pipeline's stages say nothing of this one's, whatever their ids.
    const earlier = this.stageHistory.filter((entry) => entry.pipeline === generation.pipeline);
    const mean = {};
    for (const { id } of generation.stages) {
      const known = earlier.map(({ stages }) => stages[id]).filter((ms) => ms != null);
      if (known.length) mean[id] = known.reduce((a, b) => a + b, 0) / known.length;
    }
    if (!Object.keys(mean).length) return null;
    const index = generation.stages.findIndex((stage) => stage.id === generation.stage);
    let left = 0;
    generation.stages.forEach(({ id }, i) => {
      if (!(id in mean) || i < index) return;
      if (i > index) {
        left += mean[id];
      } else if (generation.stageStatus !== "complete") {
        const start = generation.stageTimes[id]?.start;
        left += Math.max(0, mean[id] - (start == null ? 0 : now - start));
      }
    });
    return left;
  }

  touch(...parts) {
    for (const part of parts) this.versions[part] += 1;
  }

  upsertMessage(message) {
    const known = this.messages.get(message.id);
    if (known) {
      // A snapshot newer than what we hold (a pending message that has ended) wins.
      if (known.status === "pending" && message.status !== "pending") {
        known.status = message.status;
        known.content = message.content;
        known.streamed = "";
      }
    } else {
      this.messages.set(message.id, { ...message, streamed: "" });
    }
    this.touch("messages");
  }

  setMessages(list) {
    const ids = new Set(list.map((m) => m.id));
    for (const id of this.messages.keys()) if (!ids.has(id)) this.messages.delete(id);
    for (const message of list) this.upsertMessage(message);
  }

  orderedMessages() {
    // Map order is arrival order (user before assistant); sort is stable.
    return [...this.messages.values()].sort((a, b) => a.created_at - b.created_at);
  }

  // The database's file list; files it does not hold (a cancelled run's) disappear.
  setFiles(list) {
    const paths = new Set(list.map((f) => f.path));
    for (const path of this.files.keys()) {
      if (!paths.has(path) && !this.files.get(path).writing) this.files.delete(path);
    }
    for (const file of list) {
      const known = this.files.get(file.path);
      if (known && known.writing) continue;
      const content = known && known.sha256 === file.sha256 ? known.content : null;
      this.files.set(file.path, { path: file.path, size: file.size, sha256: file.sha256, content, writing: false });
    }
    this.touch("files");
  }

  dropUnfinishedFiles() {
    for (const [path, file] of this.files) if (file.writing) this.files.delete(path);
    this.touch("files");
  }

  // The database's scenes (GET /api/projects/{pid}/scenes): the list from now on.
  setScenes(list) {
    this.scenes = new Map();
    for (const scene of list) this.upsertScene(scene);
    this.touch("scenes");
  }

  // A scene as an event or a snapshot has it; an older copy than the one held (an event
  // replayed after a newer snapshot) does not take it back.
  upsertScene(scene) {
    if (!isObject(scene) || typeof scene.id !== "string") return;
    const known = this.scenes.get(scene.id);
    if (known && Number(known.updated_at) > Number(scene.updated_at)) return;
    this.scenes.set(scene.id, scene);
    this.touch("scenes");
  }

  orderedScenes() {
    return [...this.scenes.values()].sort(
      (a, b) => Number(a.position) - Number(b.position) || String(a.id).localeCompare(String(b.id)),
    );
  }

  // The page being built by `event`'s generation (a new generation's starts empty).
  previewFor(event) {
    if (this.preview?.generationId !== event.generation_id) {
      this.preview = { generationId: event.generation_id, title: "", sections: [], complete: false };
    }
    return this.preview;
  }

  applyPreview(event) {
    const preview = this.previewFor(event);
    if (event.type === PreviewEvent.SECTION) {
      const index = event.index;
      if (!Number.isInteger(index) || index < 0 || index >= MAX_SECTIONS || !isObject(event.section)) return;
      preview.sections[index] = event.section;
    } else if (isObject(event.page)) {
      // The whole page: it replaces what the sections built.
      const sections = Array.isArray(event.page.sections) ? event.page.sections : [];
      preview.sections = sections.slice(0, MAX_SECTIONS).filter(isObject);
      preview.title = typeof event.page.title === "string" ? event.page.title : "";
      preview.complete = true;
    }
    this.touch("preview");
  }

  beginGeneration(generation) {
    if (this.generation?.id === generation.id) return;
    this.generation = newGeneration(generation.id, generation, this.catalog.stages(generation.pipeline));
    this.touch("progress");
  }

  // The state of an ended generation, shown until the next one starts.
  showEnded(generation) {
    const shown = newGeneration(generation.id, generation, this.catalog.stages(generation.pipeline));
    shown.stageStatus = "complete";
    this.generation = shown;
    this.touch("progress");
  }

  generationFor(event) {
    if (!event.generation_id) return null;
    if (this.generation?.id !== event.generation_id) {
      if (event.type !== EventType.MESSAGE_CREATED && event.type !== EventType.GENERATION_STARTED) return null;
      // Another client's submit: its message comes before the generation says its
      // pipeline, most likely the project's default.
      const pipeline = event.pipeline ?? this.catalog.defaultFor(this.project);
      this.generation = newGeneration(event.generation_id, { pipeline }, this.catalog.stages(pipeline));
    }
    return this.generation;
  }

  apply(event) {
    const generation = this.generationFor(event);
    switch (event.type) {
      case EventType.MESSAGE_CREATED:
        this.upsertMessage(event.message);
        break;
      case EventType.GENERATION_STARTED:
        generation.status = GenerationStatus.RUNNING;
        generation.pipeline = event.pipeline ?? generation.pipeline;
        if (Array.isArray(event.stages) && event.stages.length) generation.stages = event.stages;
        break;
      case PreviewEvent.SECTION:
      case PreviewEvent.PAGE:
        this.applyPreview(event);
        break;
      case SceneEvent.ADDED:
      case SceneEvent.EDITED:
      case SceneEvent.TRIMMED:
        this.upsertScene(event.scene);
        break;
      case SceneEvent.DELETED:
        if (this.scenes.delete(event.scene_id)) this.touch("scenes");
        break;
      case EventType.STAGE: {
        if (!generation) break;
        generation.stage = event.stage;
        generation.stageStatus = event.status;
        generation.progress = event.progress;
        const times = (generation.stageTimes[event.stage] ??= { start: event.ts, end: null });
        if (event.status === "complete") times.end = event.ts;
        break;
      }
      case EventType.MESSAGE_DELTA: {
        const message = this.messages.get(event.message_id);
        if (message && message.status === "pending") {
          message.streamed += event.delta;
          this.touch("messages");
        }
        break;
      }
      case EventType.FILE_STARTED:
        this.files.set(event.path, { path: event.path, size: 0, sha256: null, content: "", writing: true });
        if (generation) generation.currentFile = event.path;
        this.touch("files");
        break;
      case EventType.FILE_DELTA: {
        const file = this.files.get(event.path);
        if (file && file.writing) {
          file.content += event.delta;
          file.size = file.content.length;
          this.touch("files");
        }
        break;
      }
      case EventType.FILE_COMPLETED: {
        const file = this.files.get(event.path);
        if (file) Object.assign(file, { writing: false, size: event.size, sha256: event.sha256 });
        if (generation?.currentFile === event.path) generation.currentFile = null;
        this.touch("files");
        break;
      }
      case EventType.MESSAGE_UPDATED: {
        const message = this.messages.get(event.message.id);
        if (message) {
          Object.assign(message, { status: event.message.status, content: event.message.content, streamed: "" });
          this.touch("messages");
        }
        break;
      }
      default:
        if (event.type in ENDINGS && generation) {
          generation.status = ENDINGS[event.type];
          generation.currentFile = null;
          generation.error = event.type === EventType.GENERATION_FAILED ? { code: event.code, message: event.message } : null;
          generation.timings = event.timings ?? generation.timings;
          generation.usage = event.usage ?? generation.usage;
          generation.summary = event.summary ?? "";
          if (generation.status !== GenerationStatus.COMPLETED) this.dropUnfinishedFiles();
          else this.rememberTimings(generation.pipeline, event.timings);
        }
    }
    this.touch("progress");
  }
}
