//! What the engine decides: [`Decision`] and the types it is made of.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::event::Timestamp;

/// What to do about an event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Do nothing.
    None,
    /// Approve the maintenance early (Azure StartRequests) or let it through.
    Acknowledge,
    /// Decide again later, at [`Decision::due`].
    Defer,
    /// Retry the failed operation, at [`Retry::not_before`].
    Retry,
    /// Retry a VM create without the VM agent and agent-dependent extensions.
    RetryWithoutAgent,
    /// Move the workload off the VM.
    Drain,
    /// Tell a human (pages; deduplicated by key). Collected in [`Decision::escalations`].
    Escalate,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 7] = [
        Action::RetryWithoutAgent,
        Action::Retry,
        Action::Drain,
        Action::Defer,
        Action::Escalate,
        Action::Acknowledge,
        Action::None,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Acknowledge => "acknowledge",
            Action::Defer => "defer",
            Action::Retry => "retry",
            Action::RetryWithoutAgent => "retry_without_agent",
            Action::Drain => "drain",
            Action::Escalate => "escalate",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Tie-break rank among remediations of equal priority: higher wins
    /// (drain > retry_without_agent > retry > defer > acknowledge > none).
    pub fn severity(self) -> u8 {
        match self {
            Action::Drain => 6,
            Action::RetryWithoutAgent => 5,
            Action::Retry => 4,
            Action::Defer => 3,
            Action::Acknowledge => 2,
            Action::None => 1,
            Action::Escalate => 0,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity of an escalation.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Needs attention.
    Warning,
    /// Needs action (the default).
    #[default]
    Error,
    /// Needs action now.
    Critical,
}

impl Severity {
    /// Every severity's wire name.
    pub const NAMES: &'static [&'static str] = &["info", "warning", "error", "critical"];

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "error" => Some(Severity::Error),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Decision {
    /// The id of the event decided.
    pub event_id: String,
    /// The winning remediation, or the configured default when nothing matched.
    pub action: Action,
    /// The winning policy; absent when the default applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SharedStr>,
    /// The winner's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SharedStr>,
    /// The winner's parameters (validated per action), for runbooks.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Every matching escalate policy, deduplicated by key.
    #[serde(default)]
    pub escalations: Vec<Escalation>,
    /// For `retry` and `retry_without_agent`: what to resubmit and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// For `defer`: when to decide the event again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Timestamp>,
    /// Every policy that matched (in fast mode, among those evaluated), best first.
    #[serde(default)]
    pub matched: Vec<Matched>,
    /// Candidates fast mode skipped because they could no longer win.
    #[serde(default)]
    pub not_evaluated: Vec<SharedStr>,
    /// Policies that failed to evaluate. Never fatal.
    #[serde(default)]
    pub errors: Vec<PolicyError>,
    /// Things worth knowing that did not stop the decision.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Per-policy outcome, in full mode.
    #[serde(default, skip_serializing_if = "Trace::is_empty")]
    pub trace: Trace,
    /// Set when a blast-radius guard (storm, retry budget, flap) held the action the policies
    /// decided: the action is then `escalate`, and this keeps the held one and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardHold>,
}

/// An escalation raised by a matching `escalate` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Escalation {
    /// The policy that raised it.
    pub policy: SharedStr,
    /// Why.
    pub reason: SharedStr,
    /// Deduplication key: hex SHA-256 of the policy name, its `dedup.by` values and the
    /// event's time bucket. Independent hosts fed the same fleet events produce the same key.
    pub key: String,
    /// How urgent.
    pub severity: Severity,
    /// True when the caller's history has seen this key fire before: page only once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeat: bool,
}

/// What to retry, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Retry {
    /// The request body to resubmit (for `retry_without_agent`, the transformed body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    /// Not before this time (from `retry_after_s`, or the policy's delay and backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
}

/// A policy that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Matched {
    /// The policy.
    pub policy: SharedStr,
    /// Its action.
    pub action: Action,
    /// Its priority.
    pub priority: i64,
}

/// A policy that failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyError {
    /// The policy.
    pub policy: SharedStr,
    /// What went wrong, e.g. `no such key: failure`.
    pub message: String,
}

/// What happened to one policy during a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Not a candidate: its `on` kinds or indexed tests exclude the event.
    SkippedByIndex,
    /// Evaluated to false.
    False,
    /// Matched.
    Matched,
    /// Matched, but its retry budget (`max_attempts`) is spent, so it cannot win.
    Exhausted,
    /// Failed to evaluate (see [`Decision::errors`]).
    Errored,
    /// Skipped by fast mode: it could no longer win.
    NotEvaluated,
    /// A Wasm plugin policy in quarantine after repeated faults: not called (see
    /// [`crate::History::quarantined`]).
    Quarantined,
}

/// One policy's outcome in [`Decision::trace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TraceEntry {
    /// The policy.
    pub policy: String,
    /// What happened to it.
    pub outcome: Outcome,
}

/// Every policy's outcome in a full-mode decision, in rank order ([`Decision::trace`]);
/// empty in fast mode. Serialized as a list of [`TraceEntry`].
///
/// The policy names are shared with the engine that decided, not copied per decision, so a
/// full-mode decision over a thousand policies costs a thousand outcome bytes, not a
/// thousand strings.
#[derive(Clone, Default)]
pub struct Trace {
    names: std::sync::Arc<[String]>,
    outcomes: Vec<Outcome>,
}

impl Trace {
    /// A trace of `outcomes[i]` for `names[i]` (the lengths must agree; extra items on
    /// either side are dropped).
    pub(crate) fn new(names: std::sync::Arc<[String]>, mut outcomes: Vec<Outcome>) -> Trace {
        outcomes.truncate(names.len());
        Trace { names, outcomes }
    }

    /// The number of policies traced.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether the trace is empty (as in every fast-mode decision).
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Each policy and its outcome, in rank order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, Outcome)> + '_ {
        self.names
            .iter()
            .zip(&self.outcomes)
            .map(|(n, o)| (n.as_str(), *o))
    }

    /// The outcome of `policy`, if it is traced.
    pub fn outcome(&self, policy: &str) -> Option<Outcome> {
        self.iter().find(|(n, _)| *n == policy).map(|(_, o)| o)
    }

    /// Empties the trace.
    pub fn clear(&mut self) {
        self.outcomes.clear();
        self.names = std::sync::Arc::from(Vec::new());
    }

    /// The trace as owned entries.
    pub fn to_vec(&self) -> Vec<TraceEntry> {
        self.iter()
            .map(|(policy, outcome)| TraceEntry {
                policy: policy.to_string(),
                outcome,
            })
            .collect()
    }
}

impl From<Vec<TraceEntry>> for Trace {
    fn from(entries: Vec<TraceEntry>) -> Trace {
        let (names, outcomes): (Vec<String>, Vec<Outcome>) =
            entries.into_iter().map(|e| (e.policy, e.outcome)).unzip();
        Trace {
            names: names.into(),
            outcomes,
        }
    }
}

impl PartialEq for Trace {
    fn eq(&self, other: &Trace) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Trace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            policy: &'a str,
            outcome: Outcome,
        }
        s.collect_seq(
            self.iter()
                .map(|(policy, outcome)| Entry { policy, outcome }),
        )
    }
}

impl<'de> Deserialize<'de> for Trace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Trace, D::Error> {
        Vec::<TraceEntry>::deserialize(d).map(Trace::from)
    }
}

impl JsonSchema for Trace {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <Vec<TraceEntry>>::schema_name()
    }

    fn inline_schema() -> bool {
        <Vec<TraceEntry>>::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <Vec<TraceEntry>>::json_schema(generator)
    }
}

/// Default escalation dedup window: one hour.
pub const DEFAULT_DEDUP_WINDOW_S: i64 = 3600;

/// Which guard held an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardName {
    /// Too many failures in the scope: no new remediation there until the rate falls.
    Storm,
    /// Too many retries for the first attempts seen in the scope (or host-wide).
    RetryBudget,
    /// Too many remediations of one resource without a healthy period between them.
    Flap,
}

impl GuardName {
    /// The wire name (`storm`, `retry_budget`, `flap`).
    pub fn as_str(self) -> &'static str {
        match self {
            GuardName::Storm => "storm",
            GuardName::RetryBudget => "retry_budget",
            GuardName::Flap => "flap",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<GuardName> {
        [GuardName::Storm, GuardName::RetryBudget, GuardName::Flap]
            .into_iter()
            .find(|g| g.as_str() == s)
    }

    /// The policy name its escalations carry (`guard.storm`, ...).
    pub fn policy(self) -> &'static str {
        match self {
            GuardName::Storm => "guard.storm",
            GuardName::RetryBudget => "guard.retry_budget",
            GuardName::Flap => "guard.flap",
        }
    }
}

/// What a guard held, in [`Decision::guard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GuardHold {
    /// The guard.
    pub name: GuardName,
    /// Its scope: `region/category` (storm, retry budget; `*` when the host-wide retry budget
    /// is spent), or the resource (flap).
    pub scope: String,
    /// The action the policies decided, which the guard turned into `escalate`.
    pub held_action: Action,
    /// Why, with the figures.
    pub reason: String,
}

/// A string in a [`Decision`] that many decisions share (a policy's name, a fixed reason):
/// cloned by reference, not copied. It reads as a `str` (it derefs to one, and compares
/// equal to `str`, `&str` and `String`), and serializes as a plain JSON string.
///
/// The engine's own (policy names and fixed reasons, [`SharedStr::interned`]) are kept for
/// the life of the process, one copy per distinct string, so that cloning one into a decision
/// touches no reference count (at 1000 policies those counts were a tenth of a decision's
/// time). At most [`SharedStr::INTERNED_BYTES`] are kept so (a process that loads ever new
/// policy sets, such as a service evaluating its users' policies, does not grow without
/// bound): past that, strings are reference-counted, as every other one is.
#[derive(Clone)]
pub struct SharedStr(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Counted(Arc<str>),
}

impl SharedStr {
    /// The most bytes of strings [`SharedStr::interned`] keeps for the process (1 MiB: the
    /// names and reasons of some ten thousand policies).
    pub const INTERNED_BYTES: usize = 1 << 20;

    /// The process-wide copy of `s` (made on its first use, while fewer than
    /// [`SharedStr::INTERNED_BYTES`] are kept; a reference-counted one after): for strings a
    /// loaded policy set holds, which the process keeps anyway while it runs.
    pub fn interned(s: &str) -> SharedStr {
        type Kept = (std::collections::HashSet<&'static str>, usize);
        static INTERNED: std::sync::OnceLock<std::sync::Mutex<Kept>> = std::sync::OnceLock::new();
        let Ok(mut kept) = INTERNED.get_or_init(Default::default).lock() else {
            return SharedStr::from(s);
        };
        if let Some(&k) = kept.0.get(s) {
            return SharedStr(Repr::Static(k));
        }
        if kept.1.saturating_add(s.len()) > SharedStr::INTERNED_BYTES {
            return SharedStr::from(s);
        }
        let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
        kept.0.insert(k);
        kept.1 += s.len();
        SharedStr(Repr::Static(k))
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &SharedStr) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &SharedStr) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(SharedStr::from(String::deserialize(deserializer)?))
    }
}

impl JsonSchema for SharedStr {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}

impl SharedStr {
    /// The string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Counted(s) => s,
        }
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        SharedStr(Repr::Static(""))
    }
}

impl std::fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Repr::Counted(Arc::from(s)))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(Repr::Counted(Arc::from(s)))
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.as_str().to_string()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == other.as_str()
    }
}

#[cfg(test)]
mod shared_str_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::SharedStr;

    #[test]
    fn a_shared_string_is_a_plain_string_on_the_wire_and_in_comparisons() {
        let s = SharedStr::from("vm-agent");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"vm-agent\"");
        let back: SharedStr = serde_json::from_str("\"vm-agent\"").unwrap();
        assert_eq!(back, s);
        assert_eq!(s, "vm-agent");
        assert_eq!("vm-agent", s);
        assert_eq!(s, *"vm-agent");
        let owned = String::from("vm-agent");
        assert_eq!(s, owned);
        assert_eq!(owned, s);
        assert_eq!(format!("{s} {s:?}"), "vm-agent \"vm-agent\"");
        assert_eq!(s.len(), 8);
        assert_eq!(String::from(s.clone()), "vm-agent");
        assert_eq!(SharedStr::default(), "");
    }

    #[test]
    fn an_interned_string_is_kept_once_and_reads_as_any_other() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let a = SharedStr::interned("policy-a");
        let b = SharedStr::interned(&String::from("policy-a"));
        // One copy for the process: the same bytes in memory.
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        let counted = SharedStr::from("policy-a");
        assert_eq!(a, counted);
        assert_eq!(a.cmp(&counted), std::cmp::Ordering::Equal);
        assert!(SharedStr::interned("policy-b") > counted);
        let hash = |s: &SharedStr| {
            let mut h = DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&counted));
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"policy-a\"");
        let back: SharedStr = serde_json::from_str("\"policy-a\"").unwrap();
        assert_eq!(back, a);
        let set: std::collections::BTreeSet<SharedStr> = [a.clone(), counted].into();
        assert_eq!(set.len(), 1);
        // Beyond the bound, a string is counted, not kept: it still reads the same.
        let big = "x".repeat(SharedStr::INTERNED_BYTES + 1);
        let first = SharedStr::interned(&big);
        let again = SharedStr::interned(&big);
        assert!(!std::ptr::eq(first.as_str(), again.as_str()));
        assert_eq!(first, again);
        // The bound counts every string kept: distinct kibibytes fill it within about
        // `INTERNED_BYTES / 1024` of them; after that, the next ones are counted.
        let kept = |s: &str| {
            let (a, b) = (SharedStr::interned(s), SharedStr::interned(s));
            std::ptr::eq(a.as_str(), b.as_str())
        };
        let full = (0..=SharedStr::INTERNED_BYTES / 1024 + 1)
            .any(|i| !kept(&format!("{i:08}{}", "k".repeat(1016))));
        assert!(full, "the bound was never reached");
        assert!(!kept(&format!("late{}", "k".repeat(1020))));
    }
}
