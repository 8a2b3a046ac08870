// Types of @genstream/client (genstream.js). The row and event shapes are genstream's own:
// tests/test_js_client_package.py holds each interface below to /api/openapi.json's
// schemas (Message, Generation, Event) and to the events a real generation writes.

export type EventTypeName =
  | "message.created"
  | "message.delta"
  | "message.updated"
  | "generation.started"
  | "stage"
  | "file.started"
  | "file.delta"
  | "file.completed"
  | "validation"
  | "generation.completed"
  | "generation.failed"
  | "generation.cancelled";

export type GenerationStatus = "pending" | "running" | "completed" | "failed" | "cancelled";
export type MessageStatus = "complete" | "pending" | "success" | "error" | "cancelled";

export interface Message {
  id: string;
  project_id: string;
  generation_id: string | null;
  role: "user" | "assistant";
  status: MessageStatus;
  content: string;
  created_at: number;
  updated_at: number;
}

export interface GenerationErrorDetail {
  code: string;
  message: string;
  retryable: boolean;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface Timings {
  total_ms: number;
  first_token_ms: number | null;
  tokens_per_second: number | null;
  stages: Record<string, number>;
}

export interface Generation {
  id: string;
  project_id: string;
  client_request_id: string | null;
  prompt: string;
  image_urls: string[];
  status: GenerationStatus;
  stage: string | null;
  progress: number;
  error: GenerationErrorDetail | null;
  usage: Usage | null;
  timings: Timings | null;
  provider: string;
  model: string;
  user_message_id: string;
  assistant_message_id: string;
  first_event_id: number;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  /** The pipeline that runs it, and the inputs it was given. */
  pipeline: string;
  inputs: Record<string, unknown>;
}

export interface StageInfo {
  id: string;
  label: string;
}

/** What every stored event carries; its type adds the rest. */
export interface EventBase<T extends EventTypeName = EventTypeName> {
  id: number;
  type: T;
  project_id: string;
  generation_id: string | null;
  ts: number;
}

export interface MessageCreatedEvent extends EventBase<"message.created"> {
  message: Message;
}
export interface MessageDeltaEvent extends EventBase<"message.delta"> {
  message_id: string;
  delta: string;
}
export interface MessageUpdatedEvent extends EventBase<"message.updated"> {
  message: MessageUpdate;
}
export interface MessageUpdate {
  id: string;
  status: MessageStatus;
  content: string;
}
export interface GenerationStartedEvent extends EventBase<"generation.started"> {
  /** The pipeline that runs it, and its declared stages. */
  pipeline: string;
  stages: StageInfo[];
  provider: string;
  model: string;
}
export interface StageEvent extends EventBase<"stage"> {
  stage: string;
  label: string;
  status: "active" | "complete";
  progress: number;
}
export interface FileStartedEvent extends EventBase<"file.started"> {
  path: string;
  replaces: boolean;
}
export interface FileDeltaEvent extends EventBase<"file.delta"> {
  path: string;
  delta: string;
  line: number;
}
export interface FileCompletedEvent extends EventBase<"file.completed"> {
  path: string;
  size: number;
  sha256: string;
}
export interface ValidationEvent extends EventBase<"validation"> {
  check: string;
  ok: boolean;
  detail: string;
  path: string;
}
export interface GenerationCompletedEvent extends EventBase<"generation.completed"> {
  summary: string;
  usage: Usage;
  timings: Timings;
}
export interface GenerationFailedEvent extends EventBase<"generation.failed"> {
  code: string;
  message: string;
  retryable: boolean;
}
export interface GenerationCancelledEvent extends EventBase<"generation.cancelled"> {}

export type GenstreamEvent =
  | MessageCreatedEvent
  | MessageDeltaEvent
  | MessageUpdatedEvent
  | GenerationStartedEvent
  | StageEvent
  | FileStartedEvent
  | FileDeltaEvent
  | FileCompletedEvent
  | ValidationEvent
  | GenerationCompletedEvent
  | GenerationFailedEvent
  | GenerationCancelledEvent;
export type FileEvent = FileStartedEvent | FileDeltaEvent | FileCompletedEvent;
export type TerminalEvent = GenerationCompletedEvent | GenerationFailedEvent | GenerationCancelledEvent;

/** How the feed is connected: "idle" once stopped. */
export type FeedState = "idle" | "connecting" | "live" | "reconnecting" | "polling" | "poll-error";
/** How an event reached the client. */
export type Via = "stream" | "poll";

export interface TokenRequest {
  /** "reopen": before a closed stream is opened again; "unauthorized": after a 401. */
  reason: "reopen" | "unauthorized";
  /** The token refused (after a 401), else null. */
  rejected: string | null;
}
/** A fresh token; a falsy answer keeps the token there is. */
export type TokenSource = (request: TokenRequest) => Promise<string | null | undefined> | string | null | undefined;

export interface Tuning {
  reopenBaseMs?: number;
  reopenMaxMs?: number;
  pollAfterFailures?: number;
  pollIntervalMs?: number;
  pageLimit?: number;
  pollPages?: number;
  submitRetries?: number;
  submitRetryBaseMs?: number;
  submitRetryMaxMs?: number;
}

export interface ClientOptions extends Tuning {
  /** Where genstream's /api is: "" (the default) for the page's own origin. */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer`, and as `?token=` on streams. */
  token?: string | null;
  tokenSource?: TokenSource | null;
  fetch?: typeof fetch;
  /** The EventSource class: the browser's by default; in Node, the npm `eventsource` one. */
  EventSource?: EventSourceConstructor;
  random?: () => number;
}

export interface EventSourceConstructor {
  new (url: string, init?: { withCredentials?: boolean }): EventSourceLike;
}
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  addEventListener(type: string, listener: (event: { data: string }) => void): void;
  close(): void;
}

export interface SubmitOptions {
  /** Sent with the submit, and with each retry of it: the server creates one generation. */
  clientRequestId?: string;
  imageUrls?: string[];
  /** The pipeline that runs it (GET /api/pipelines); left out: the project's default. */
  pipeline?: string;
  /** The pipeline's inputs, checked against its `inputs` schema. */
  inputs?: Record<string, unknown>;
}

export interface GenerateHandlers extends SubmitOptions {
  /** Aborting it cancels the generation. */
  signal?: AbortSignal;
  onMessageCreated?(message: Message, event: MessageCreatedEvent): void;
  onMessageUpdated?(message: MessageUpdate, event: MessageUpdatedEvent): void;
  onStage?(event: StageEvent): void;
  onDelta?(delta: string, event: MessageDeltaEvent): void;
  onFile?(event: FileEvent): void;
  /** Every event of the generation, the ones above included. */
  onEvent?(event: GenstreamEvent): void;
  onComplete?(event: GenerationCompletedEvent): void;
  /** The submit refused, the generation failed or cancelled (a GenerationError). */
  onError?(error: ApiError | GenerationError | Error): void;
  onState?(state: FeedState, detail: string): void;
}

export interface SubmitAnswer {
  generation: Generation;
  user_message: Message;
  assistant_message: Message;
  stream_url: string;
  created: boolean;
}

export interface GenerationRun {
  id: string;
  generation: Generation;
  userMessage: Message;
  assistantMessage: Message;
  /** false: the server had it already (a repeated client_request_id). */
  created: boolean;
  cancel(): Promise<Generation>;
  /** Stop following; the generation goes on. */
  stop(): void;
  /** Resolves with generation.completed; rejects with a GenerationError. */
  done: Promise<GenerationCompletedEvent>;
}

export interface EventsPage {
  events: GenstreamEvent[];
  last_event_id: number;
  has_more: boolean;
}

export interface StreamOptions {
  /** Resume after this id; none: from now on. */
  lastEventId?: number | null;
  signal?: AbortSignal;
  onState?(state: FeedState, detail: string): void;
}

export interface FollowOptions {
  after?: number | null;
  onEvent(event: GenstreamEvent, via: Via): void;
  onState?(state: FeedState, detail: string): void;
  /** Event types beyond the built-in ones to take from the stream (a pipeline's, an app's). */
  types?: string[];
}

export declare class Feed {
  readonly projectId: string;
  /** The last id delivered; null before the stream said where it starts. */
  readonly cursor: number | null;
  readonly state: FeedState;
  stop(): void;
}

export declare class GenstreamClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  token: string | null;
  url(path: string): string;
  streamUrl(path: string): string;
  request<T = unknown>(method: string, path: string, body?: unknown, init?: { signal?: AbortSignal }): Promise<T>;
  /** The Response once ok (a 401 retried with a fresh token); an ApiError otherwise. */
  send(method: string, path: string, body?: unknown, init?: { signal?: AbortSignal; accept?: string }): Promise<Response>;
  /** The project's files as a .zip. */
  archive(projectId: string): Promise<Blob>;
  submit(projectId: string, prompt: string, options?: SubmitOptions): Promise<SubmitAnswer>;
  cancel(generationId: string): Promise<Generation>;
  generate(projectId: string, prompt: string, handlers?: GenerateHandlers): Promise<GenerationRun>;
  stream(projectId: string, options?: StreamOptions): AsyncGenerator<GenstreamEvent, void, undefined>;
  follow(projectId: string, options: FollowOptions): Feed;
  events(projectId: string, after: number, limit?: number): Promise<EventsPage>;
  replay(projectId: string, after: number, apply: (event: GenstreamEvent) => void): Promise<number>;
}

export declare function createClient(options?: ClientOptions): GenstreamClient;

export declare class ApiError extends Error {
  /** The HTTP status; 0 when no answer came (the network). */
  readonly status: number;
  readonly code: string;
  readonly field: string | null;
}

export declare class GenerationError extends Error {
  /** The failure's code, or "cancelled". */
  readonly code: string;
  readonly event: GenerationFailedEvent | GenerationCancelledEvent;
}

export declare const DEFAULTS: Readonly<Required<Tuning>>;
export declare function backoff(failures: number, baseMs: number, maxMs: number, random?: () => number): number;
export declare function newRequestId(): string;
export declare function segment(value: string): string;
export declare function filePath(path: string): string;
