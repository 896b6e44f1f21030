//! Policy unit tests: `*.test.yaml` files beside the policies, run by `keel test` and by any
//! program that embeds the engine.
//!
//! ```yaml
//! cases:
//!   - name: short freeze is let through
//!     event: { kind: maintenance, maintenance: { type: freeze, status: scheduled, duration_s: 5 } }
//!     expect: { action: acknowledge, policy: azure.freeze.short }
//!   - name: agent artifact outage, raw ARM error
//!     from: { normalizer: azure.arm, file: fixtures/arm.json, with: { resource: { os: windows } } }
//!     expect: { action: retry_without_agent }
//!   - name: fleet outage
//!     start: 2021-10-13T14:00:00Z
//!     steps:
//!       - { at: 0s, event: {...}, expect: { action: retry_without_agent, escalations: [] } }
//!       - { at: 30s, event: {...}, expect: { escalations: [{ policy: vm-agent.incident }] } }
//!     totals: { pages: 1 }
//! ```
//!
//! A case's event may be partial: unset fields are absent, `id` defaults to a content hash,
//! `time` to the step's time and `source` to `ingest`. A sequence carries state from one step
//! to the next: the correlation [`History`] (each event recorded before it is decided, each
//! decision after) and the normalizers' state, at exact event times. Every decision runs in
//! full mode. A case fails on a non-empty `Decision.errors` unless it expects them; a case
//! that asserts nothing is an invalid file, not a silent pass; and a policy file whose
//! policies no case reaches is reported.
//!
//! A test file or case may declare `budgets:` (the keys of `keel.yaml`'s): a sequence's
//! decisions then go through the budgets on the case's virtual clock (held, released oldest
//! first, escalated at their deadline; see the `budgets` module), asserted with
//! `expect.held`, `expect.released` and `expect.escalated`.

mod budgets;
mod format;
mod mutation;
mod report;
mod run;

use self::budgets::*;
pub use self::budgets::{GateChange, HeldDecision};
use self::format::*;
pub use self::mutation::*;
pub use self::report::*;
pub use self::run::*;

/// The time of a single-event case that gives neither `now` nor an event `time`.
pub const DEFAULT_CASE_TIME: &str = "2026-01-01T00:00:00Z";

/// Options of a test run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TestOptions {
    /// Run only the steps whose full name (`file::case::step`) contains this text.
    pub run: Option<String>,
    /// A monotonic clock the runner reads around each step, for the steps' times
    /// ([`StepResult::time_s`], JUnit's `time`). The engine reads no clock itself (and
    /// `wasm32-unknown-unknown` has none); without one, every time is 0.
    pub clock: Option<fn() -> std::time::Duration>,
}

impl TestOptions {
    /// Selects steps whose full name contains `pattern`.
    pub fn run(mut self, pattern: impl Into<String>) -> Self {
        self.run = Some(pattern.into());
        self
    }

    /// Times each step with `clock` (a monotonic clock: only differences are used).
    pub fn with_clock(mut self, clock: fn() -> std::time::Duration) -> Self {
        self.clock = Some(clock);
        self
    }
}

/// `*.test.yaml` / `*.test.yml`.
pub fn is_test_file(name: &str) -> bool {
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}
