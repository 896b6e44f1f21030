//! Which events and actions the blast-radius guards count, and under which scope: shared by
//! the correlation [`crate::History`] (which keeps the counts) and the guards (which read them),
//! so neither module needs the other's internals.

use crate::decision::Action;
use crate::event::{Event, HealthState, Kind};

/// The scope key under which the history counts host-wide first attempts and retries.
pub(crate) const HOST_WIDE: &str = "*";

/// Two escalations of a scope less than this apart (seconds) are one run: a guard's
/// escalation inside a run is a repeat and does not page again (one hour, as the escalation
/// dedup window of policies, [`crate::DEFAULT_DEDUP_WINDOW_S`]).
pub const PAGE_GAP_S: i64 = crate::decision::DEFAULT_DEDUP_WINDOW_S;

/// The guard scope of an event (`region/category`), or `None` when it is not a failure.
pub(crate) fn scope(ev: &Event) -> Option<String> {
    let region = ev.resource.region.as_deref().unwrap_or("-");
    match ev.kind {
        Kind::OperationFailure => {
            let category = ev
                .failure
                .as_ref()
                .map_or("unknown", |f| f.category.as_str());
            Some(format!("{region}/{category}"))
        }
        Kind::Health
            if ev.health.as_ref().is_some_and(|h| {
                matches!(h.state, HealthState::Unavailable | HealthState::Degraded)
            }) =>
        {
            Some(format!("{region}/health"))
        }
        _ => None,
    }
}

/// Whether an event is a first attempt (an operation failure with `attempt` 1).
pub(crate) fn is_first_attempt(ev: &Event) -> bool {
    ev.failure.as_ref().is_some_and(|f| f.attempt <= 1)
}

/// Whether an action is a remediation the guards may hold.
pub(crate) fn is_remediation(a: Action) -> bool {
    matches!(a, Action::Retry | Action::RetryWithoutAgent | Action::Drain)
}

/// The page scope of a resource (for the flap guard's escalations).
pub(crate) fn resource_scope(resource: &str) -> String {
    format!("resource:{resource}")
}
