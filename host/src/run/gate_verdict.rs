//! What a gate decides for a decision before its runbook's first effect. Temporary home of
//! the enum until `run::gate` takes it over (the same definition).

/// A gate's verdict on one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing holds it: the runbook goes on.
    Pass,
    /// Held: `by` is "pause" | "window" | "blocker" | "budget"; `scope` names what held it
    /// (the pause scope, the window's or blocker's name, the budget key); `reason` is the
    /// one-line human explanation written to the decision log and `keel status`.
    Hold {
        /// What held it.
        by: &'static str,
        /// Which one of them.
        scope: String,
        /// Why, for a human.
        reason: String,
    },
    /// Escalate now instead of waiting: the hold would make it miss its deadline.
    Escalate(String),
}
