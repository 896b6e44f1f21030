//! Concurrency budgets: the pure model shared by the host (`budgets:` in `keel.yaml`, leases
//! in its state database) and `keel test` (`budgets:` in a test file, leases on the virtual
//! clock of a sequence).
//!
//! A budget groups events by its `key` (a CEL expression: an availability set, a zone, a
//! tag) and lets at most `max_in_flight` units of a group run an action it names at once; a
//! unit is what `per` evaluates to (an update domain: the VMs of one update domain share a
//! slot), or the resource. A runbook takes its slots before its first effect and gives them
//! back when it ends; a slot then stays taken for the budget's `bake` time. A decision that
//! finds a budget full is held, with the reason [`admit`] gives, until a slot frees or its
//! deadline ([`hold_deadline`]) passes, when it escalates.
//!
//! An event whose key does not evaluate (a field it does not carry) falls in the group
//! [`UNKNOWN`]: unknown events share one group rather than escape the budget. One whose `per`
//! does not evaluate is its own unit (its resource), as without `per`: a shared unknown unit
//! would let them all through on one slot.
//!
//! [`read_budgets`] reads the list, with file:line:column for every problem; the host and
//! the test runner read the same keys through it.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::decision::{Action, Decision};
use crate::diag::escape;
use crate::event::{Event, HealthState, Kind, Timestamp};
use crate::key::KeyExpr;

mod read;

pub use self::read::{read_budgets, MAX_BUDGETS};

/// The group of an event whose key does not evaluate.
pub const UNKNOWN: &str = "?";

/// A count, or a percentage of the group's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// So many.
    Count(u32),
    /// This percentage (0 < p ≤ 100) of the group, rounded down, at least 1.
    Percent(f64),
}

impl Amount {
    /// The amount for a group of `size`: a percentage is rounded down and is at least 1.
    pub fn of(self, size: u32) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => ((f64::from(size) * p / 100.0).floor() as u32).max(1),
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A concurrency budget, as declared.
#[derive(Debug, Clone)]
pub struct BudgetSpec {
    /// Its name (letters, digits, `-`, `_`; unique).
    pub name: String,
    /// The group an event belongs to (e.g. its availability set).
    pub key: Arc<KeyExpr>,
    /// What occupies a slot within the group (e.g. the update domain): events with the same
    /// `per` share one slot. Absent: each resource takes its own.
    pub per: Option<Arc<KeyExpr>>,
    /// The actions that take a slot (default `drain`).
    pub actions: Vec<Action>,
    /// How many units of a group may be in flight at once.
    pub max_in_flight: Amount,
    /// The group's size, when declared; else the members observed.
    pub group_size: Option<u32>,
    /// How many members must stay healthy (not in flight, not unhealthy) when a slot is
    /// taken.
    pub min_healthy: Option<Amount>,
    /// How long a slot stays taken after its runbook ends, seconds.
    pub bake_s: i64,
    /// How long a lease lasts unless renewed, seconds (renewed while the runbook runs; the
    /// host's concern: on a test's virtual clock a holder never dies).
    pub lease_ttl_s: i64,
}

impl BudgetSpec {
    /// Whether a decision with action `a` takes a slot of this budget.
    pub fn applies_to(&self, a: Action) -> bool {
        self.actions.contains(&a)
    }
}

/// A slot taken in a budget key's group, as [`admit`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The unit that occupies the slot.
    pub unit: String,
    /// Who holds it (the host: `<host>#<random>`; a test: the holding step's event id).
    pub holder: String,
    /// Until when it is taken, unless renewed (a released slot: when its bake ends).
    pub expires_at: Timestamp,
    /// Whether its runbook ended (the slot is baking).
    pub released: bool,
}

/// A member of a budget key's group, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member (the unit).
    pub member: String,
    /// Whether its last health signal was healthy.
    pub healthy: bool,
}

/// What a budget's admission sees of one key at an instant.
#[derive(Debug, Clone, Default)]
pub struct KeyView {
    /// The leases not expired (held, or released and baking), soonest expiry first.
    pub live: Vec<Lease>,
    /// The members seen with this key.
    pub members: Vec<Member>,
}

/// A time as the decision log and the reasons write it: RFC 3339, UTC, milliseconds.
pub fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The key and the unit of `ev` in budget `b`.
pub fn key_and_unit(b: &BudgetSpec, ev: &Event) -> (String, String) {
    let key = b.key.eval(ev, ev.time).unwrap_or_else(|_| UNKNOWN.into());
    let resource = || {
        ev.resource
            .id
            .clone()
            .or_else(|| ev.resource.name.clone())
            .unwrap_or_else(|| ev.id.clone())
    };
    // A `per` that does not evaluate falls back to the resource: a shared unit `?` would let
    // every such event through on one slot.
    let unit = match &b.per {
        Some(p) => p.eval(ev, ev.time).unwrap_or_else(|_| resource()),
        None => resource(),
    };
    (key, unit)
}

/// Whether budget `b` admits `unit` into its group `key` as `view` shows it: `Err` says why
/// not, in the words of the decision log, `keel status` and `keel test`.
pub fn admit(b: &BudgetSpec, key: &str, unit: &str, view: &KeyView) -> Result<(), String> {
    let units: BTreeSet<&str> = view.live.iter().map(|l| l.unit.as_str()).collect();
    if units.contains(unit) {
        // Its unit is in flight already (another VM of the same update domain): it shares
        // the unit's slot.
        return Ok(());
    }
    let observed = u32::try_from(view.members.len()).unwrap_or(u32::MAX);
    let size = b.group_size.unwrap_or(observed).max(1);
    let max = b.max_in_flight.of(size);
    let in_flight = u32::try_from(units.len()).unwrap_or(u32::MAX);
    if in_flight >= max {
        let first = view.live.first();
        let until = first.map_or_else(|| "?".to_string(), |l| rfc(l.expires_at));
        let (what, who) = match first {
            Some(l) if l.released => ("baking", format!("unit {}", l.unit)),
            Some(l) => ("holder", l.holder.clone()),
            None => ("holder", "?".to_string()),
        };
        return Err(format!(
            "budget {}/{} full, {in_flight}/{max} in flight, {what} {} until {until}",
            b.name,
            escape(key),
            escape(&who)
        ));
    }
    if let Some(min) = b.min_healthy {
        let want = min.of(size);
        let unhealthy = view
            .members
            .iter()
            .filter(|m| !m.healthy && !units.contains(m.member.as_str()) && m.member != unit)
            .count();
        let unhealthy = u32::try_from(unhealthy).unwrap_or(u32::MAX);
        let healthy_after = size.saturating_sub(in_flight + 1).saturating_sub(unhealthy);
        if healthy_after < want {
            return Err(format!(
                "budget {}/{}: taking a slot would leave {healthy_after} of {size} healthy, \
                 fewer than min_healthy {min} ({in_flight} in flight, {unhealthy} unhealthy)",
                b.name,
                escape(key)
            ));
        }
    }
    Ok(())
}

/// The health an event reports of its resource, for the budgets' `min_healthy`: `None` when
/// it says nothing about it.
pub fn health_of(ev: &Event) -> Option<bool> {
    match ev.kind {
        Kind::Health => ev.health.as_ref().map(|h| match h.state {
            HealthState::Available => Some(true),
            HealthState::Unavailable | HealthState::Degraded => Some(false),
            HealthState::Unknown => None,
        })?,
        _ => None,
    }
}

/// When a runbook must have finished: for a drain, the earlier of the event's `not_before`
/// (the platform acts then, drained or not; ignored when it had passed when the decision was
/// made) and the decision's `deadline_s` counted from the decision (so a runbook resumed
/// after a restart keeps its original deadline). `None`: no deadline beyond each step's own
/// timeouts.
pub fn runbook_deadline(ev: &Event, d: &Decision, decided_at: Timestamp) -> Option<Timestamp> {
    if d.action != Action::Drain {
        return None;
    }
    let by_param = d
        .params
        .get("deadline_s")
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| chrono::Duration::try_milliseconds((s * 1000.0) as i64))
        .and_then(|dur| decided_at.checked_add_signed(dur));
    // A NotBefore already past when the event was seen (a notice read late, a vendor
    // document replayed) sets no deadline: draining late still limits the damage.
    let by_notice = ev
        .maintenance
        .as_ref()
        .and_then(|m| m.not_before)
        .filter(|nb| *nb > decided_at);
    match (by_param, by_notice) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// By when a held decision must have run, else it escalates: the runbook's deadline (a drain:
/// [`runbook_deadline`]), else the maintenance's `not_before` when it was still ahead at the
/// decision. `None`: it may wait however long.
pub fn hold_deadline(ev: &Event, d: &Decision, decided_at: Timestamp) -> Option<Timestamp> {
    runbook_deadline(ev, d, decided_at).or_else(|| {
        ev.maintenance
            .as_ref()
            .and_then(|m| m.not_before)
            .filter(|nb| *nb > decided_at && d.action != Action::Escalate)
    })
}

/// Why a held decision escalates at its deadline (`by`: what held it, `pause`, `window`,
/// `blocker` or `budget`; `scope`: which one; `reason`: why it was held), in the words of the
/// host's escalation and `keel test`.
pub fn held_past_deadline(deadline: Timestamp, by: &str, scope: &str, reason: &str) -> String {
    let verb = if by == "pause" { "paused" } else { "held" };
    format!(
        "{verb} past its deadline ({}) by {by} `{scope}`: {reason}",
        rfc(deadline)
    )
}

#[cfg(test)]
mod tests;
