// The page: wires the API, the event feed, the project state and the views together.
//
// Opening a project (also on reload, in the middle of a generation): the project, its
// messages and files over REST; if a generation is running, that generation's events
// replayed from its first one (so partial text and half-written files show); then ONE
// EventSource on the project stream from the last event applied. The stepper, the page
// preview and the scenes follow the pipeline each generation runs (GET /api/pipelines).

import { api, client, filePath, onTokenNeeded, segment, submitPrompt } from "./api.js";
import { ChatView } from "./chat.js";
import { DebugDrawer } from "./debug.js";
import { $, el } from "./dom.js";
import { FilesView } from "./files.js";
import { Catalog, rememberedInput, rememberInput } from "./pipelines.js";
import { PreviewView } from "./preview.js";
import { ProgressView } from "./progress.js";
import { TERMINAL_TYPES } from "./protocol.js";
import { ScenesView } from "./scenes.js";
import { HISTORY, ProjectState } from "./state.js";

const CONNECTION_LABELS = {
  idle: "Not connected",
  connecting: "Connecting...",
  live: "Live",
  reconnecting: "Reconnecting...",
  polling: "Polling every 2 s (stream unavailable)",
  "poll-error": "Offline, retrying...",
};

const ui = {
  select: $("project-select"),
  newProject: $("new-project"),
  connection: $("connection"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  cancel: $("cancel"),
  note: $("composer-note"),
  download: $("download"),
  picker: $("pipeline-picker"),
  pipeline: $("pipeline-select"),
  inputs: $("pipeline-inputs"),
};
const chat = new ChatView();
const progress = new ProgressView();
const files = new FilesView({
  onSelect: (path) => {
    loadFile(path);
    schedule();
  },
});
const debug = new DebugDrawer();
const preview = new PreviewView();
const scenes = new ScenesView();
const catalog = new Catalog();

const NO_PROJECT = new ProjectState(null, catalog);
let state = null; // the open project's ProjectState
let feed = null; // the client's Feed on the open project
let opening = 0; // bumped per openProject: answers for an older one are dropped
let opened = Promise.resolve();
let frame = 0;
let busy = false; // a submit or cancel request is in flight
const fetching = new Set();

function schedule() {
  frame ||= requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const shown = state ?? NO_PROJECT;
  const chosen = ui.pipeline.value || null;
  chat.render(shown);
  progress.render(shown, { pipeline: chosen, stages: catalog.stages(chosen) });
  preview.render(shown);
  scenes.render(shown, catalog.editsScenes(chosen));
  files.render(shown);
  debug.flush();
  if (debug.open) debug.renderTimings(shown.generation);
  const generating = Boolean(state?.generating);
  const ended = ui.prompt.disabled && !generating;
  ui.prompt.disabled = generating;
  ui.pipeline.disabled = generating;
  // Disabling the box took its focus: give it back when the generation ends.
  if (ended && document.activeElement === document.body) ui.prompt.focus();
  ui.send.hidden = generating;
  ui.send.disabled = busy;
  ui.cancel.hidden = !generating;
  ui.download.hidden = !state?.files.size;
  ui.cancel.disabled = busy;
  document.body.dataset.generating = String(generating);
}

function note(text) {
  ui.note.textContent = text;
}

// -- the pipeline chooser and its inputs -------------------------------------------------

function showPipelines() {
  ui.pipeline.replaceChildren(
    ...catalog.names.map((name) => {
      const option = el("option", "", catalog.get(name).label || name);
      option.value = name;
      option.title = catalog.get(name).description ?? "";
      return option;
    }),
  );
  // Nothing to choose between: the chooser stays out of the way.
  ui.picker.hidden = catalog.names.length < 2;
}

function choosePipeline(name) {
  if (!name || !catalog.get(name)) return;
  ui.pipeline.value = name;
  showInputs(name);
  schedule();
}

// A small field for each of the pipeline's inputs, holding what was typed last here.
function showInputs(name) {
  ui.inputs.replaceChildren(
    ...catalog.fields(name).map((field) => {
      const label = el("label", "input-field");
      const input = el("input");
      input.dataset.field = field.name;
      input.dataset.kind = field.type;
      input.type = field.type === "string" ? "text" : "number";
      input.autocomplete = "off";
      input.placeholder = field.label;
      input.setAttribute("aria-label", field.label);
      if (field.maxLength !== null) input.maxLength = field.maxLength;
      if (field.minimum !== null) input.min = String(field.minimum);
      if (field.maximum !== null) input.max = String(field.maximum);
      input.value = rememberedInput(name, field.name);
      input.addEventListener("change", () => rememberInput(name, field.name, input.value));
      label.append(el("span", "field-label", field.label), input);
      return label;
    }),
  );
}

// The inputs as the submit sends them; a field left empty takes the pipeline's default.
function readInputs() {
  const inputs = {};
  for (const input of ui.inputs.querySelectorAll("input[data-field]")) {
    const value = input.value.trim();
    if (!value) continue;
    inputs[input.dataset.field] = input.dataset.kind === "string" ? value : Number(value);
  }
  return inputs;
}

// -- dialogs (the token, a new project's name) -------------------------------------------

function ask({ title, text, placeholder = "", secret = false, cancellable = true }) {
  const dialog = $("ask");
  const input = $("ask-input");
  $("ask-title").textContent = title;
  $("ask-text").textContent = text;
  input.type = secret ? "password" : "text";
  input.placeholder = placeholder;
  input.value = "";
  $("ask-cancel").hidden = !cancellable;
  return new Promise((resolve) => {
    const finish = (value) => {
      $("ask-form").onsubmit = null;
      $("ask-cancel").onclick = null;
      dialog.oncancel = null;
      dialog.close();
      resolve(value);
    };
    $("ask-form").onsubmit = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (secret && !value) return;
      finish(value);
    };
    $("ask-cancel").onclick = () => finish(null);
    dialog.oncancel = (event) => {
      event.preventDefault();
      if (cancellable) finish(null);
    };
    dialog.showModal();
    input.focus();
  });
}

onTokenNeeded((rejected) =>
  ask({
    title: "Access token",
    text: rejected
      ? "That token was not accepted: it has expired or is not valid. Paste a fresh one."
      : "This genstream server needs an access token.",
    placeholder: "token",
    secret: true,
    cancellable: false,
  }),
);

// -- projects ------------------------------------------------------------------------------

function setUrl(projectId, push) {
  const url = new URL(location.href);
  if (projectId) url.searchParams.set("project", projectId);
  else url.searchParams.delete("project");
  if (url.href !== location.href) history[push ? "pushState" : "replaceState"](null, "", url);
}

async function loadProjects() {
  const { projects } = await api("GET", "/api/projects");
  const options = projects
    .slice()
    .reverse()
    .map((project) => {
      const option = el("option", "", project.name);
      option.value = project.id;
      return option;
    });
  if (!options.length) {
    const none = el("option", "", "No projects yet");
    none.value = "";
    options.push(none);
  }
  ui.select.replaceChildren(...options);
  if (state) ui.select.value = state.project.id;
  return projects;
}

async function createProject(name) {
  const project = await api("POST", "/api/projects", name ? { name } : {});
  await loadProjects();
  await openProject(project.id, true);
  return project;
}

// Resolves once the page shows the project (or has given up on it).
function openProject(projectId, push) {
  opened = loadProject(projectId, push);
  return opened;
}

async function loadProject(projectId, push) {
  const ticket = ++opening;
  delete document.body.dataset.project;
  feed?.stop();
  feed = null;
  state = null;
  chat.reset();
  files.reset();
  note("");
  setUrl(projectId, push);
  ui.select.value = projectId;
  try {
    const path = `/api/projects/${segment(projectId)}`;
    const project = await api("GET", path);
    const [{ messages }, { files: list }, sceneList] = await Promise.all([
      api("GET", `${path}/messages`),
      api("GET", `${path}/files`),
      loadScenes(path),
    ]);
    if (ticket !== opening) return;
    const next = new ProjectState(project, catalog);
    next.setMessages(messages);
    next.setFiles(list);
    next.setScenes(sceneList);
    let cursor = project.last_event_id;
    const active = project.active_generation;
    const replay = async (generation) => {
      cursor = await client.replay(projectId, generation.first_event_id - 1, (event) => {
        next.apply(event);
        debug.event(event, "replay");
      });
    };
    if (active) {
      next.beginGeneration(active);
      await replay(active);
    } else {
      const last = messages.findLast((m) => m.generation_id)?.generation_id;
      if (last) {
        const ended = await api("GET", `/api/generations/${segment(last)}`);
        next.showEnded(ended);
        // What the page draws from a pipeline's events (a landing page) is in no
        // snapshot: the ended generation's events draw it again.
        if (catalog.previews(ended.pipeline)) await replay(ended);
      }
    }
    if (ticket !== opening) return;
    // The chooser starts on what the project ran last, else its default.
    choosePipeline(next.generation?.pipeline ?? catalog.defaultFor(project));
    state = next;
    document.body.dataset.project = projectId;
    // It ended while we replayed it: take the database's final messages and files.
    if (active && !state.generating) resync(state);
    loadStageHistory(state, messages, active?.id);
    feed = client.follow(projectId, { after: cursor, onEvent, onState, types: catalog.types });
  } catch (error) {
    if (ticket !== opening) return;
    note(error.status === 404 ? "That project does not exist (any more)." : error.message);
    setUrl(null, false);
  }
  schedule();
}

// The project's scenes; none from a server without the route (404 for a project that
// exists: the project itself was just read).
async function loadScenes(path) {
  try {
    return (await api("GET", `${path}/scenes`)).scenes;
  } catch (error) {
    if (error.status === 404) return [];
    throw error;
  }
}

// The stage times of the project's last few generations, for the time remaining; read
// after the page shows the project, as nothing waits on them.
async function loadStageHistory(current, messages, activeId) {
  const ids = [...new Set(messages.map((m) => m.generation_id).filter((id) => id && id !== activeId))];
  try {
    const generations = await Promise.all(ids.slice(-HISTORY).map((id) => api("GET", `/api/generations/${segment(id)}`)));
    if (current !== state) return;
    const earlier = current.stageHistory.splice(0);
    for (const generation of generations) {
      if (generation.status === "completed") current.rememberTimings(generation.pipeline, generation.timings);
    }
    current.stageHistory.push(...earlier);
    schedule();
  } catch {
    // No estimate then: the bar shows without one.
  }
}

// Between events the time remaining still moves.
setInterval(() => {
  if (state?.generating) progress.renderEta(state);
}, 1000);

function onEvent(event, via) {
  if (!state || event.project_id !== state.project.id) return;
  state.apply(event);
  debug.event(event, via);
  schedule();
  // The database is the truth: once a generation ends, take its messages and files.
  if (TERMINAL_TYPES.includes(event.type)) resync(state);
}

async function resync(current) {
  const path = `/api/projects/${segment(current.project.id)}`;
  try {
    const [{ messages }, { files: list }, sceneList] = await Promise.all([
      api("GET", `${path}/messages`),
      api("GET", `${path}/files`),
      loadScenes(path),
    ]);
    if (current !== state) return;
    current.setMessages(messages);
    current.setFiles(list);
    current.setScenes(sceneList);
    schedule();
  } catch (error) {
    note(`Could not refresh: ${error.message}`);
  }
}

function onState(connection, detail) {
  const label = CONNECTION_LABELS[connection] ?? connection;
  ui.connection.dataset.state = connection;
  ui.connection.textContent = label;
  ui.connection.title = detail;
  debug.state(connection, detail ? `${label} (${detail})` : label);
}

async function loadFile(path) {
  const current = state;
  const file = current?.files.get(path);
  if (!file || file.writing || file.content !== null || fetching.has(path)) return;
  fetching.add(path);
  try {
    const answer = await api("GET", `/api/projects/${segment(current.project.id)}/files/${filePath(path)}`);
    const known = current.files.get(path);
    if (known && !known.writing && known.sha256 === answer.sha256) {
      known.content = answer.content;
      current.touch("files");
    }
  } catch (error) {
    note(`Could not open ${path}: ${error.message}`);
  } finally {
    fetching.delete(path);
    schedule();
  }
}

// -- chat ------------------------------------------------------------------------------------

async function submit() {
  const prompt = ui.prompt.value;
  if (!prompt.trim() || busy || state?.generating) return;
  busy = true;
  note("");
  render();
  // Read first: opening a new project sets the chooser to the project's default.
  const options = { pipeline: ui.pipeline.value || undefined, inputs: readInputs() };
  try {
    await opened;
    if (!state) await createProject(prompt.trim().split(/\s+/).slice(0, 6).join(" ").slice(0, 60));
    const current = state;
    const answer = await submitPrompt(current.project.id, prompt, options);
    current.upsertMessage(answer.user_message);
    current.upsertMessage(answer.assistant_message);
    current.beginGeneration(answer.generation);
    ui.prompt.value = "";
  } catch (error) {
    note(error.message);
  } finally {
    busy = false;
    schedule();
  }
}

// The project as a .zip: fetched (it may need the token's header, which a link cannot
// send), then saved through a link to the blob.
async function download() {
  const current = state;
  if (!current) return;
  ui.download.disabled = true;
  try {
    const blob = await client.archive(current.project.id);
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${current.project.id}.zip`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (error) {
    note(`Could not download: ${error.message}`);
  } finally {
    ui.download.disabled = false;
  }
}

async function cancel() {
  const generation = state?.generation;
  if (!generation || busy) return;
  busy = true;
  render();
  try {
    await api("POST", `/api/generations/${segment(generation.id)}/cancel`);
  } catch (error) {
    note(error.message);
  } finally {
    busy = false;
    schedule();
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});
ui.cancel.addEventListener("click", cancel);
ui.pipeline.addEventListener("change", () => choosePipeline(ui.pipeline.value));
ui.download.addEventListener("click", download);
ui.select.addEventListener("change", () => {
  if (ui.select.value) openProject(ui.select.value, true);
});
ui.newProject.addEventListener("click", async () => {
  const name = await ask({ title: "New project", text: "A name for it (optional).", placeholder: "My project" });
  if (name === null) return;
  try {
    await createProject(name);
    ui.prompt.focus();
  } catch (error) {
    note(error.message);
  }
});
window.addEventListener("popstate", () => {
  const wanted = new URLSearchParams(location.search).get("project");
  if (wanted && wanted !== state?.project.id) openProject(wanted, false);
});

async function start() {
  try {
    await catalog.load(api);
    showPipelines();
    choosePipeline(catalog.defaultFor(null));
    const projects = await loadProjects();
    const wanted = new URLSearchParams(location.search).get("project");
    const chosen = wanted ?? projects.at(-1)?.id;
    if (chosen) await openProject(chosen, false);
    else render();
  } catch (error) {
    note(error.message);
  }
  document.body.dataset.ready = "true";
}

start();
