// The file tree and the code viewer. A file being written is "typed": a blinking cursor
// at the write position and its line highlighted.

import { $, bytes, el } from "./dom.js";
import { highlightedLines, languageOf } from "./highlight.js";

export class FilesView {
  constructor({ onSelect }) {
    this.tree = $("tree");
    this.treeEmpty = $("tree-empty");
    this.code = $("code");
    this.path = $("viewer-path");
    this.meta = $("viewer-meta");
    this.onSelect = onSelect;
    this.reset();
  }

  reset() {
    this.selected = null;
    this.follow = true; // jump to each new file until the person picks one themselves
    this.treeSignature = null;
    this.shown = null;
    this.tree.replaceChildren();
    this.code.replaceChildren();
  }

  select(path, byPerson) {
    this.selected = path;
    if (byPerson) this.follow = false;
    this.shown = null;
    this.treeSignature = null;
  }

  render(state) {
    const writing = [...state.files.values()].find((f) => f.writing);
    if (writing && this.follow && this.selected !== writing.path) this.select(writing.path, false);
    if (this.selected && !state.files.has(this.selected)) this.select(null, false);
    if (!this.selected && state.files.size) this.select([...state.files.keys()].sort()[0], false);
    this.renderTree(state);
    this.renderViewer(state);
  }

  renderTree(state) {
    const files = [...state.files.values()].sort((a, b) => a.path.localeCompare(b.path));
    const signature = files.map((f) => `${f.path}\u0000${f.writing}\u0000${f.writing ? "" : f.size}`).join("\n");
    if (signature === this.treeSignature) return;
    this.treeSignature = signature;
    this.treeEmpty.hidden = files.length > 0;
    const root = { dirs: new Map(), files: [] };
    for (const file of files) {
      const parts = file.path.split("/");
      let node = root;
      for (const dir of parts.slice(0, -1)) {
        if (!node.dirs.has(dir)) node.dirs.set(dir, { dirs: new Map(), files: [] });
        node = node.dirs.get(dir);
      }
      node.files.push({ name: parts.at(-1), file });
    }
    this.tree.replaceChildren(...this.branch(root));
  }

  branch(node) {
    const items = [];
    for (const [name, child] of [...node.dirs].sort(([a], [b]) => a.localeCompare(b))) {
      const item = el("li", "dir");
      const list = el("ul");
      list.append(...this.branch(child));
      item.append(el("span", "dir-name", `${name}/`), list);
      items.push(item);
    }
    for (const { name, file } of node.files) {
      const button = el("button", "file");
      button.type = "button";
      button.dataset.path = file.path;
      button.dataset.state = file.writing ? "writing" : "done";
      button.title = file.path;
      if (file.path === this.selected) button.setAttribute("aria-current", "true");
      button.append(el("span", "name", name), el("span", "size", file.writing ? "writing" : bytes(file.size)));
      button.addEventListener("click", () => {
        this.select(file.path, !file.writing);
        if (file.writing) this.follow = true;
        this.onSelect(file.path);
      });
      const item = el("li");
      item.append(button);
      items.push(item);
    }
    return items;
  }

  renderViewer(state) {
    const file = this.selected ? state.files.get(this.selected) : null;
    const key = file ? `${file.path}\u0000${file.writing}\u0000${file.content === null ? -1 : file.content.length}` : "";
    if (key === this.shown) return;
    this.shown = key;
    this.path.textContent = file ? file.path : "No file selected";
    this.code.dataset.path = file ? file.path : "";
    this.code.dataset.state = file ? (file.writing ? "writing" : "done") : "none";
    if (!file) {
      this.meta.textContent = "";
      this.code.replaceChildren();
      return;
    }
    if (file.content === null) {
      this.meta.textContent = "loading...";
      this.code.replaceChildren();
      this.onSelect(file.path);
      return;
    }
    const stick = this.code.scrollHeight - this.code.scrollTop - this.code.clientHeight < 40;
    const lines = highlightedLines(file.content, file.path);
    // A finished file's final newline does not start another line.
    if (!file.writing && lines.length > 1 && lines.at(-1).length === 0) lines.pop();
    const nodes = lines.map((pieces) => {
      const line = el("span", "line");
      line.append(...pieces.map(([text, className]) => (className ? el("span", className, text) : text)));
      return line;
    });
    this.code.dataset.language = languageOf(file.path) ?? "text";
    if (file.writing) {
      const current = nodes.at(-1);
      current.classList.add("current");
      current.append(el("span", "caret"));
    }
    this.code.replaceChildren(...nodes);
    this.meta.textContent = file.writing ? `writing, line ${lines.length}` : `${lines.length} lines, ${bytes(file.size)}`;
    if (file.writing && stick) this.code.scrollTop = this.code.scrollHeight;
  }
}
