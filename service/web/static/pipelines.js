// The pipelines the server runs (GET /api/pipelines): each one's declared stages, for the
// stepper, and its inputs, for the composer. A pipeline's event types are its own data:
// the page draws two kinds of them itself, named here and in no other page module; every
// other one (an app's pipeline's) shows in the developer console only.

// The page pipeline's landing page: a section at a time, then the whole page.
export const PreviewEvent = Object.freeze({ SECTION: "page.section", PAGE: "page" });
// The scenes pipeline's edits: the scene as it now is, or the id of the one deleted.
export const SceneEvent = Object.freeze({
  ADDED: "scene.added",
  EDITED: "scene.edited",
  TRIMMED: "scene.trimmed",
  DELETED: "scene.deleted",
});
const PREVIEWED = new Set(Object.values(PreviewEvent));
const SCENES = new Set(Object.values(SceneEvent));

// An input of this name gets a per-browser id by default (the page pipeline's visitor,
// whose persona the server keeps): the same browser is the same visitor.
const VISITOR_FIELD = "visitor_id";
const VISITOR_KEY = "genstream.visitor";
const INPUT_KEY = "genstream.input"; // + ".<pipeline>.<field>": what was typed last

// The inputs the composer offers: a schema's string and number properties (anything
// else keeps the pipeline's default).
const FIELD_TYPES = new Set(["string", "integer", "number"]);

export class Catalog {
  constructor() {
    this.byName = new Map(); // name -> {name, label, description, stages, events, inputs}
    this.fallback = null; // the server's [generation] pipeline
    this.types = []; // every event type the server has a schema of: the stream's listeners
  }

  // The server's lists; a server that has none (or refuses them) leaves the catalog empty,
  // and the stepper then shows the stages each generation.started carries.
  async load(api) {
    // One after the other: the first may ask for the token, which the second then has.
    const [pipelines, schemas] = [await settled(api, "/api/pipelines"), await settled(api, "/api/events/schemas")];
    if (pipelines) {
      this.byName = new Map(pipelines.pipelines.map((pipeline) => [pipeline.name, pipeline]));
      this.fallback = pipelines.default ?? null;
    }
    // A named SSE event reaches only a listener of its name: every declared type gets one
    // (not the pattern of undeclared app events, which no listener can name).
    const declared = Object.keys(schemas?.$defs ?? {});
    const piped = [...this.byName.values()].flatMap((pipeline) => pipeline.events ?? []);
    this.types = [...new Set([...declared, ...piped])].filter((type) => !type.includes("*"));
  }

  get names() {
    return [...this.byName.keys()];
  }

  get(name) {
    return this.byName.get(name) ?? null;
  }

  // What a project's generation runs unless the submit names another.
  defaultFor(project) {
    const wanted = project?.pipeline;
    if (wanted && this.byName.has(wanted)) return wanted;
    return this.byName.has(this.fallback) ? this.fallback : (this.names[0] ?? null);
  }

  stages(name) {
    return (this.get(name)?.stages ?? []).map(({ id, label }) => ({ id, label }));
  }

  emits(name, types) {
    return (this.get(name)?.events ?? []).some((type) => types.has(type));
  }

  // The pipeline builds a page the preview draws (no snapshot holds it: an ended
  // generation of it is replayed on load, to draw it again).
  previews(name) {
    return this.emits(name, PREVIEWED);
  }

  // The pipeline edits the project's scenes (the scene list shows, even empty).
  editsScenes(name) {
    return this.emits(name, SCENES);
  }

  // The composer's fields for the pipeline's inputs: [{name, type, label, maxLength}].
  fields(name) {
    const schema = this.get(name)?.inputs;
    const properties = schema && typeof schema.properties === "object" ? schema.properties : {};
    return Object.entries(properties)
      .filter(([, property]) => FIELD_TYPES.has(property?.type))
      .map(([field, property]) => ({
        name: field,
        type: property.type,
        label: typeof property.title === "string" ? property.title : field.replaceAll("_", " "),
        maxLength: Number.isInteger(property.maxLength) ? property.maxLength : null,
        minimum: typeof property.minimum === "number" ? property.minimum : null,
        maximum: typeof property.maximum === "number" ? property.maximum : null,
      }));
  }
}

async function settled(api, path) {
  try {
    return await api("GET", path);
  } catch {
    return null;
  }
}

// What the field holds when the page opens: what was typed last in this browser, else
// (for the visitor) this browser's own id.
export function rememberedInput(pipeline, field) {
  const typed = localStorage.getItem(`${INPUT_KEY}.${pipeline}.${field}`);
  if (typed !== null) return typed;
  return field === VISITOR_FIELD ? browserVisitor() : "";
}

export function rememberInput(pipeline, field, value) {
  localStorage.setItem(`${INPUT_KEY}.${pipeline}.${field}`, value);
}

function browserVisitor() {
  let id = localStorage.getItem(VISITOR_KEY);
  if (!id) {
    // getRandomValues, not randomUUID: a page served over plain http (not a secure
    // context) has only the former.
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    id = `visitor-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
    localStorage.setItem(VISITOR_KEY, id);
  }
  return id;
}
