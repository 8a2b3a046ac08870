// Compiled by tests/test_js_client_package.py with `tsc --noEmit --strict`: an app's use of
// @genstream/client and its hook, through the package's own .d.ts files. A type the
// declarations got wrong (or a syntax error in them) fails the compile.
import {
  ApiError,
  createClient,
  GenerationError,
  type GenstreamEvent,
  type GenerationCompletedEvent,
} from "../../../service/web/static/client/genstream.js";
import { useGeneration } from "../../../service/web/static/client/react.js";

declare const EventSourceImpl: new (url: string) => {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  addEventListener(type: string, listener: (event: { data: string }) => void): void;
  close(): void;
};

export async function app(projectId: string): Promise<number> {
  const client = createClient({
    baseUrl: "http://127.0.0.1:8080",
    EventSource: EventSourceImpl,
    tokenSource: async ({ reason, rejected }) => (reason === "reopen" && rejected === null ? "fresh" : null),
    reopenBaseMs: 100,
  });
  const controller = new AbortController();
  const run = await client.generate(projectId, "a todo app", {
    signal: controller.signal,
    onMessageCreated: (message) => message.role.toUpperCase(),
    onDelta: (delta, event) => delta.length + event.message_id.length,
    onStage: (event) => event.progress + event.label.length,
    onFile: (event) => (event.type === "file.delta" ? event.line : event.path.length),
    onComplete: (event) => event.timings.total_ms + (event.usage.completion_tokens ?? 0),
    onError: (error) => (error instanceof GenerationError ? error.code : error instanceof ApiError ? error.status : 0),
  });
  const done: GenerationCompletedEvent = await run.done;
  let total = done.id;
  for await (const event of client.stream(projectId, { lastEventId: 0, signal: controller.signal })) {
    total += narrow(event);
  }
  const zip: Blob = await client.archive(projectId);
  return total + zip.size;
}

function narrow(event: GenstreamEvent): number {
  switch (event.type) {
    case "message.delta":
      return event.delta.length;
    case "file.completed":
      return event.size;
    case "generation.failed":
      return event.retryable ? 1 : 0;
    default:
      return event.id;
  }
}

export function hook(projectId: string): string {
  const state = useGeneration(createClient(), projectId);
  void state.generate("a todo app", { onDelta: (delta) => delta });
  const file = Object.values(state.files)[0];
  return `${state.status} ${state.text} ${file?.content ?? ""} ${state.error?.message ?? ""}`;
}
