//! Blast-radius guards applied by [`crate::Engine::decide`] after resolution: a **storm
//! guard**, a **retry budget** and a **flap guard**, on by default ([`GuardConfig::default`]).
//!
//! A guard reads only the correlation [`History`] the caller passes in [`crate::Ctx`] (the
//! failures, first attempts and retries it indexes per scope, and the remediations it indexes
//! per resource): it keeps no state of its own, so a host that rebuilds its history from its
//! store after a restart guards exactly as before. Without a history, guards see nothing and
//! hold nothing.
//!
//! A guard applies to failures only: an `operation_failure` event, or a `health` event whose
//! state is `unavailable` or `degraded`. Its **scope** is the event's region and failure
//! category (`westeurope/vm_agent`; `health` for a health event; `-` for an unknown region).
//! When a guard holds a remediation, the decision's action becomes `escalate`, its reason
//! names the guard, the scope and the figures, [`Decision::guard`] keeps the held action, and
//! one escalation is added (policy `guard.storm`, `guard.retry_budget` or `guard.flap`). That
//! escalation pages once per scope: it is a [`crate::Escalation::repeat`] when anything
//! (a policy or a guard) escalated for the same scope (for the flap guard, the same resource)
//! less than [`PAGE_GAP_S`] before, or a policy escalates in the same decision, and its key
//! then names the first escalation of that run,
//! so a 500-VM outage pages once, whichever escalated first.

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decision::{Action, Decision, Escalation, Severity, SharedStr};
pub use crate::decision::{GuardHold, GuardName};
use crate::event::{Event, Timestamp};
use crate::history::History;
pub use crate::scope::PAGE_GAP_S;
use crate::scope::{is_remediation, resource_scope, scope, HOST_WIDE};

/// The retry budget (the model is the retry budgets of gRPC, Envoy and Finagle): a `retry` or
/// `retry_without_agent` is allowed while the retries decided in the window, counting this
/// one, stay within `ratio` × the first attempts seen failing in the window + `min_retries`,
/// per scope and host-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct RetryBudget {
    /// Off: every retry is allowed.
    pub enabled: bool,
    /// Retries allowed per first attempt, 0 to 1 (default 0.1: one retry in ten failures,
    /// Envoy's and gRPC's 10–20% budgets, at the low end because a failing region is the case
    /// that matters).
    pub ratio: f64,
    /// Retries always allowed in the window (default 3: a single VM whose create failed is
    /// retried as the policies say, whatever the ratio).
    pub min_retries: u32,
    /// Window, seconds (default 600: long enough to span an ARM create's retries, short
    /// enough to recover quickly after an incident).
    pub window_s: i64,
    /// The floor of the host-wide budget (default 10: a few scopes' floors at once, so that
    /// one failing region does not spend the retries of the others).
    pub host_min_retries: u32,
}

/// The storm guard: when the failures of a scope reach `threshold` within `window_s`, no new
/// remediation in that scope until they have stayed below it for `cooldown_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct StormGuard {
    /// Off: no storm hold.
    pub enabled: bool,
    /// Failures in the window that make a storm (default 20: far above a fleet's background
    /// failure rate in one region and category, and reached within a minute in the
    /// 2021-10-13 outage).
    pub threshold: u32,
    /// Window, seconds (default 300).
    pub window_s: i64,
    /// How long the rate must have stayed below the threshold before remediations resume,
    /// seconds (default 900: regional incidents recover in tens of minutes, and resuming on
    /// the first quiet minute would feed a relapse).
    pub cooldown_s: i64,
}

/// The flap guard: past `max_attempts` remediations of one resource within `window_s`,
/// without a healthy period (no failure event) of `reset_after_s` between them, the action
/// escalates instead of repeating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct FlapGuard {
    /// Off: no flap hold.
    pub enabled: bool,
    /// Remediations allowed (default 3: a retry, a retry without the agent and one more;
    /// a fourth rarely fixes what three did not).
    pub max_attempts: u32,
    /// Window, seconds (default 3600).
    pub window_s: i64,
    /// A resource with no failure for this long starts counting again, seconds (default
    /// 3600).
    pub reset_after_s: i64,
}

/// The guards' settings. [`GuardConfig::default`] has all three on with the documented
/// values; set a guard's `enabled` to false to turn it off, or use [`GuardConfig::off`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct GuardConfig {
    /// The retry budget.
    pub retry_budget: RetryBudget,
    /// The storm guard.
    pub storm: StormGuard,
    /// The flap guard.
    pub flap: FlapGuard,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            enabled: true,
            ratio: 0.1,
            min_retries: 3,
            window_s: 600,
            host_min_retries: 10,
        }
    }
}

impl Default for StormGuard {
    fn default() -> StormGuard {
        StormGuard {
            enabled: true,
            threshold: 20,
            window_s: 300,
            cooldown_s: 900,
        }
    }
}

impl Default for FlapGuard {
    fn default() -> FlapGuard {
        FlapGuard {
            enabled: true,
            max_attempts: 3,
            window_s: 3600,
            reset_after_s: 3600,
        }
    }
}

impl GuardConfig {
    /// Every guard off.
    pub fn off() -> GuardConfig {
        let mut g = GuardConfig::default();
        g.retry_budget.enabled = false;
        g.storm.enabled = false;
        g.flap.enabled = false;
        g
    }
}

fn is_retry(a: Action) -> bool {
    matches!(a, Action::Retry | Action::RetryWithoutAgent)
}

/// A duration for a message: `10m`, `1h`, `90s`.
fn human(secs: i64) -> String {
    if secs > 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn window(secs: i64) -> Duration {
    Duration::try_seconds(secs.max(1)).unwrap_or(Duration::MAX)
}

/// Applies the guards to a resolved decision (see the module docs).
pub(crate) fn apply(cfg: &GuardConfig, ev: &Event, h: &History, d: &mut Decision) {
    if !is_remediation(d.action) {
        return;
    }
    let Some(scope) = scope(ev) else {
        return;
    };
    let held = storm(&cfg.storm, ev, &scope, h)
        .or_else(|| retry_budget(&cfg.retry_budget, ev, d.action, &scope, h))
        .or_else(|| flap(&cfg.flap, ev, h));
    let Some((name, guard_scope, reason)) = held else {
        return;
    };
    let page_scope = match name {
        GuardName::Flap => resource_scope(&guard_scope),
        _ => scope.clone(),
    };
    let (key, seen) = page_key(&page_scope, ev.time, h);
    // A policy escalating in this same decision already pages for the scope.
    let repeat = seen || !d.escalations.is_empty();
    let shared: SharedStr = SharedStr::from(reason.as_str());
    d.escalations.push(Escalation {
        policy: SharedStr::interned(name.policy()),
        reason: shared.clone(),
        key,
        severity: if name == GuardName::Storm {
            Severity::Critical
        } else {
            Severity::Error
        },
        repeat,
    });
    d.guard = Some(GuardHold {
        name,
        scope: guard_scope,
        held_action: d.action,
        reason,
    });
    d.action = Action::Escalate;
    d.reason = Some(shared);
    d.retry = None;
}

/// The key of a guard's escalation for `page_scope` at `t`, and whether it is a repeat: inside
/// a run of escalations of the scope, the run's first one names the key.
fn page_key(page_scope: &str, t: Timestamp, h: &History) -> (String, bool) {
    let run = h
        .page_run(page_scope)
        .filter(|(_, last)| t.signed_duration_since(*last).num_seconds() <= PAGE_GAP_S);
    let start = run.map_or(t, |(start, _)| start);
    let mut s = Sha256::new();
    s.update(b"keel.guard");
    s.update([0x1f]);
    s.update(page_scope.as_bytes());
    s.update([0x1e]);
    s.update(start.timestamp().to_string().as_bytes());
    (hex::encode(s.finalize()), run.is_some())
}

fn storm(
    cfg: &StormGuard,
    ev: &Event,
    scope: &str,
    h: &History,
) -> Option<(GuardName, String, String)> {
    if !cfg.enabled {
        return None;
    }
    let t = ev.time;
    let win = window(cfg.window_s);
    let over = h.storm_over(scope, t, win, window(cfg.cooldown_s), cfg.threshold)?;
    let now = h.failures_in(scope, t, win);
    let shown = crate::escape(scope);
    let reason = if now >= u64::from(cfg.threshold) {
        format!(
            "storm guard: {now} failures in {shown} in {} (threshold {}); remediations there are held until the rate stays below it for {}",
            human(cfg.window_s),
            cfg.threshold,
            human(cfg.cooldown_s)
        )
    } else {
        format!(
            "storm guard: {shown} reached {} failures in {} at {}; {now} in the last {}, remediations resume {} after it fell below the threshold",
            cfg.threshold,
            human(cfg.window_s),
            over.to_rfc3339(),
            human(cfg.window_s),
            human(cfg.cooldown_s)
        )
    };
    Some((GuardName::Storm, scope.to_string(), reason))
}

fn retry_budget(
    cfg: &RetryBudget,
    ev: &Event,
    action: Action,
    scope: &str,
    h: &History,
) -> Option<(GuardName, String, String)> {
    if !cfg.enabled || !is_retry(action) {
        return None;
    }
    let win = window(cfg.window_s);
    for (s, place, floor) in [
        (
            scope,
            format!("in {}", crate::escape(scope)),
            cfg.min_retries,
        ),
        (HOST_WIDE, "host-wide".to_string(), cfg.host_min_retries),
    ] {
        let retries = h.retries_in(s, ev.time, win);
        let firsts = h.firsts_in(s, ev.time, win);
        let budget = cfg.ratio.clamp(0.0, 1.0) * firsts as f64 + f64::from(floor);
        if (retries + 1) as f64 > budget {
            let reason = format!(
                "retry budget exhausted {place}: {retries} retries for {firsts} failures in {}, budget {}% + {}",
                human(cfg.window_s),
                (cfg.ratio.clamp(0.0, 1.0) * 100.0).round(),
                floor
            );
            return Some((GuardName::RetryBudget, s.to_string(), reason));
        }
    }
    None
}

fn flap(cfg: &FlapGuard, ev: &Event, h: &History) -> Option<(GuardName, String, String)> {
    if !cfg.enabled {
        return None;
    }
    let resource = ev.resource.id.as_deref().or(ev.resource.name.as_deref())?;
    let n = h.remediations_in_run(
        resource,
        ev.time,
        window(cfg.window_s),
        window(cfg.reset_after_s),
    );
    if n < u64::from(cfg.max_attempts) {
        return None;
    }
    let reason = format!(
        "flap guard: {} had {n} remediations in {} without {} healthy (max {}); escalating instead of repeating",
        crate::escape(resource),
        human(cfg.window_s),
        human(cfg.reset_after_s),
        cfg.max_attempts
    );
    Some((GuardName::Flap, resource.to_string(), reason))
}
