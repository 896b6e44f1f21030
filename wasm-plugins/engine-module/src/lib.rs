//! # keel-engine-module
//!
//! Keel's engine as a WebAssembly core module: build this crate for `wasm32-unknown-unknown`
//! and any Wasm runtime can load policy sets and decide events with the same code as the
//! native engine, exchanging JSON through the module's linear memory. It imports nothing.
//!
//! ```text
//! cargo build -p keel-engine-module --target wasm32-unknown-unknown --release
//! # → target/wasm32-unknown-unknown/release/keel_engine_module.wasm
//! ```
//!
//! ## The ABI (version 2)
//!
//! Pointers and lengths are `i32` (wasm32 addresses and byte counts, read as unsigned). A
//! *packed* result is an `i64` holding `ptr << 32 | len`: the high 32 bits are the address of
//! a buffer of JSON in the module's exported `memory`, the low 32 bits its length. `0` means
//! no buffer.
//!
//! | export | signature | what it does |
//! | --- | --- | --- |
//! | `abi_version` | `() -> i32` | `2` (version 1 had no `normalize` or `normalizers`) |
//! | `alloc` | `(len: i32) -> i32` | a buffer of `len` bytes for the caller to write a request into; `0` if memory is exhausted |
//! | `free` | `(ptr: i32, len: i32)` | releases a buffer from `alloc`, or one the module returned (packed) |
//! | `load` | `(ptr: i32, len: i32) -> i32` | loads a policy set; a handle `> 0`, or a negative [`ErrorKind::code`] |
//! | `decide` | `(handle: i32, ptr: i32, len: i32) -> i64` | decides one event; packed Decision JSON, or packed error JSON |
//! | `unload` | `(handle: i32) -> i32` | drops a policy set: `0`, or a negative [`ErrorKind::code`] |
//! | `normalize` | `(ptr: i32, len: i32) -> i64` | turns one vendor payload into events; packed `{"events", "state"}` JSON, or packed error JSON |
//! | `normalizers` | `() -> i64` | packed JSON list of the normalizers: `[{"name", "reads"}]` |
//! | `last_error` | `() -> i64` | packed error JSON of the latest `load`, `decide`, `normalize` or `unload` call, or `0` when it succeeded |
//!
//! Ownership: the caller owns what it allocates (the module only reads request buffers during
//! the call; free them, or reuse them, afterwards) and owns every packed buffer the module
//! returns: read it, then `free(ptr, len)` it.
//!
//! **`load`** takes
//!
//! ```json
//! {"files": [{"name": "standard/azure/vm-agent.yaml", "yaml": "policies:\n  - ..."}],
//!  "default_action": "none"}
//! ```
//!
//! `name` is what diagnostics call the file; `default_action` (optional, default `none`) is the
//! action when no policy matches. The set is validated as a whole, exactly as
//! [`keel_engine::EngineBuilder`] does: a set with any problem is not loaded.
//!
//! **`decide`** takes
//!
//! ```json
//! {"event": {"id": "...", "time": "...", "source": "...", "kind": "...", "resource": {}},
//!  "ctx": {"now": "2021-10-13T14:05:03Z", "mode": "full"},
//!  "history": [{"id": "e1", "...": "..."}, {"event": {"id": "e1", "...": "..."}, "decision": {"...": "..."}}],
//!  "record": true}
//! ```
//!
//! `event` is a normalized [`keel_engine::Event`]; `ctx.now` is the current time in RFC 3339
//! (the module reads no clock), `ctx.mode` is `fast` (the default) or `full` (per-policy
//! trace).
//!
//! `history` is optional: without it, `history.*` queries in CEL count 0 and the decision says
//! so in a warning, as [`keel_engine::Engine::decide`] does. With it, the module replays it
//! into a fresh [`keel_engine::History`], oldest first, and decides with
//! [`keel_engine::Engine::decide`] with [`keel_engine::Ctx::with_history`]. Each entry is one call on the history: a bare event is
//! [`keel_engine::History::record`] (an event seen), `{"event": …, "decision": …}` is
//! [`keel_engine::History::record_decision`] (the Decision JSON `decide` returned for that
//! event, which `history.actions(…)` and [`keel_engine::Escalation::repeat`] read; it does not
//! record the event again). So a caller that keeps its history as a log appends the event, then
//! `{"event", "decision"}`, for every event it decides. The event being decided is recorded
//! last, so that its own occurrence counts, unless `record` is `false` (for re-deciding an event
//! the history already holds).
//!
//! The output is the [`keel_engine::Decision`] JSON, exactly as the native engine serializes it.
//!
//! **`normalize`** takes
//!
//! ```json
//! {"source": "azure.arm", "payload": {"error": {"code": "VMAgentStatusCommunicationError"}},
//!  "observed_at": "2021-10-13T14:05:00Z", "operation": "create", "self_name": "web-1",
//!  "http_status": 409, "retry_after_s": 30, "state": {}}
//! ```
//!
//! `source` is a normalizer's name (`normalizers` lists them). `payload` is what the vendor
//! sent: a JSON string is taken as the payload's text (a plain-text answer such as GCP's
//! `MIGRATE_ON_HOST_MAINTENANCE`, or an HTTP response for the `.http` forms), any other JSON
//! value as that JSON. `observed_at` (RFC 3339) is when the payload was seen: the time of
//! events the vendor does not date; the module reads no clock. The rest is optional, as in
//! [`keel_engine::normalize::Input`]. `state` is the [`keel_engine::normalize::NormalizerState`]
//! the previous call returned (stateful protocols: Scheduled Events incarnations, events that
//! vanished); omit it on the first call. The output is
//! `{"events": [...], "state": {...}}`: the normalized events and the state to pass next time.
//!
//! **Errors** are JSON objects of one shape, returned by `decide` in place of the decision and by
//! `last_error` after any failed call:
//!
//! ```json
//! {"error": {"kind": "invalid_policies",
//!            "message": "policies/bad.yaml:4:25: unknown field `categry` in `event.failure`\n  help: did you mean `category`?",
//!            "diagnostics": [{"file": "policies/bad.yaml", "line": 4, "column": 25,
//!                             "location": "policies/bad.yaml:4:25",
//!                             "message": "unknown field `categry` in `event.failure`",
//!                             "help": "did you mean `category`?"}]}}
//! ```
//!
//! `kind` is one of [`ErrorKind`]; `path` (`event`, `history[2]`, …), `line` and `column` (in the
//! request, 1-based; for `invalid_payload`, `path` is `payload` and they are in the payload's
//! text) are given where known. A Decision never has a top-level `error` key.
//!
//! ## Failure model
//!
//! Every request is validated and every failure is an error object: malformed JSON, bytes
//! that are not UTF-8, an out-of-range buffer, an unknown handle. A policy that fails at run
//! time is a [`keel_engine::PolicyError`] in the decision, as natively. Natively, a panic in any
//! export is also caught and reported as an `internal` error. On `wasm32-unknown-unknown`
//! Rust panics abort, so a panic (a bug: no input should cause one) becomes a trap; the host
//! must then drop the instance. That includes the one panic the native engine catches itself:
//! a `cel` interpreter panic, natively a policy error ("the CEL interpreter failed on this
//! input"), traps here (the test decides every library case at the ends of time too, and none
//! does). Running out of memory traps as well; bound it with the runtime's memory limit.
//!
//! ## Stack
//!
//! The native engine loads policies on a thread with a 64 MiB stack because the `cel` parser
//! recurses deeply; a wasm32 build has no threads and loads in place, on the module's shadow
//! stack. That stack is laid out first in linear memory (`--stack-first`), so an overflow traps
//! rather than overwrites data. Measured in wasmtime:
//!
//! | build | loading `policies/standard` | the deepest accepted expression (24 bracket levels) | stack |
//! | --- | --- | --- | --- |
//! | `--release` | about 18 KiB | about 80 KiB | rustc's default, 1 MiB |
//! | debug (opt-level 0) | about 400 KiB | about 2.2 MiB | 8 MiB, set by `build.rs` |
//!
//! So release builds keep the default, and the crate's `build.rs` raises the stack with
//! `-zstack-size` only for unoptimized wasm32 builds, which would otherwise trap on deep
//! expressions. `host/tests/engine_module.rs` measures the release build's use and fails past
//! a quarter of its stack.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_engine::normalize::{Input, NormalizeError, NormalizerState};
use keel_engine::{
    Action, Ctx, Decision, Engine, Event, EventError, History, LoadError, Mode, Timestamp,
};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod ffi;

/// The version of the ABI described in the crate docs; `abi_version` returns it.
pub const ABI_VERSION: i32 = 2;

/// What kind of failure an error object reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is not UTF-8, not JSON, or not of the request's shape (including a bad
    /// `ctx` or a bad buffer).
    InvalidRequest,
    /// The policy set does not load: see the diagnostics.
    InvalidPolicies,
    /// The event (or a history entry's event) is not a valid normalized event.
    InvalidEvent,
    /// No policy set is loaded under the handle.
    UnknownHandle,
    /// A bug in the module (natively: a caught panic).
    Internal,
    /// `normalize`: the payload is not one its normalizer reads (malformed, wrong shape,
    /// another vendor's, too large).
    InvalidPayload,
}

impl ErrorKind {
    /// The negative code `load` and `unload` return for this kind.
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::InvalidRequest => -1,
            ErrorKind::InvalidPolicies => -2,
            ErrorKind::InvalidEvent => -3,
            ErrorKind::UnknownHandle => -4,
            ErrorKind::Internal => -5,
            ErrorKind::InvalidPayload => -6,
        }
    }
}

/// One problem in a policy set, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PolicyDiagnostic {
    /// The file's `name` from the request (or `<engine>` for set-wide problems).
    pub file: String,
    /// 1-based line (0: the whole file).
    pub line: usize,
    /// 1-based column, in characters (0: the whole file).
    pub column: usize,
    /// `file:line:column`, or `file` when the problem concerns the whole file.
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// A suggestion, such as a did-you-mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A failed call, serialized as `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ModuleError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A human-readable description (for `invalid_policies`, every diagnostic, one a line).
    pub message: String,
    /// Where in the request: `event`, `ctx`, `history[2]`, `history[2].decision`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 1-based line in the request, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column (in bytes) in the request, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// For `invalid_policies`: every problem found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<PolicyDiagnostic>,
}

impl ModuleError {
    /// An error of `kind` with `message` and nothing else.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ModuleError {
        ModuleError {
            kind,
            message: message.into(),
            path: None,
            line: None,
            column: None,
            diagnostics: Vec::new(),
        }
    }

    fn at(mut self, path: Option<String>, pos: Option<(usize, usize)>) -> ModuleError {
        self.path = path;
        if let Some((line, column)) = pos {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }

    /// The error object as JSON: `{"error": {...}}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wrapped<'a> {
            error: &'a ModuleError,
        }
        serde_json::to_vec(&Wrapped { error: self }).unwrap_or_else(|_| {
            br#"{"error":{"kind":"internal","message":"the error could not be serialized"}}"#
                .to_vec()
        })
    }

    fn from_load(e: &LoadError) -> ModuleError {
        let diagnostics = e
            .diagnostics()
            .iter()
            .map(|d| {
                let file = d.file().display().to_string();
                let location = if d.line() == 0 {
                    file.clone()
                } else {
                    format!("{file}:{}:{}", d.line(), d.column())
                };
                PolicyDiagnostic {
                    file,
                    line: d.line(),
                    column: d.column(),
                    location,
                    message: d.message().to_string(),
                    help: d.help().map(str::to_string),
                }
            })
            .collect();
        ModuleError {
            diagnostics,
            ..ModuleError::new(ErrorKind::InvalidPolicies, e.to_string())
        }
    }
}

impl std::fmt::Display for ModuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{p}: ")?;
        }
        f.write_str(&self.message)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, " (request line {l}, column {c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ModuleError {}

// ---------------------------------------------------------------------------------------
// Requests.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    files: Vec<PolicyFile>,
    #[serde(default)]
    default_action: Option<Action>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    yaml: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideRequest<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
    ctx: CtxRequest,
    #[serde(borrow, default)]
    history: Option<Vec<&'a RawValue>>,
    #[serde(default = "yes")]
    record: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CtxRequest {
    now: Timestamp,
    #[serde(default)]
    mode: Mode,
}

/// Tells a `{"event": …, "decision": …}` history entry from a bare event.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    event: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(borrow)]
    decision: &'a RawValue,
}

/// One replayed call on the history.
enum Entry {
    Event(Event),
    Decision(Event, Box<Decision>),
}

fn utf8(input: &[u8]) -> Result<&str, ModuleError> {
    std::str::from_utf8(input).map_err(|e| {
        ModuleError::new(
            ErrorKind::InvalidRequest,
            format!(
                "the request is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// serde_json appends " at line L column C" to its messages; positions are fields here.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// The 1-based (line, column) in `text` of position (`line`, `column`) inside `raw`, a slice
/// of `text`. Columns count bytes, as serde_json's do.
fn absolute(text: &str, raw: &RawValue, line: usize, column: usize) -> (usize, usize) {
    let start = raw.get().as_ptr().addr();
    let base = text.as_ptr().addr();
    let Some(offset) = start
        .checked_sub(base)
        .filter(|o| *o <= text.len() && text.is_char_boundary(*o))
    else {
        return (line, column);
    };
    let before = &text[..offset];
    let base_line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let base_column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    if line <= 1 {
        (base_line, base_column + column.saturating_sub(1))
    } else {
        (base_line + line - 1, column)
    }
}

fn request_error(e: &serde_json::Error, path: Option<String>) -> ModuleError {
    let what = if e.is_syntax() || e.is_eof() {
        "invalid JSON"
    } else {
        "invalid request"
    };
    let msg = e.to_string();
    ModuleError::new(
        ErrorKind::InvalidRequest,
        format!("{what}: {}", strip_position(&msg)),
    )
    .at(path, Some((e.line(), e.column())))
}

/// A serde error inside `raw`, positioned in the whole request `text`.
fn nested_error(
    kind: ErrorKind,
    text: &str,
    raw: &RawValue,
    path: String,
    e: &serde_json::Error,
) -> ModuleError {
    let msg = e.to_string();
    ModuleError::new(kind, strip_position(&msg).to_string())
        .at(Some(path), Some(absolute(text, raw, e.line(), e.column())))
}

fn parse_event(text: &str, raw: &RawValue, path: String) -> Result<Event, ModuleError> {
    Event::from_json_bytes(raw.get().as_bytes()).map_err(|e| match e {
        EventError::Json {
            line,
            column,
            message,
        } => ModuleError::new(ErrorKind::InvalidEvent, message)
            .at(Some(path), Some(absolute(text, raw, line, column))),
        other => ModuleError::new(ErrorKind::InvalidEvent, other.to_string()).at(Some(path), None),
    })
}

fn parse_history_entry(text: &str, raw: &RawValue, i: usize) -> Result<Entry, ModuleError> {
    let wrapped = matches!(
        serde_json::from_str::<Probe>(raw.get()),
        Ok(Probe { event: Some(_) })
    );
    if !wrapped {
        return parse_event(text, raw, format!("history[{i}]")).map(Entry::Event);
    }
    let rec: Recorded<'_> = serde_json::from_str(raw.get()).map_err(|e| {
        nested_error(
            ErrorKind::InvalidRequest,
            text,
            raw,
            format!("history[{i}]"),
            &e,
        )
    })?;
    let event = parse_event(text, rec.event, format!("history[{i}].event"))?;
    let decision = serde_json::from_str::<Decision>(rec.decision.get()).map_err(|e| {
        nested_error(
            ErrorKind::InvalidRequest,
            text,
            rec.decision,
            format!("history[{i}].decision"),
            &e,
        )
    })?;
    Ok(Entry::Decision(event, Box::new(decision)))
}

/// Builds the policy set a `load` request describes (see the crate docs).
pub fn build(input: &[u8]) -> Result<Engine, ModuleError> {
    let text = utf8(input)?;
    let req: LoadRequest = serde_json::from_str(text).map_err(|e| request_error(&e, None))?;
    let mut builder = Engine::builder();
    for f in req.files {
        builder = builder.add_source(f.name, f.yaml);
    }
    if let Some(a) = req.default_action {
        builder = builder.default_action(a);
    }
    builder.build().map_err(|e| ModuleError::from_load(&e))
}

/// Decides the event of a `decide` request (see the crate docs) with `engine`.
pub fn decide(engine: &Engine, input: &[u8]) -> Result<Decision, ModuleError> {
    let text = utf8(input)?;
    let req: DecideRequest<'_> = serde_json::from_str(text).map_err(|e| request_error(&e, None))?;
    let event = parse_event(text, req.event, "event".into())?;
    let ctx = Ctx::new(req.ctx.now).with_mode(req.ctx.mode);
    let Some(entries) = req.history else {
        return Ok(engine.decide(&event, &ctx));
    };
    let mut history = History::new();
    for (i, raw) in entries.iter().enumerate() {
        match parse_history_entry(text, raw, i)? {
            Entry::Event(ev) => history.record_at(&ev, req.ctx.now),
            Entry::Decision(ev, d) => history.record_decision_at(&ev, &d, req.ctx.now),
        }
    }
    if req.record {
        history.record_at(&event, req.ctx.now);
    }
    Ok(engine.decide(&event, &ctx.with_history(&history)))
}

/// A `normalize` request (see the crate docs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NormalizeRequest<'a> {
    source: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    observed_at: Timestamp,
    #[serde(default)]
    self_name: Option<String>,
    #[serde(default)]
    http_status: Option<u16>,
    #[serde(default)]
    retry_after_s: Option<i64>,
    #[serde(default)]
    operation: Option<keel_engine::Operation>,
    #[serde(default)]
    state: Option<NormalizerState>,
}

/// What `normalize` returns: the events and the state for the next call.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct Normalized {
    /// The normalized events, in the normalizer's order.
    pub events: Vec<Event>,
    /// The state to pass with the next payload of the same stream.
    pub state: NormalizerState,
}

/// Normalizes the `normalize` request in `input` (see the crate docs).
pub fn normalize(input: &[u8]) -> Result<Normalized, ModuleError> {
    let text = utf8(input)?;
    let req: NormalizeRequest<'_> =
        serde_json::from_str(text).map_err(|e| request_error(&e, None))?;
    // A JSON string is the payload's text; any other value is that JSON.
    let owned: String;
    let payload: &[u8] = if req.payload.get().starts_with('"') {
        owned = serde_json::from_str(req.payload.get()).map_err(|e| {
            nested_error(
                ErrorKind::InvalidRequest,
                text,
                req.payload,
                "payload".into(),
                &e,
            )
        })?;
        owned.as_bytes()
    } else {
        req.payload.get().as_bytes()
    };
    let mut state = req.state.unwrap_or_default();
    let mut nin = Input::new(payload, req.observed_at);
    if let Some(name) = req.self_name.as_deref() {
        nin = nin.self_name(name);
    }
    if let Some(status) = req.http_status {
        nin = nin.http_status(status);
    }
    if let Some(secs) = req.retry_after_s {
        nin = nin.retry_after_s(secs);
    }
    if let Some(op) = req.operation {
        nin = nin.operation(op);
    }
    let events = keel_engine::normalize::normalize(&req.source, &nin, &mut state).map_err(|e| {
        let kind = match e {
            NormalizeError::UnknownNormalizer { .. } => ErrorKind::InvalidRequest,
            _ => ErrorKind::InvalidPayload,
        };
        let err = ModuleError::new(kind, e.to_string());
        match e {
            NormalizeError::UnknownNormalizer { .. } => err.at(Some("source".into()), None),
            NormalizeError::Json { line, column, .. } => {
                err.at(Some("payload".into()), Some((line, column)))
            }
            _ => err.at(Some("payload".into()), None),
        }
    })?;
    Ok(Normalized { events, state })
}

/// One normalizer, as `normalizers` lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NormalizerEntry {
    /// Its name: `normalize`'s `source`.
    pub name: &'static str,
    /// What it reads.
    pub reads: &'static str,
}

/// Every normalizer the module has.
pub fn normalizers() -> Vec<NormalizerEntry> {
    keel_engine::normalize::NORMALIZERS
        .iter()
        .map(|n| NormalizerEntry {
            name: n.name,
            reads: n.reads,
        })
        .collect()
}

/// The loaded policy sets, by handle. The exports keep one in a global; an embedder of the
/// `rlib` may keep its own.
#[derive(Debug, Default)]
pub struct Registry {
    engines: BTreeMap<i32, Arc<Engine>>,
    last: i32,
}

impl Registry {
    /// An empty registry.
    pub const fn new() -> Registry {
        Registry {
            engines: BTreeMap::new(),
            last: 0,
        }
    }

    /// Adds a built policy set and returns its handle (`> 0`; handles are never reused).
    pub fn insert(&mut self, engine: Engine) -> Result<i32, ModuleError> {
        let handle = self.last.checked_add(1).ok_or_else(|| {
            ModuleError::new(
                ErrorKind::Internal,
                "every handle has been used: reload the module",
            )
        })?;
        self.last = handle;
        self.engines.insert(handle, Arc::new(engine));
        Ok(handle)
    }

    /// Builds the policy set a `load` request describes and adds it.
    pub fn load(&mut self, input: &[u8]) -> Result<i32, ModuleError> {
        let engine = build(input)?;
        self.insert(engine)
    }

    /// The policy set under `handle`.
    pub fn get(&self, handle: i32) -> Result<Arc<Engine>, ModuleError> {
        self.engines
            .get(&handle)
            .cloned()
            .ok_or_else(|| unknown_handle(handle))
    }

    /// Decides a `decide` request with the policy set under `handle`.
    pub fn decide(&self, handle: i32, input: &[u8]) -> Result<Decision, ModuleError> {
        decide(&*self.get(handle)?, input)
    }

    /// Drops the policy set under `handle`.
    pub fn unload(&mut self, handle: i32) -> Result<(), ModuleError> {
        self.engines
            .remove(&handle)
            .map(drop)
            .ok_or_else(|| unknown_handle(handle))
    }

    /// The number of loaded policy sets.
    pub fn len(&self) -> usize {
        self.engines.len()
    }

    /// Whether no policy set is loaded.
    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }
}

fn unknown_handle(handle: i32) -> ModuleError {
    ModuleError::new(
        ErrorKind::UnknownHandle,
        format!("no policy set is loaded under handle {handle}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const POLICY: &str = "policies:\n  - name: agent.retry\n    on: [operation_failure]\n    when: event.failure.category == \"vm_agent\" && event.failure.attempt < 2\n    action: retry_without_agent\n    priority: 100\n    reason: no agent\n";

    fn event() -> Value {
        json!({
            "id": "azure.arm:op-1", "time": "2021-10-13T14:05:00Z",
            "source": "azure.arm", "kind": "operation_failure",
            "resource": { "name": "web-1", "os": "windows", "region": "eastus2" },
            "failure": { "operation": "create", "code": "ArtifactVersionNotFound",
                         "category": "vm_agent", "transient": false, "attempt": 1 }
        })
    }

    fn loaded() -> (Registry, i32) {
        let mut r = Registry::new();
        let req = json!({"files": [{"name": "p.yaml", "yaml": POLICY}]});
        let h = r.load(req.to_string().as_bytes()).unwrap();
        (r, h)
    }

    #[test]
    fn decides_like_the_engine() {
        let (r, h) = loaded();
        assert!(h > 0);
        let req = json!({"event": event(), "ctx": {"now": "2021-10-13T14:05:03Z", "mode": "full"}});
        let d = r.decide(h, req.to_string().as_bytes()).unwrap();
        assert_eq!(d.action, Action::RetryWithoutAgent);
        assert_eq!(d.trace.len(), 1);
        let native = Engine::builder()
            .add_source("p.yaml", POLICY)
            .build()
            .unwrap();
        let ev = Event::from_json_str(&event().to_string()).unwrap();
        let now = "2021-10-13T14:05:03Z".parse().unwrap();
        assert_eq!(d, native.decide(&ev, &Ctx::new(now).with_mode(Mode::Full)));
    }

    #[test]
    fn history_entries_count() {
        let yaml = "policies:\n  - name: fleet\n    on: [operation_failure]\n    when: >\n      history.count({\"failure.category\": \"vm_agent\"}, duration(\"15m\")) >= 2\n    action: escalate\n    reason: fleet\n";
        let mut r = Registry::new();
        let req = json!({"files": [{"name": "f.yaml", "yaml": yaml}]});
        let h = r.load(req.to_string().as_bytes()).unwrap();
        let ctx = json!({"now": "2021-10-13T14:05:03Z"});
        let alone = json!({"event": event(), "ctx": ctx, "history": []});
        let d = r.decide(h, alone.to_string().as_bytes()).unwrap();
        assert!(d.escalations.is_empty());
        let mut before = event();
        before["id"] = json!("azure.arm:op-0");
        let with = json!({"event": event(), "ctx": ctx, "history": [before]});
        let d = r.decide(h, with.to_string().as_bytes()).unwrap();
        assert_eq!(d.escalations.len(), 1);
        assert!(!d.escalations[0].repeat);
        // Re-deciding the event after its decision was recorded: the escalation is a repeat.
        let fired = serde_json::to_value(&d).unwrap();
        let again = json!({"event": event(), "ctx": ctx, "record": false,
                           "history": [before, event(), {"event": event(), "decision": fired}]});
        let d = r.decide(h, again.to_string().as_bytes()).unwrap();
        assert!(d.escalations[0].repeat);
        assert!(d.matched.len() == 1);
    }

    #[test]
    fn invalid_policies_have_positions() {
        let mut r = Registry::new();
        let bad = POLICY.replace("event.failure.category", "event.failure.categry");
        let req = json!({"files": [{"name": "bad.yaml", "yaml": bad}]});
        let e = r.load(req.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPolicies);
        assert!(
            e.diagnostics[0].location.starts_with("bad.yaml:4:"),
            "{e:?}"
        );
        assert!(e.message.contains("bad.yaml:4:"), "{e:?}");
        assert!(r.is_empty());
    }

    #[test]
    fn event_errors_are_positioned_in_the_request() {
        let (r, h) = loaded();
        let req = "{\"ctx\": {\"now\": \"2021-10-13T14:05:03Z\"},\n \"event\": {\"id\": \"x\", \"kind\": \"nope\"}}";
        let e = r.decide(h, req.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidEvent);
        assert_eq!(e.path.as_deref(), Some("event"));
        assert_eq!(e.line, Some(2));
        let col = e.column.unwrap();
        assert!((24..=36).contains(&col), "{e:?}");
        let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(json["error"]["kind"], "invalid_event");
    }

    #[test]
    fn bad_requests_are_errors() {
        let (mut r, h) = loaded();
        for input in [
            &b""[..],
            b"\xff\xfe",
            b"[]",
            b"{\"event\": {}, \"ctx\": {\"now\": \"yesterday\"}}",
            b"{\"event\": {}, \"ctx\": {\"now\": \"2021-10-13T14:05:03Z\"}, \"extra\": 1}",
            b"{\"event\": 1, \"ctx\": {\"now\": \"2021-10-13T14:05:03Z\"}, \"history\": [{\"event\": 2}]}",
        ] {
            assert!(r.decide(h, input).is_err());
            assert!(r.load(input).is_err());
        }
        assert_eq!(
            r.decide(h + 1, b"{}").unwrap_err().kind,
            ErrorKind::UnknownHandle
        );
        r.unload(h).unwrap();
        assert_eq!(r.unload(h).unwrap_err().kind, ErrorKind::UnknownHandle);
    }

    #[test]
    fn normalize_reads_text_and_json_payloads_and_carries_state() {
        let body = r#"{"error": {"code": "ArtifactVersionNotFound", "message": "No version found in the artifact repository that satisfies the requested version '' for VM extension with publisher 'Microsoft.WindowsAzure.GuestAgent' and type 'CRPProd'."}}"#;
        let parsed: Value = serde_json::from_str(body).unwrap();
        let base = json!({"source": "azure.arm", "observed_at": "2021-10-13T14:05:00Z", "operation": "create"});
        let mut as_text = base.clone();
        as_text["payload"] = json!(body);
        let mut as_json = base.clone();
        as_json["payload"] = parsed;
        let a = normalize(as_text.to_string().as_bytes()).unwrap();
        let b = normalize(as_json.to_string().as_bytes()).unwrap();
        assert_eq!(a.events.len(), 1);
        assert_eq!(
            a.events[0].failure.as_ref().unwrap().code,
            "ArtifactVersionNotFound"
        );
        assert_eq!(
            serde_json::to_value(&a.events).unwrap(),
            serde_json::to_value(&b.events).unwrap()
        );
        // A plain-text payload (GCP's maintenance-event value).
        let gcp = json!({"source": "gcp.metadata", "payload": "MIGRATE_ON_HOST_MAINTENANCE",
                         "observed_at": "2026-01-01T00:00:00Z"});
        let first = normalize(gcp.to_string().as_bytes()).unwrap();
        assert_eq!(first.events.len(), 1);
        // The state the first call returned makes the same value again nothing new.
        let mut again = gcp.clone();
        again["state"] = serde_json::to_value(&first.state).unwrap();
        assert!(normalize(again.to_string().as_bytes())
            .unwrap()
            .events
            .is_empty());
        let e = normalize(
            br#"{"source": "nope", "payload": "", "observed_at": "2026-01-01T00:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.kind, e.path.as_deref()),
            (ErrorKind::InvalidRequest, Some("source"))
        );
        let e = normalize(
            br#"{"source": "azure.arm", "payload": "[1", "observed_at": "2026-01-01T00:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.kind, e.path.as_deref()),
            (ErrorKind::InvalidPayload, Some("payload"))
        );
        assert_eq!(ErrorKind::InvalidPayload.code(), -6);
        assert!(normalize(br#"{"source": "azure.arm", "payload": "{}"}"#).is_err());
        assert!(normalizers()
            .iter()
            .any(|n| n.name == "azure.scheduled_events"));
    }

    #[test]
    fn absolute_positions() {
        let text = "{\"a\":\n  {\"b\": 1}}";
        let v: std::collections::HashMap<&str, &RawValue> = serde_json::from_str(text).unwrap();
        let raw = v["a"];
        assert_eq!(absolute(text, raw, 1, 1), (2, 3));
        assert_eq!(absolute(text, raw, 1, 5), (2, 7));
        assert_eq!(absolute(text, raw, 3, 4), (4, 4));
    }
}
