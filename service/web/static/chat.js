// The message list, keyed by message id: one element per database row, never two.

import { $, el } from "./dom.js";

const ROLE_LABELS = { user: "You", assistant: "Assistant" };
const STATUS_NOTES = { cancelled: "Cancelled", error: "Failed" };

export class ChatView {
  constructor() {
    this.list = $("messages");
    this.empty = $("chat-empty");
    this.items = new Map(); // message id -> {node, body, note, shown}
    this.state = null;
    this.version = -1;
  }

  reset() {
    this.list.replaceChildren();
    this.items.clear();
    this.state = null;
    this.version = -1;
  }

  render(state) {
    if (state === this.state && state.versions.messages === this.version) return;
    this.state = state;
    this.version = state.versions.messages;
    const messages = state.orderedMessages();
    const keep = new Set(messages.map((m) => m.id));
    for (const [id, item] of this.items) {
      if (!keep.has(id)) {
        item.node.remove();
        this.items.delete(id);
      }
    }
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    let previous = null;
    for (const message of messages) {
      const item = this.items.get(message.id) ?? this.create(message);
      this.update(item, message);
      const expected = previous ? previous.nextSibling : this.list.firstChild;
      if (expected !== item.node) this.list.insertBefore(item.node, expected);
      previous = item.node;
    }
    this.empty.hidden = messages.length > 0;
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  create(message) {
    const node = el("li", `message ${message.role}`);
    node.dataset.messageId = message.id;
    const role = el("div", "role", ROLE_LABELS[message.role] ?? message.role);
    const body = el("div", "body");
    const note = el("div", "status-note");
    node.append(role, body, note);
    const item = { node, body, note, shown: null };
    this.items.set(message.id, item);
    return item;
  }

  update(item, message) {
    const pending = message.status === "pending";
    const text = pending ? message.streamed : message.content;
    const key = `${message.status}\u0000${text}`;
    if (item.shown === key) return;
    item.shown = key;
    item.node.dataset.status = message.status;
    item.node.classList.toggle("pending", pending);
    // Screen readers announce the message once it is complete, not every delta.
    item.node.setAttribute("aria-busy", String(pending));
    if (pending && !text) {
      // The pipeline's pending text ("Generating code..." for code), its dots pulsing one
      // after the other.
      const label = (message.content || "Working").replace(/(\.{3}|\u2026)$/, "");
      const dots = el("span", "dots");
      for (let i = 0; i < 3; i += 1) dots.append(el("span", "", "."));
      item.body.replaceChildren(document.createTextNode(label), dots);
    } else {
      item.body.textContent = text;
      if (pending) item.body.append(el("span", "caret"));
    }
    item.note.textContent = STATUS_NOTES[message.status] ?? "";
  }
}
