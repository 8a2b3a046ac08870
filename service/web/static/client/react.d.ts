// Types of @genstream/client/react (react.js). React is a peer dependency.
import type {
  ApiError,
  FeedState,
  GenerateHandlers,
  GenerationError,
  GenerationRun,
  GenstreamClient,
  Message,
  Timings,
  Usage,
} from "./genstream.js";

export type GenerationHookStatus = "idle" | "submitting" | "running" | "completed" | "failed" | "cancelled";

export interface HookFile {
  path: string;
  content: string;
  writing: boolean;
  size: number;
  sha256: string | null;
}

export interface GenerationState {
  status: GenerationHookStatus;
  generationId: string | null;
  messages: Message[];
  /** The assistant's text so far; its final content once the message is updated. */
  text: string;
  stage: string | null;
  progress: number;
  files: Record<string, HookFile>;
  lastEventId: number | null;
  connection: FeedState;
  summary: string | null;
  usage: Usage | null;
  timings: Timings | null;
  error: { code: string; message: string } | null;
}

export interface UseGeneration extends GenerationState {
  /** Submit and follow; resolves to the run, or null when the submit was refused (see `error`). */
  generate(prompt: string, options?: GenerateHandlers): Promise<GenerationRun | null>;
  /** Cancel the generation on the server. */
  cancel(): Promise<unknown>;
  /** Stop following and forget the state. */
  reset(): void;
}

export declare function useGeneration(client: GenstreamClient, projectId: string): UseGeneration;
export type { ApiError, GenerationError };
