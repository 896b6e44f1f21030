//! Pause: `keel pause [SCOPE]` stops new effects, globally or in a scope, while the runbooks
//! already under way finish. The pause lives in the state database (table `pauses`), so the
//! running host sees it without a signal and a restart keeps it.
//!
//! A pause is the first of the gates a runbook passes before its first step that has an
//! effect (any step but `log`; see [`super::gate`]): when one matches the event, the decision
//! is held (table `held`, the decision's runbook `held`, a decision-log line,
//! `keel_held_total{reason="pause"}`). A runbook whose first effect has begun is never
//! stopped by a pause. The run loop looks at the held decisions every tick: one whose
//! deadline passed escalates ("held past its deadline"), even when resumed since; one no
//! pause (nor other gate) holds any more runs its runbook then (the decision stands; the
//! runbook checks again, as any runbook does, that the platform has not canceled the event,
//! that nothing holds it, and its deadline, counted from the decision).
//!
//! The decision is not made again on the resume: the correlation history holds it (a held
//! drain counts as a drain there), so a new decision would see its own held one, e.g. as a
//! drain already done ("pending again: defer").
//! The `escalate` runbook is never held: a pause must not silence the pages.
//!
//! Scope grammar (case-insensitive; the stored form is the canonical one):
//!
//! | scope | matches an event whose |
//! | --- | --- |
//! | `all` (or no scope) | every event |
//! | `region:NAME` | `resource.region` is NAME |
//! | `resource-group:NAME` | ARM `resource.id` names the resource group NAME |
//! | `resource:PREFIX` | `resource.id` starts with PREFIX, or `resource.name` is PREFIX |
//! | `/subscriptions/…` (any text starting with `/`) | the same as `resource:` with it |
//!
//! A field the event does not carry matches no scope but `all`.

use keel_engine::Event;

use super::gate::Verdict;
use super::Host;

pub use crate::scope::Scope;
#[cfg(test)]
use crate::scope::{ScopeError, MAX_SCOPE_LEN};

/// The first of `pauses` (scope, reason) whose scope matches `ev`; stored scopes that no
/// longer parse are skipped.
pub fn matching<'a>(pauses: &'a [(String, String)], ev: &Event) -> Option<&'a (String, String)> {
    pauses
        .iter()
        .find(|(scope, _)| Scope::parse(scope).is_ok_and(|s| s.matches(ev)))
}

pub use keel_engine::hold_deadline;

impl Host {
    /// The pauses' verdict on `ev`: held while a pause matches it. A store that cannot be
    /// read holds too (fail safe: the tick asks again).
    pub(crate) fn pause_verdict(&self, ev: &Event) -> Verdict {
        let pauses: Vec<(String, String)> = match self.store.pauses() {
            Ok(p) => p.into_iter().map(|p| (p.scope, p.reason)).collect(),
            Err(e) => {
                return Verdict::Hold {
                    by: "pause",
                    scope: "-".into(),
                    reason: format!("held: the pauses cannot be read: {e}"),
                }
            }
        };
        match matching(&pauses, ev) {
            Some((scope, reason)) => Verdict::Hold {
                by: "pause",
                scope: scope.clone(),
                reason: reason.clone(),
            },
            None => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(region: Option<&str>, id: Option<&str>, name: Option<&str>) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": "x:1", "time": "2026-01-01T00:00:00Z", "source": "ingest",
            "kind": "maintenance", "resource": {},
            "maintenance": {"type": "reboot", "status": "scheduled"},
        }))
        .unwrap();
        e.resource.region = region.map(str::to_string);
        e.resource.id = id.map(str::to_string);
        e.resource.name = name.map(str::to_string);
        e
    }

    const ID: &str =
        "/subscriptions/s1/resourceGroups/RG1/providers/Microsoft.Compute/virtualMachines/vm1";

    #[test]
    fn the_grammar_parses_canonically_and_rejects_the_rest() {
        assert_eq!(Scope::parse("").unwrap(), Scope::All);
        assert_eq!(Scope::parse("ALL").unwrap(), Scope::All);
        assert_eq!(
            Scope::parse("Region:WestEurope").unwrap().to_string(),
            "region:westeurope"
        );
        assert_eq!(
            Scope::parse("resource-group:RG1").unwrap().to_string(),
            "resource-group:rg1"
        );
        assert_eq!(
            Scope::parse("/subscriptions/S1").unwrap(),
            Scope::Resource("/subscriptions/s1".into())
        );
        assert!(matches!(Scope::parse("zone:1"), Err(ScopeError::Kind(_))));
        assert!(matches!(
            Scope::parse("westeurope"),
            Err(ScopeError::Kind(_))
        ));
        assert!(matches!(Scope::parse("region:"), Err(ScopeError::Value(_))));
        assert!(matches!(
            Scope::parse("region:a b"),
            Err(ScopeError::Value(_))
        ));
        let long = format!("region:{}", "a".repeat(MAX_SCOPE_LEN + 1));
        assert!(matches!(Scope::parse(&long), Err(ScopeError::Value(_))));
    }

    #[test]
    fn scopes_match_region_group_and_id_prefix_and_nothing_unknown() {
        let e = ev(Some("westeurope"), Some(ID), Some("vm1"));
        let m = |s: &str| Scope::parse(s).unwrap().matches(&e);
        assert!(m("all"));
        assert!(m("region:WestEurope"));
        assert!(!m("region:eastus"));
        assert!(m("resource-group:rg1"));
        assert!(!m("resource-group:rg"));
        assert!(m("/subscriptions/s1/resourcegroups/rg1"));
        assert!(!m("/subscriptions/s2"));
        assert!(m("resource:vm1"));
        assert!(!m("resource:vm"));
        let bare = ev(None, None, None);
        for s in ["region:westeurope", "resource-group:rg1", "resource:vm1"] {
            assert!(!Scope::parse(s).unwrap().matches(&bare), "{s}");
        }
        assert!(Scope::All.matches(&bare));
        let pauses = vec![
            ("region:eastus".to_string(), "a".to_string()),
            ("resource-group:rg1".to_string(), "b".to_string()),
        ];
        assert_eq!(matching(&pauses, &e).map(|p| p.1.as_str()), Some("b"));
        assert_eq!(matching(&pauses[..1], &e), None);
    }
}
