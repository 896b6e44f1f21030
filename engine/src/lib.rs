//! # keel-engine
//!
//! The pure core of Keel, a resilience policy engine for cloud VMs. It turns platform
//! signals (maintenance notices, resource-health changes, failed management operations) into
//! one normalized [`Event`] shape, evaluates operator-written CEL policies against them, and
//! returns a [`Decision`]: retry without agent, retry, drain, defer, acknowledge, escalate, or
//! nothing.
//!
//! The engine does no I/O after loading and never reads a clock: the current time comes in
//! with [`Ctx`]. It has no tokio and no wasmtime in its dependency tree, so it embeds in any
//! Rust agent and builds for `wasm32-unknown-unknown` and `wasm32-wasip1`. The `plugins`
//! feature adds Wasm plugin policies (`plugin:` in a policy file), run with wasmtime's
//! component model under a deadline and a memory limit per call; see the README's "Wasm plugin
//! policies" and `wasm-plugins/wit/policy.wit`.
//!
//! ## How the types relate
//!
//! * [`EngineBuilder`] loads policy YAML (files, directories or strings), validates all of it
//!   (YAML, CEL syntax, every `event.…` path against the event schema, names, actions,
//!   parameters) and builds an [`Engine`], or returns a [`LoadError`] listing every problem
//!   with its file, line and column. A set with any problem is never half-applied.
//! * [`Engine`] is immutable and `Send + Sync`: build it once, share it behind an `Arc`.
//! * [`Engine::decide`] takes an [`Event`] and a [`Ctx`] (`now`, fast or full [`Mode`]) and
//!   returns a [`Decision`]. A policy that fails at run time (a missing field, a type
//!   mismatch) is recorded in [`Decision::errors`]; it never aborts the decision.
//!
//! ## Example: an agent embedding the engine
//!
//! ```
//! use std::sync::Arc;
//! use keel_engine::{Action, Ctx, Engine, Event};
//!
//! let engine = Arc::new(
//!     Engine::builder()
//!         .add_source(
//!             "inline.yaml",
//!             r#"
//! policies:
//!   - name: azure.vm-agent-missing.retry-without-agent
//!     on: [operation_failure]
//!     when: >
//!       event.failure.category == "vm_agent" && event.resource.os == "windows"
//!       && event.failure.operation == "create" && event.failure.attempt < 2
//!     action: retry_without_agent
//!     priority: 100
//!     reason: VM agent artifact unavailable; retrying without the agent
//! "#,
//!         )
//!         .build()?,
//! );
//!
//! let event = Event::from_json_str(r#"{
//!     "id": "azure.arm:op-1", "time": "2021-10-13T14:05:00Z",
//!     "source": "azure.arm", "kind": "operation_failure",
//!     "resource": { "name": "web-1", "os": "windows", "region": "eastus2" },
//!     "failure": { "operation": "create", "code": "ArtifactVersionNotFound",
//!                  "category": "vm_agent", "transient": false, "attempt": 1 }
//! }"#)?;
//!
//! // The caller reads the clock, never the engine.
//! let now = "2021-10-13T14:05:03Z".parse()?;
//! let decision = engine.decide(&event, &Ctx::new(now));
//! assert_eq!(decision.action, Action::RetryWithoutAgent);
//! assert_eq!(decision.policy.as_deref(), Some("azure.vm-agent-missing.retry-without-agent"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `engine/examples/embed.rs` is the same as a runnable program
//! (`cargo run -p keel-engine --example embed`).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

pub mod budget;
mod build;
mod compile;
mod decide;
mod decision;
mod diag;
mod duration;
mod engine;
mod event;
mod expr;
mod faults;
pub mod fields;
mod guard;
pub mod history;
pub(crate) mod index;
mod key;
pub mod normalize;
#[cfg(feature = "plugins")]
mod plugin;
mod policy;
pub mod redact;
pub mod schema;
mod scope;
pub mod testing;
pub mod yaml;

pub use budget::{
    admit, hold_deadline, key_and_unit, read_budgets, runbook_deadline, Amount, BudgetSpec,
    KeyView, Lease, Member,
};
pub use build::{EngineBuilder, Mutation};
pub use compile::{MAX_EVAL_COST, MAX_STRING_BYTES};
pub use decide::{dedup_key, Ctx, Mode};
pub use decision::DEFAULT_DEDUP_WINDOW_S;
pub use decision::{
    Action, Decision, Escalation, Matched, Outcome, PolicyError, Retry, Severity, SharedStr, Trace,
    TraceEntry,
};
pub use diag::LoadError;
pub use diag::{escape, Diagnostic};
pub use duration::{parse_duration, DurationError};
pub use engine::{Engine, PolicyInfo};
pub use event::{
    Category, Event, EventError, Failure, FailureDetail, Health, HealthState, Initiator, Kind,
    Maintenance, MaintenanceStatus, MaintenanceType, Operation, ReasonType, Resource, Source,
    Timestamp, MAX_EVENT_BYTES,
};
pub use faults::PLUGIN_QUARANTINE_FAULTS;
pub use guard::{
    FlapGuard, GuardConfig, GuardHold, GuardName, RetryBudget, StormGuard, PAGE_GAP_S,
};
pub use history::{History, HistoryLoadError, HISTORY_FORMAT};
pub use key::{KeyError, KeyExpr, KeyExprError};
#[cfg(feature = "plugins")]
pub use plugin::{PluginCache, PLUGIN_INTERFACE};
pub use policy::{
    is_policy_file, DEFAULT_PLUGIN_DEADLINE_MS, DEFAULT_PLUGIN_MEMORY_MIB, FORMAT_VERSION,
    MAX_PLUGIN_DEADLINE_MS, MAX_PLUGIN_MEMORY_MIB, POLICY_KEYS,
};
pub use yaml::{MAX_POLICY_DEPTH, MAX_POLICY_FILE_BYTES};

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for the engine's own benchmarks and parity tests. Not a stable API.
    pub use crate::compile::{check_expression_here, fast_parse, parity_check};
}
