// Type declarations of keel.js: Keel's engine module (ABI version 2) in JavaScript.

/** The module ABI this package speaks. */
export const ABI_VERSION: 2;

/** An action a decision can take. */
export type Action =
  | "none"
  | "acknowledge"
  | "defer"
  | "drain"
  | "retry"
  | "retry_without_agent"
  | "escalate";

/** `fast` stops at the winner; `full` evaluates every policy and adds the trace. */
export type Mode = "fast" | "full";

/** A time: a Date or an RFC 3339 string. */
export type Time = Date | string;

/** A normalized event (the engine's event schema; open for fields this file does not name). */
export interface KeelEvent {
  id: string;
  time: string;
  source: string;
  kind: "maintenance" | "health" | "operation_failure";
  resource: {
    id?: string;
    name?: string;
    os?: "windows" | "linux";
    region?: string;
    zone?: string;
    is_self?: boolean;
    tags?: Record<string, string>;
    [field: string]: unknown;
  };
  maintenance?: Record<string, unknown> | null;
  health?: Record<string, unknown> | null;
  failure?: Record<string, unknown> | null;
  raw?: unknown;
  [field: string]: unknown;
}

/** A page a decision raises. */
export interface Escalation {
  policy: string;
  severity: string;
  reason: string;
  key: string;
  /** A page already raised for this incident (absent when false). */
  repeat?: boolean;
  [field: string]: unknown;
}

/** One policy's outcome in a full-mode decision. */
export interface TraceEntry {
  policy: string;
  outcome:
    | "skipped_by_index"
    | "false"
    | "matched"
    | "exhausted"
    | "errored"
    | "not_evaluated"
    | "quarantined";
}

/** What the engine decided (the engine's decision schema). */
export interface Decision {
  event_id: string;
  action: Action;
  policy: string | null;
  reason: string | null;
  matched: string[];
  escalations: Escalation[];
  errors: { policy: string; message: string }[];
  warnings: string[];
  trace: TraceEntry[];
  [field: string]: unknown;
}

/** One problem in a policy set, at its file, line and column (1-based). */
export interface Diagnostic {
  file: string;
  line: number;
  column: number;
  /** `file:line:col`. */
  location: string;
  message: string;
  help: string | null;
}

/** What kind of failure a {@link KeelError} is. */
export type ErrorKind =
  | "invalid_request"
  | "invalid_policies"
  | "invalid_event"
  | "unknown_handle"
  | "internal"
  | "invalid_payload";

/** An error the engine reported. */
export class KeelError extends Error {
  readonly name: "KeelError";
  readonly kind: ErrorKind;
  /** Where in the request (`event`, `history[2]`, `payload`), when known. */
  readonly path: string | null;
  readonly line: number | null;
  readonly column: number | null;
  /** Every problem of an `invalid_policies` error. */
  readonly diagnostics: Diagnostic[];
}

/** A policy file: its name in diagnostics, and its YAML. */
export interface PolicyFile {
  name: string;
  yaml: string;
}

export interface DecideOptions {
  /** Default: the current time (the engine reads no clock). */
  now?: Time;
  mode?: Mode;
  /** The correlation history, replayed oldest first. */
  history?: History | HistoryEntry[];
  /** Count this event in the history (default true). */
  record?: boolean;
}

/** A history entry: an event seen, or the decision made for one. */
export type HistoryEntry = KeelEvent | { event: KeelEvent; decision: Decision };

export interface NormalizeOptions {
  /** When the payload was seen (default: now); the time of events the vendor does not date. */
  observedAt?: Time;
  /** This VM's own name: marks `resource.is_self`. */
  selfName?: string;
  /** The HTTP status the payload came with. */
  httpStatus?: number;
  /** The `Retry-After` header, in seconds. */
  retryAfterS?: number;
  /** The operation that failed, where the payload does not say (`create`, `start`, ...). */
  operation?: string;
  /** The state the previous call returned (stateful protocols). */
  state?: unknown;
}

export interface Normalized {
  events: KeelEvent[];
  /** Pass it with the next payload of the same stream. */
  state: unknown;
}

export interface Explained {
  decision: Decision;
  trace: { policy: string; outcome: TraceEntry["outcome"]; won: boolean }[];
  /** What `keel eval --explain` prints. */
  text: string;
}

/** A loaded policy set. */
export class PolicySet {
  readonly handle: number;
  decide(event: KeelEvent, options?: DecideOptions): Decision;
  explain(event: KeelEvent, options?: Omit<DecideOptions, "mode">): Explained;
  /** Frees the set; later calls throw `unknown_handle`. */
  close(): void;
  [Symbol.dispose](): void;
}

/** One instance of the engine module; its methods are synchronous. */
export class Keel {
  static instantiate(
    source?: string | URL | ArrayBuffer | ArrayBufferView | Response | WebAssembly.Module,
  ): Promise<Keel>;
  constructor(instance: WebAssembly.Instance);
  /** The module's linear memory in bytes. */
  readonly memoryBytes: number;
  load(files: PolicyFile[] | Record<string, string>, options?: { defaultAction?: Action }): PolicySet;
  normalize(source: string, payload: unknown, options?: NormalizeOptions): Normalized;
  normalizers(): { name: string; reads: string }[];
}

/** A correlation history kept as the log the module replays. */
export class History {
  constructor(options?: { maxEntries?: number });
  entries: HistoryEntry[];
  maxEntries: number;
  record(event: KeelEvent): void;
  recordDecision(event: KeelEvent, decision: Decision): void;
}

/** The shared instance (loaded on first use). */
export function keel(source?: Parameters<typeof Keel.instantiate>[0]): Promise<Keel>;
export function load(
  files: PolicyFile[] | Record<string, string>,
  options?: { defaultAction?: Action },
): Promise<PolicySet>;
export function normalize(source: string, payload: unknown, options?: NormalizeOptions): Promise<Normalized>;
