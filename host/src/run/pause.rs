//! Pause: `keel pause [SCOPE]` stops new effects, globally or in a scope, while the runbooks
//! already under way finish. The pause lives in the state database (table `pauses`), so the
//! running host sees it without a signal and a restart keeps it.
//!
//! The host checks the pauses before a runbook's first step that has an effect (any step but
//! `log`): when one matches the event, the decision is held (table `held`, the decision's
//! runbook `held`, a decision-log line, `keel_held_total{reason="pause"}`). A runbook whose
//! first effect has begun is never stopped by a pause. The run loop looks at the held
//! decisions every tick: one whose deadline passed escalates ("paused past its deadline"),
//! even when resumed since; one no pause matches any more runs its runbook then (the decision
//! stands; the runbook checks again, as any runbook does, that the platform has not canceled
//! the event, that no pause holds it, and its deadline, counted from the decision).
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

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keel_engine::{escape, Action, Decision, Event};

use super::store::HeldRow;
use super::{rfc, Host, Work};

/// The longest scope value accepted.
pub const MAX_SCOPE_LEN: usize = 512;

/// Where a pause applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event.
    All,
    /// Events of resources in this region (lower case).
    Region(String),
    /// Events of resources in this Azure resource group (lower case).
    ResourceGroup(String),
    /// Events whose resource id starts with this prefix, or whose resource name is it (lower
    /// case).
    Resource(String),
}

/// Why a scope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// An unknown `kind:` prefix.
    #[error("unknown scope kind `{0}`; expected all, region:NAME, resource-group:NAME, resource:PREFIX or a resource id starting with /")]
    Kind(String),
    /// An empty, too long, or non-printable value.
    #[error("scope `{0}`: the value must be 1 to 512 printable characters without spaces")]
    Value(String),
}

impl Scope {
    /// Parses a scope (see the module documentation); an absent scope is [`Scope::All`].
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") || s.is_empty() {
            return Ok(Scope::All);
        }
        let (kind, value) = if s.starts_with('/') {
            ("resource", s)
        } else {
            match s.split_once(':') {
                Some((k, v)) => (k, v),
                None => return Err(ScopeError::Kind(keel_engine::escape(s))),
            }
        };
        let bad = value.is_empty()
            || value.chars().count() > MAX_SCOPE_LEN
            || value.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad {
            return Err(ScopeError::Value(keel_engine::escape(s)));
        }
        let value = value.to_ascii_lowercase();
        match kind.to_ascii_lowercase().as_str() {
            "region" => Ok(Scope::Region(value)),
            "resource-group" => Ok(Scope::ResourceGroup(value)),
            "resource" => Ok(Scope::Resource(value)),
            _ => Err(ScopeError::Kind(keel_engine::escape(kind))),
        }
    }

    /// The scope's kind, a metric label (`all`, `region`, `resource_group`, `resource`).
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Region(_) => "region",
            Scope::ResourceGroup(_) => "resource_group",
            Scope::Resource(_) => "resource",
        }
    }

    /// Whether an event falls in this scope.
    pub fn matches(&self, ev: &Event) -> bool {
        let r = &ev.resource;
        match self {
            Scope::All => true,
            Scope::Region(want) => r
                .region
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(want)),
            Scope::ResourceGroup(want) => {
                r.id.as_deref()
                    .and_then(resource_group)
                    .is_some_and(|g| g.eq_ignore_ascii_case(want))
            }
            Scope::Resource(prefix) => {
                r.id.as_deref().is_some_and(|id| {
                    id.get(..prefix.len())
                        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
                }) || r
                    .name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(prefix))
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Region(v) => write!(f, "region:{v}"),
            Scope::ResourceGroup(v) => write!(f, "resource-group:{v}"),
            Scope::Resource(v) => write!(f, "resource:{v}"),
        }
    }
}

/// The resource group an ARM id names (`…/resourceGroups/{rg}/…`), if any.
fn resource_group(id: &str) -> Option<&str> {
    let mut segs = id.split('/').map(str::trim).filter(|s| !s.is_empty());
    segs.find(|s| s.eq_ignore_ascii_case("resourceGroups"))?;
    segs.next()
}

/// The first of `pauses` (scope, reason) whose scope matches `ev`; stored scopes that no
/// longer parse are skipped.
pub fn matching<'a>(pauses: &'a [(String, String)], ev: &Event) -> Option<&'a (String, String)> {
    pauses
        .iter()
        .find(|(scope, _)| Scope::parse(scope).is_ok_and(|s| s.matches(ev)))
}

/// By when a held decision must have run, else it escalates: the runbook's deadline (a drain:
/// [`super::steps::runbook_deadline`]), else the maintenance's `not_before` when it was still
/// ahead at the decision. `None`: it may wait for the resume however long.
pub fn hold_deadline(ev: &Event, d: &Decision, decided_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    super::steps::runbook_deadline(ev, d, decided_at).or_else(|| {
        ev.maintenance
            .as_ref()
            .and_then(|m| m.not_before)
            .filter(|nb| *nb > decided_at && d.action != Action::Escalate)
    })
}

/// The outbox entry (key, body) of a held decision whose deadline passed while paused.
fn past_deadline_entry(h: &HeldRow, deadline: &str) -> (String, String) {
    let k = super::outbox::key(&h.decision_id, "paused_past_deadline");
    let body = serde_json::json!({
        "kind": "paused_past_deadline", "idempotency_key": k, "decision_id": h.decision_id,
        "event_id": h.event_id, "action": h.action,
        "reason": past_deadline_reason(h, deadline), "severity": "error", "escalation_key": k,
    });
    (k, body.to_string())
}

fn past_deadline_reason(h: &HeldRow, deadline: &str) -> String {
    format!(
        "`{}` for event {} was paused past its deadline ({deadline}) by pause `{}`",
        h.action,
        escape(&h.event_id),
        escape(&h.scope)
    )
}

impl Host {
    /// Before a runbook's first step with an effect (`key` is that step's idempotency key):
    /// holds the decision when a pause matches its event and no effect of it has begun (a
    /// runbook resumed after a restart past its first effect is in flight: it goes on).
    /// Returns whether it was held (the runbook must stop here). The `escalate` runbook and
    /// a dry run are never held.
    pub fn hold_if_paused(
        &self,
        key: &str,
        decision_id: &str,
        ev: &Event,
        d: &Decision,
        decided_at: DateTime<Utc>,
    ) -> bool {
        if d.action == Action::Escalate || self.cfg.dry_run {
            return false;
        }
        let pauses: Vec<(String, String)> = match self.store.pauses() {
            Ok(p) => p.into_iter().map(|p| (p.scope, p.reason)).collect(),
            // The step's own record (next) reports a failing store.
            Err(_) => return false,
        };
        let Some((scope, reason)) = matching(&pauses, ev) else {
            return false;
        };
        if self.store.step_begun(key).unwrap_or(true) {
            return false;
        }
        let now = Utc::now();
        let deadline = hold_deadline(ev, d, decided_at).map(rfc);
        let row = HeldRow {
            decision_id: decision_id.to_string(),
            event_id: ev.id.clone(),
            action: d.action.as_str().to_string(),
            event_json: keel_engine::redact::to_redacted_string(ev).unwrap_or_default(),
            scope: scope.clone(),
            reason: reason.clone(),
            since: rfc(now),
            deadline: deadline.clone(),
        };
        if let Err(e) = self.store.hold(&row) {
            // Not recorded: the runbook stays pending (resumed at the next start), and no
            // effect runs while paused.
            self.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": decision_id, "error": e.to_string(),
            }));
            return true;
        }
        self.metrics
            .add("keel_held_total", &[("reason", "pause")], 1.0);
        self.log_line(&serde_json::json!({
            "time": rfc(now), "decision_id": decision_id, "event_id": ev.id,
            "held": {"by": "pause", "scope": scope, "reason": reason, "deadline": deadline},
        }));
        true
    }

    /// One look at the pauses (the `/readyz` report, `keel_paused{kind}`) and at the held
    /// decisions: one whose deadline passed escalates ("paused past its deadline", even when
    /// resumed since: it is too late), one no pause matches any more is released: its
    /// runbook is returned, to start. Runs on the blocking pool, every tick of the run loop.
    pub fn check_pauses(self: &Arc<Self>) -> Vec<Work> {
        let mut work: Vec<Work> = Vec::new();
        let pauses = match self.store.pauses() {
            Ok(p) => p,
            Err(e) => {
                self.log_line(
                    &serde_json::json!({"time": rfc(Utc::now()), "error": e.to_string()}),
                );
                return work;
            }
        };
        for kind in ["all", "region", "resource_group", "resource"] {
            let n = pauses
                .iter()
                .filter(|p| Scope::parse(&p.scope).is_ok_and(|s| s.kind() == kind))
                .count();
            self.metrics.set("keel_paused", &[("kind", kind)], n as f64);
        }
        let pairs: Vec<(String, String)> = pauses
            .iter()
            .map(|p| (p.scope.clone(), p.reason.clone()))
            .collect();
        self.health.set_pauses(pairs.clone());
        let held = match self.store.held() {
            Ok(h) => h,
            Err(e) => {
                self.log_line(
                    &serde_json::json!({"time": rfc(Utc::now()), "error": e.to_string()}),
                );
                return work;
            }
        };
        let now = Utc::now();
        for h in held {
            let ev = serde_json::from_str::<Event>(&h.event_json).ok();
            let due = h
                .deadline
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.with_timezone(&Utc) <= now);
            let still = ev.as_ref().and_then(|ev| matching(&pairs, ev)).is_some();
            let res = if due {
                let deadline = h.deadline.clone().unwrap_or_default();
                let (k, body) = past_deadline_entry(&h, &deadline);
                let entry = super::store::NewOutbox {
                    key: &k,
                    decision_id: &h.decision_id,
                    body: &body,
                };
                self.store
                    .expire_held(&h.decision_id, &entry, &rfc(now))
                    .map(|()| {
                        self.metrics.add(
                            "keel_runbooks_failed_total",
                            &[("action", &h.action)],
                            1.0,
                        );
                        serde_json::json!({
                            "time": rfc(now), "decision_id": h.decision_id, "escalation": {
                                "reason": past_deadline_reason(&h, &deadline),
                                "severity": "error",
                            },
                        })
                    })
            } else if !still {
                // Resumed (or its pause replaced by one of another scope) in time.
                match (self.store.release(&h.decision_id), ev) {
                    (Ok(Some(json)), Some(ev)) => {
                        if let Ok(d) = serde_json::from_str::<Decision>(&json) {
                            work.push((h.decision_id.clone(), ev, d));
                        }
                        Ok(serde_json::json!({
                            "time": rfc(now), "decision_id": h.decision_id,
                            "event_id": h.event_id,
                            "released": {"by": "pause", "scope": h.scope},
                        }))
                    }
                    (Ok(_), _) => continue,
                    (Err(e), _) => Err(e),
                }
            } else {
                continue;
            };
            match res {
                Ok(line) => self.log_line(&line),
                Err(e) => self.log_line(&serde_json::json!({
                    "time": rfc(now), "decision_id": h.decision_id, "error": e.to_string(),
                })),
            }
        }
        work
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
