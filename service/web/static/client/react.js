// useGeneration: one generation's state as React state, on top of genstream.js.
//
// React is a peer dependency: this file imports "react" and nothing else, so the app's
// own React (a bundler's, or an import map's) is the one used.
//
//   const { status, text, files, stage, progress, error, generate, cancel } =
//     useGeneration(client, projectId);
//   <button onClick={() => generate("a todo app")}>Build</button>
//
// Each event is applied once (the client drops repeats across reconnects). Unmounting, or
// changing the client or the project, stops following (closes the EventSource); the
// generation goes on on the server, and cancel() is what stops it.

import { useCallback, useEffect, useRef, useState } from "react";

import { EventType } from "./protocol.js";

const INITIAL = Object.freeze({
  status: "idle", // "submitting", "running", "completed", "failed", "cancelled"
  generationId: null,
  messages: [], // the user's and the assistant's message rows, as created
  text: "", // the assistant's text so far (message.delta), its final content once updated
  stage: null,
  progress: 0,
  files: {}, // path -> {path, content, writing, size, sha256}
  lastEventId: null,
  connection: "idle",
  summary: null,
  usage: null,
  timings: null,
  error: null,
});

// Each event's change to the state: a new state, never a mutated one.
function applyEvent(state, event) {
  switch (event.type) {
    case EventType.MESSAGE_CREATED:
      return { ...state, messages: [...state.messages, event.message] };
    case EventType.MESSAGE_DELTA:
      return { ...state, text: state.text + event.delta };
    case EventType.MESSAGE_UPDATED:
      return event.message.content ? { ...state, text: event.message.content } : state;
    case EventType.STAGE:
      return { ...state, stage: event.stage, progress: event.progress };
    case EventType.FILE_STARTED:
      return withFile(state, event.path, { path: event.path, content: "", writing: true, size: 0, sha256: null });
    case EventType.FILE_DELTA: {
      const file = state.files[event.path];
      if (!file) return state;
      const content = file.content + event.delta;
      return withFile(state, event.path, { ...file, content, size: content.length });
    }
    case EventType.FILE_COMPLETED: {
      const file = state.files[event.path] ?? { path: event.path, content: "" };
      return withFile(state, event.path, { ...file, writing: false, size: event.size, sha256: event.sha256 });
    }
    case EventType.GENERATION_COMPLETED:
      return { ...state, status: "completed", progress: 100, summary: event.summary, usage: event.usage, timings: event.timings };
    case EventType.GENERATION_FAILED:
      return { ...state, status: "failed", error: { code: event.code, message: event.message } };
    case EventType.GENERATION_CANCELLED:
      return { ...state, status: "cancelled", error: { code: "cancelled", message: "the generation was cancelled" } };
    default:
      return state;
  }
}

function withFile(state, path, file) {
  return { ...state, files: { ...state.files, [path]: file } };
}

export function useGeneration(client, projectId) {
  const [state, setState] = useState(INITIAL);
  // The run being followed; a callback of an older one (replaced, or after unmount) is dropped.
  const current = useRef(null);

  useEffect(
    () => () => {
      current.current?.run?.stop();
      current.current = null;
    },
    [client, projectId],
  );

  const generate = useCallback(
    async (prompt, options = {}) => {
      current.current?.run?.stop();
      const ticket = { run: null };
      current.current = ticket;
      const update = (change) => {
        if (current.current === ticket) setState(change);
      };
      update({ ...INITIAL, status: "submitting" });
      try {
        const run = await client.generate(projectId, prompt, {
          ...options,
          onEvent: (event) => {
            update((state) => ({ ...applyEvent(state, event), lastEventId: event.id }));
            options.onEvent?.(event);
          },
          onState: (connection, detail) => {
            update((state) => ({ ...state, connection }));
            options.onState?.(connection, detail);
          },
        });
        ticket.run = run;
        if (current.current !== ticket) run.stop(); // unmounted or replaced meanwhile
        update((state) => ({ ...state, generationId: run.id, status: state.status === "submitting" ? "running" : state.status }));
        return run;
      } catch (error) {
        update((state) => ({ ...state, status: "failed", error: { code: error.code ?? "error", message: error.message } }));
        return null;
      }
    },
    [client, projectId],
  );

  const cancel = useCallback(() => current.current?.run?.cancel() ?? Promise.resolve(null), []);

  const reset = useCallback(() => {
    current.current?.run?.stop();
    current.current = null;
    setState(INITIAL);
  }, []);

  return { ...state, generate, cancel, reset };
}
