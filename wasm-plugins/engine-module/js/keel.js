// Keel's engine in JavaScript: the engine's WebAssembly module (ABI version 2) behind a small
// API. The same code decides here as in the native `keel` binary; JSON crosses the boundary.
//
//   import { Keel } from "keel-engine";
//   const keel = await Keel.instantiate();          // the module next to this file
//   const policies = keel.load([{ name: "vm-agent.yaml", yaml }]);
//   const decision = policies.decide(event, { now: "2021-10-13T14:05:03Z" });
//
// Works in Node (18 and later) and in browsers; it imports nothing.

/** The module ABI this package speaks. */
export const ABI_VERSION = 2;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * An error the engine reported: `kind` says which (`invalid_policies`, `invalid_event`,
 * `invalid_payload`, `invalid_request`, `unknown_handle`, `internal`); policy errors carry
 * `diagnostics` with each problem's file, line and column.
 */
export class KeelError extends Error {
  constructor(error) {
    super(String(error?.message ?? "unknown error"));
    this.name = "KeelError";
    this.kind = String(error?.kind ?? "internal");
    this.path = error?.path ?? null;
    this.line = error?.line ?? null;
    this.column = error?.column ?? null;
    this.diagnostics = Array.isArray(error?.diagnostics)
      ? error.diagnostics.map((d) => ({
          file: String(d.file),
          line: Number(d.line),
          column: Number(d.column),
          location: String(d.location),
          message: String(d.message),
          help: d.help == null ? null : String(d.help),
        }))
      : [];
  }
}

const isNode =
  typeof process !== "undefined" && process.versions != null && process.versions.node != null;

/** The module's bytes (or a compiled module) from whatever `source` is. */
async function moduleFrom(source) {
  if (source instanceof WebAssembly.Module) return source;
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) return WebAssembly.compile(source);
  if (typeof Response !== "undefined" && source instanceof Response) {
    return WebAssembly.compile(await source.arrayBuffer());
  }
  const url = source == null ? new URL("./keel_engine_module.wasm", import.meta.url) : source;
  const asUrl = url instanceof URL ? url : new URL(String(url), isNode ? `file://${process.cwd()}/` : globalThis.location?.href);
  if (isNode && asUrl.protocol === "file:") {
    const { readFile } = await import("node:fs/promises");
    return WebAssembly.compile(await readFile(asUrl));
  }
  const response = await fetch(asUrl);
  if (!response.ok) {
    throw new KeelError({
      kind: "invalid_request",
      message: `cannot fetch the engine module ${asUrl}: HTTP ${response.status}`,
    });
  }
  return WebAssembly.compile(await response.arrayBuffer());
}

/** A time as the engine reads it: RFC 3339. */
function rfc3339(t, what) {
  if (t instanceof Date) {
    if (Number.isNaN(t.getTime())) throw new KeelError({ kind: "invalid_request", message: `${what} is an invalid Date` });
    return t.toISOString();
  }
  if (typeof t === "string") return t;
  throw new KeelError({ kind: "invalid_request", message: `${what} must be a Date or an RFC 3339 string` });
}

/** One instance of the engine module. Its methods are synchronous. */
export class Keel {
  #x;

  /**
   * Loads the module: `source` is a URL or path of the `.wasm` file, its bytes, a `Response`,
   * or a compiled `WebAssembly.Module`; by default the `keel_engine_module.wasm` beside this
   * file (read from disk in Node, fetched in a browser).
   */
  static async instantiate(source) {
    const module = await moduleFrom(source);
    const instance = await WebAssembly.instantiate(module, {});
    return new Keel(instance);
  }

  /** Wraps an instance of the module (see {@link Keel.instantiate}). */
  constructor(instance) {
    const x = instance.exports;
    for (const name of ["memory", "abi_version", "alloc", "free", "load", "decide", "unload", "normalize", "normalizers", "last_error"]) {
      if (!(name in x)) {
        throw new KeelError({ kind: "invalid_request", message: `not Keel's engine module: no \`${name}\` export (ABI ${ABI_VERSION} is needed)` });
      }
    }
    const abi = x.abi_version();
    if (abi !== ABI_VERSION) {
      throw new KeelError({ kind: "invalid_request", message: `the engine module speaks ABI ${abi}; this package needs ${ABI_VERSION}` });
    }
    this.#x = x;
  }

  /** The module's linear memory in bytes (it grows, never shrinks). */
  get memoryBytes() {
    return this.#x.memory.buffer.byteLength;
  }

  /** Copies `bytes` into a fresh buffer of the module: [ptr, len]. */
  #put(bytes) {
    const ptr = this.#x.alloc(bytes.length);
    if (ptr === 0 && bytes.length > 0) {
      throw new KeelError({ kind: "internal", message: `the engine module is out of memory (${bytes.length} bytes asked)` });
    }
    new Uint8Array(this.#x.memory.buffer, ptr, bytes.length).set(bytes);
    return [ptr, bytes.length];
  }

  /** Reads, frees and parses a packed result; throws its error object. */
  #take(packed) {
    if (packed === 0n) return null;
    const ptr = Number(packed >> 32n);
    const len = Number(packed & 0xffffffffn);
    let text;
    try {
      text = decoder.decode(new Uint8Array(this.#x.memory.buffer, ptr, len));
    } finally {
      this.#x.free(ptr, len);
    }
    const value = JSON.parse(text);
    if (value !== null && typeof value === "object" && !Array.isArray(value) && "error" in value) {
      throw new KeelError(value.error);
    }
    return value;
  }

  /** Calls `f(...pre, ptr, len)` with `request` as JSON; frees the request afterwards. */
  #call(f, request, ...pre) {
    const [ptr, len] = this.#put(encoder.encode(JSON.stringify(request)));
    try {
      return f(...pre, ptr, len);
    } finally {
      this.#x.free(ptr, len);
    }
  }

  /** The error of the latest call, or null. */
  #lastError() {
    try {
      this.#take(this.#x.last_error());
    } catch (e) {
      return e;
    }
    return new KeelError({ kind: "internal", message: "the engine module failed without saying why" });
  }

  /**
   * Loads a policy set: `files` is a list of `{name, yaml}` (or an object of name → YAML).
   * Throws a {@link KeelError} of kind `invalid_policies` with every problem's position when
   * the set does not load. Free the set with `close()` when done.
   */
  load(files, { defaultAction } = {}) {
    const list = Array.isArray(files)
      ? files.map((f) => ({ name: String(f.name), yaml: String(f.yaml) }))
      : Object.entries(files ?? {}).map(([name, yaml]) => ({ name, yaml: String(yaml) }));
    const request = { files: list };
    if (defaultAction != null) request.default_action = defaultAction;
    const handle = this.#call(this.#x.load, request);
    if (handle <= 0) throw this.#lastError();
    return new PolicySet(this, handle, (h, req) => this.#take(this.#call(this.#x.decide, req, h)), (h) => {
      if (this.#x.unload(h) !== 0) throw this.#lastError();
    });
  }

  /**
   * Turns one vendor payload into normalized events: `source` is a normalizer's name (see
   * {@link Keel#normalizers}); `payload` the text the vendor sent, or its parsed JSON. Pass the
   * returned `state` with the next payload of a stateful stream (Scheduled Events).
   */
  normalize(source, payload, { observedAt, selfName, httpStatus, retryAfterS, operation, state } = {}) {
    const request = {
      source: String(source),
      payload,
      observed_at: rfc3339(observedAt ?? new Date(), "observedAt"),
    };
    if (selfName != null) request.self_name = String(selfName);
    if (httpStatus != null) request.http_status = httpStatus;
    if (retryAfterS != null) request.retry_after_s = retryAfterS;
    if (operation != null) request.operation = operation;
    if (state != null) request.state = state;
    return this.#take(this.#call(this.#x.normalize, request));
  }

  /** Every normalizer: `[{name, reads}]`. */
  normalizers() {
    return this.#take(this.#x.normalizers());
  }
}

const OUTCOMES = {
  skipped_by_index: "skipped by index",
  "false": "evaluated false",
  matched: "matched",
  exhausted: "matched, retries spent",
  errored: "errored",
  not_evaluated: "not evaluated",
  quarantined: "quarantined plugin",
};

/** A loaded policy set. */
export class PolicySet {
  #keel;
  #handle;
  #decide;
  #unload;

  /** @internal Made by {@link Keel#load}. */
  constructor(keel, handle, decide, unload) {
    this.#keel = keel;
    this.#handle = handle;
    this.#decide = decide;
    this.#unload = unload;
  }

  /** The module handle (for diagnostics). */
  get handle() {
    return this.#handle;
  }

  /**
   * Decides one normalized event. `now` (a Date or RFC 3339; default the current time: the
   * engine reads no clock), `mode` (`fast` or `full`, which adds the per-policy trace),
   * `history` (the correlation log: events, and `{event, decision}` for each decision; a
   * {@link History} or its `entries`), `record` (default true: count this event in the history).
   */
  decide(event, { now, mode, history, record } = {}) {
    if (this.#handle === 0) throw new KeelError({ kind: "unknown_handle", message: "this policy set was closed" });
    const request = { event, ctx: { now: rfc3339(now ?? new Date(), "now") } };
    if (mode != null) request.ctx.mode = mode;
    if (history != null) request.history = history instanceof History ? history.entries : history;
    if (record != null) request.record = Boolean(record);
    return this.#decide(this.#handle, request);
  }

  /**
   * Decides in `full` mode and explains: `{decision, trace, text}`, where `trace` is every
   * policy's outcome in rank order (`won` marks the winner) and `text` is what
   * `keel eval --explain` prints for it.
   */
  explain(event, options = {}) {
    const decision = this.decide(event, { ...options, mode: "full" });
    const trace = (decision.trace ?? []).map((t) => ({
      policy: t.policy,
      outcome: t.outcome,
      won: decision.policy === t.policy,
    }));
    const lines = [
      `event:    ${decision.event_id}`,
      `action:   ${decision.action}`,
      `policy:   ${decision.policy ?? "- (default)"}`,
      `reason:   ${decision.reason ?? ""}`,
    ];
    for (const e of decision.escalations ?? []) lines.push(`escalate: [${e.severity}] ${e.policy}: ${e.reason}`);
    for (const e of decision.errors ?? []) lines.push(`error:    ${e.policy}: ${e.message}`);
    for (const w of decision.warnings ?? []) lines.push(`warning:  ${w}`);
    if (trace.length > 0) {
      lines.push("explain:");
      for (const t of trace) {
        lines.push(`  ${(OUTCOMES[t.outcome] ?? t.outcome).padEnd(22)} ${t.policy}${t.won ? "  <- wins" : ""}`);
      }
    }
    return { decision, trace, text: lines.join("\n") + "\n" };
  }

  /** Frees the set in the module; later calls throw `unknown_handle`. */
  close() {
    if (this.#handle === 0) return;
    const h = this.#handle;
    this.#handle = 0;
    this.#unload(h);
  }

  /** `using policies = keel.load(...)` frees the set at the end of the scope. */
  [Symbol.dispose ?? Symbol.for("Symbol.dispose")]() {
    this.close();
  }
}

/**
 * A correlation history kept as the log the module replays: call `record(event)` when an event
 * arrives and `recordDecision(event, decision)` after deciding it, then pass it to `decide`
 * with `record: false` (the event is already in it). `maxEntries` bounds the log (oldest go).
 */
export class History {
  constructor({ maxEntries = 10000 } = {}) {
    this.entries = [];
    this.maxEntries = maxEntries;
  }

  /** An event was seen. */
  record(event) {
    this.#push(event);
  }

  /** `decision` was made for `event`. */
  recordDecision(event, decision) {
    this.#push({ event, decision });
  }

  #push(entry) {
    this.entries.push(entry);
    if (this.entries.length > this.maxEntries) this.entries.splice(0, this.entries.length - this.maxEntries);
  }
}

let shared;

/** The shared instance of {@link load} and {@link normalize} (loaded on first use). */
export async function keel(source) {
  shared ??= Keel.instantiate(source);
  return shared;
}

/** `(await keel()).load(files, options)`. */
export async function load(files, options) {
  return (await keel()).load(files, options);
}

/** `(await keel()).normalize(source, payload, options)`. */
export async function normalize(source, payload, options) {
  return (await keel()).normalize(source, payload, options);
}
