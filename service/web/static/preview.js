// The page pipeline's landing page, drawn section by section as its events arrive.
// Everything in it is a model's output: put in as text (el / textContent), never parsed as
// HTML; a section's kind only picks one of a fixed set of layouts.

import { $, el } from "./dom.js";

const KINDS = new Set(["hero", "features", "faq", "cta", "text"]);
const MAX_ITEMS = 50; // a section's items drawn, at most

export class PreviewView {
  constructor() {
    this.panel = $("preview");
    this.title = $("preview-title");
    this.status = $("preview-status");
    this.list = $("preview-sections");
    this.items = new Map(); // section index -> {node, shown}
    this.generationId = null;
    this.state = null;
    this.version = -1;
  }

  render(state) {
    if (state === this.state && state.versions.preview === this.version) return;
    this.state = state;
    this.version = state.versions.preview;
    const preview = state.preview;
    this.panel.hidden = !preview;
    if (!preview || preview.generationId !== this.generationId) {
      this.list.replaceChildren();
      this.items.clear();
      this.generationId = preview?.generationId ?? null;
    }
    if (!preview) return;
    this.panel.dataset.complete = String(preview.complete);
    this.title.textContent = preview.title || "Page preview";
    const count = preview.sections.filter(Boolean).length;
    this.status.textContent = preview.complete ? `${count} sections` : `${count} sections so far...`;
    // One element per section index, redrawn only when its section changed.
    for (const [index, item] of this.items) {
      if (!preview.sections[index]) {
        item.node.remove();
        this.items.delete(index);
      }
    }
    let previous = null;
    preview.sections.forEach((section, index) => {
      if (!section) return;
      const shown = JSON.stringify(section);
      let item = this.items.get(index);
      if (item?.shown !== shown) {
        const node = drawSection(section, index);
        if (item) item.node.replaceWith(node);
        item = { node, shown };
        this.items.set(index, item);
      }
      const expected = previous ? previous.nextSibling : this.list.firstChild;
      if (expected !== item.node) this.list.insertBefore(item.node, expected);
      previous = item.node;
    });
  }
}

function text(value) {
  if (typeof value === "string") return value;
  return typeof value === "number" ? String(value) : "";
}

function drawSection(section, index) {
  const kind = KINDS.has(section.kind) ? section.kind : "text";
  const node = el("section", `preview-section ${kind}`);
  node.dataset.kind = kind;
  node.dataset.index = String(index);
  node.append(el(kind === "hero" ? "h3" : "h4", "heading", text(section.heading)));
  const body = text(section.body);
  if (body) node.append(el("p", "body", body));
  const items = Array.isArray(section.items) ? section.items.slice(0, MAX_ITEMS).map(text).filter(Boolean) : [];
  if (items.length) {
    // A call to action's items are its buttons (drawn, not links: the preview goes nowhere).
    const cta = kind === "cta";
    const list = el(cta ? "div" : "ul", "items");
    for (const item of items) list.append(el(cta ? "span" : "li", cta ? "action" : "", item));
    node.append(list);
  }
  return node;
}
