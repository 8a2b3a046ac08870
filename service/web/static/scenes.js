// The scenes pipeline's scenes, keyed by scene id: one element per scene, updated in place
// when an event edits or trims it, removed when one deletes it, kept in position order.

import { $, duration, el } from "./dom.js";

export class ScenesView {
  constructor() {
    this.panel = $("scenes");
    this.list = $("scene-list");
    this.count = $("scenes-count");
    this.empty = $("scenes-empty");
    this.items = new Map(); // scene id -> {node, position, title, length, description, shown}
    this.state = null;
    this.version = -1;
    this.wanted = null;
  }

  // `wanted`: the chosen pipeline edits scenes (the panel shows, even with none yet).
  render(state, wanted) {
    if (state === this.state && state.versions.scenes === this.version && wanted === this.wanted) return;
    this.state = state;
    this.version = state.versions.scenes;
    this.wanted = wanted;
    const scenes = state.orderedScenes();
    this.panel.hidden = !wanted && !scenes.length;
    const keep = new Set(scenes.map((scene) => scene.id));
    for (const [id, item] of this.items) {
      if (!keep.has(id)) {
        item.node.remove();
        this.items.delete(id);
      }
    }
    let previous = null;
    scenes.forEach((scene, index) => {
      const item = this.items.get(scene.id) ?? this.create(scene.id);
      update(item, scene, index);
      const expected = previous ? previous.nextSibling : this.list.firstChild;
      if (expected !== item.node) this.list.insertBefore(item.node, expected);
      previous = item.node;
    });
    this.count.textContent = scenes.length ? `(${scenes.length})` : "";
    this.empty.hidden = scenes.length > 0;
  }

  create(id) {
    const node = el("li", "scene");
    node.dataset.sceneId = id;
    const head = el("div", "scene-head");
    const item = {
      node,
      position: el("span", "position"),
      title: el("strong", "title"),
      length: el("span", "length"),
      description: el("p", "description"),
      shown: null,
    };
    head.append(item.position, item.title, item.length);
    node.append(head, item.description);
    this.items.set(id, item);
    return item;
  }
}

function update(item, scene, index) {
  const title = typeof scene.title === "string" ? scene.title : "";
  const description = typeof scene.description === "string" ? scene.description : "";
  const ms = Number.isFinite(scene.duration_ms) ? scene.duration_ms : null;
  const key = [index, title, description, ms, scene.updated_at].join("\u0000");
  if (item.shown === key) return;
  item.shown = key;
  item.node.dataset.updatedAt = String(scene.updated_at ?? "");
  item.position.textContent = String(index + 1);
  item.title.textContent = title;
  item.length.textContent = ms === null ? "" : duration(ms);
  item.description.textContent = description;
}
