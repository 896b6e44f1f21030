//! `budgets:` in `keel.yaml`: concurrency budgets, each keyed by a CEL expression over the
//! event, taken as leases before a runbook's first effect (see `run::budget`).

use std::sync::Arc;

use keel_engine::{Action, KeyExpr};
use serde_json::Value;

use super::V;

/// The most budgets a configuration may declare.
pub const MAX_BUDGETS: usize = 64;

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

/// A concurrency budget.
#[derive(Debug, Clone)]
pub struct Budget {
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
    /// How long a lease lasts unless renewed, seconds (renewed while the runbook runs).
    pub lease_ttl_s: i64,
}

/// Reads `budgets:` (a list).
pub(super) fn parse_budgets(v: &mut V<'_>, b: Option<&Value>) -> Vec<Budget> {
    let Some(b) = b else { return Vec::new() };
    let Some(list) = b.as_array() else {
        v.err("/budgets", "expected a list of budgets");
        return Vec::new();
    };
    if list.len() > MAX_BUDGETS {
        v.err(
            "/budgets",
            format!("at most {MAX_BUDGETS} budgets may be declared"),
        );
        return Vec::new();
    }
    let mut out: Vec<Budget> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let p = format!("/budgets/{i}");
        v.keys(
            &p,
            item,
            &[
                "name",
                "key",
                "per",
                "actions",
                "max_in_flight",
                "group_size",
                "min_healthy",
                "bake",
                "lease_ttl",
            ],
        );
        if !item.is_object() {
            continue;
        }
        let name = match item.get("name").and_then(Value::as_str) {
            Some(n) if super::name_ok(n, 64, "-_") => n.to_string(),
            _ => {
                v.err(
                    &format!("{p}/name"),
                    "expected a name of 1 to 64 letters, digits, `-` and `_`",
                );
                continue;
            }
        };
        if out.iter().any(|o| o.name == name) {
            v.err(
                &format!("{p}/name"),
                format!("budget `{name}` is declared twice"),
            );
        }
        let key = match item.get("key") {
            None => {
                v.err(
                    &p,
                    "a budget needs a `key`: a CEL expression over the event",
                );
                None
            }
            Some(k) => expr(v, &format!("{p}/key"), k),
        };
        let per = item
            .get("per")
            .and_then(|k| expr(v, &format!("{p}/per"), k));
        let actions = actions(v, &format!("{p}/actions"), item.get("actions"));
        let max_in_flight = match item.get("max_in_flight") {
            None => {
                v.err(&p, "a budget needs `max_in_flight`: a count such as 1, or a percentage such as \"25%\"");
                Amount::Count(1)
            }
            Some(m) => amount(v, &format!("{p}/max_in_flight"), m, false),
        };
        let group_size = item.get("group_size").and_then(|g| {
            match g.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=1_000_000).contains(&n) => Some(n),
                _ => {
                    v.err(
                        &format!("{p}/group_size"),
                        "expected a whole number from 1 to 1000000",
                    );
                    None
                }
            }
        });
        let min_healthy = item
            .get("min_healthy")
            .map(|m| amount(v, &format!("{p}/min_healthy"), m, true));
        let bake = v.duration_at(&p, item, "bake", std::time::Duration::ZERO);
        let ttl = v.positive_at(&p, item, "lease_ttl", std::time::Duration::from_secs(60));
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        if ttl.as_secs() < 3 {
            v.err(
                &format!("{p}/lease_ttl"),
                "a lease must last at least 3s (it is renewed every third of it)",
            );
        }
        if let (Some(key), Some(actions)) = (key, actions) {
            out.push(Budget {
                name,
                key,
                per,
                actions,
                max_in_flight,
                group_size,
                min_healthy,
                bake_s: secs(bake),
                lease_ttl_s: secs(ttl).max(3),
            });
        }
    }
    out
}

/// A CEL key expression; its problems at the expression's position.
fn expr(v: &mut V<'_>, ptr: &str, val: &Value) -> Option<Arc<KeyExpr>> {
    let Some(text) = val.as_str() else {
        v.err(ptr, "expected a CEL expression (a string)");
        return None;
    };
    match KeyExpr::compile(text) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            let help = e.help.map_or_else(String::new, |h| format!(" (help: {h})"));
            v.err(
                ptr,
                format!(
                    "{} (at character {} of the expression){help}",
                    e.message,
                    e.offset + 1
                ),
            );
            None
        }
    }
}

/// The actions a budget applies to (default `[drain]`): any but `escalate` and `none`.
pub(super) fn actions(v: &mut V<'_>, ptr: &str, val: Option<&Value>) -> Option<Vec<Action>> {
    let Some(val) = val else {
        return Some(vec![Action::Drain]);
    };
    let list = val.as_array().filter(|l| !l.is_empty());
    let Some(list) = list else {
        v.err(ptr, "expected a non-empty list of actions, such as [drain]");
        return None;
    };
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        match serde_json::from_value::<Action>(a.clone()) {
            Ok(Action::Escalate | Action::None) | Err(_) => {
                v.err(
                    &format!("{ptr}/{i}"),
                    "expected one of: drain, retry, retry_without_agent, defer, acknowledge",
                );
                return None;
            }
            Ok(a) => out.push(a),
        }
    }
    Some(out)
}

/// A count (a whole number; 0 allowed only for `min_healthy`) or a percentage `"N%"`.
fn amount(v: &mut V<'_>, ptr: &str, val: &Value, zero_ok: bool) -> Amount {
    let min = u64::from(!zero_ok);
    if let Some(n) = val.as_u64() {
        if (min..=1_000_000).contains(&n) {
            return Amount::Count(u32::try_from(n).unwrap_or(1));
        }
    }
    if let Some(p) = val
        .as_str()
        .and_then(|s| s.trim().strip_suffix('%'))
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if p.is_finite() && p > 0.0 && p <= 100.0 {
            return Amount::Percent(p);
        }
    }
    v.err(
        ptr,
        format!(
            "expected a whole number from {min} to 1000000, or a percentage of the group such as \"25%\""
        ),
    );
    Amount::Count(1)
}
