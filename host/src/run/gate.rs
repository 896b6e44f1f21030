//! The gate before a runbook's first effect: a pause, a maintenance window, a blocker or a
//! full budget can hold a decision there, in that order (a budget last: a slot is taken only
//! when nothing else holds the decision).
//!
//! A held decision is stored (table `held`, its runbook `held`) with what holds it and why,
//! written to the decision log and counted (`keel_held_total{reason}`). The run loop looks at
//! the held decisions every tick, oldest first: one whose deadline
//! ([`pause::hold_deadline`]) passed escalates, even when nothing holds it any more (it is
//! too late); one the gate lets through is released and its runbook runs (the decision
//! stands: it is not made again); one a gate says can no longer make its deadline (a window
//! that opens after it) escalates at once. A runbook whose first effect has begun is never
//! held, and the `escalate` runbook never is: nothing here silences a page.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keel_engine::{escape, Action, Decision, Event};

use super::pause::{self, hold_deadline};
use super::store::HeldRow;
use super::{rfc, Host, Work};

/// What the gate says of a decision now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing holds it: run.
    Pass,
    /// Held: `by` is `pause`, `window`, `blocker` or `budget`; `scope` names what holds it
    /// (the pause's scope, the window's or blocker's name, the budget and key); `reason` is
    /// the one-line explanation of the decision log and `keel status`.
    Hold {
        /// What kind of gate.
        by: &'static str,
        /// Which one.
        scope: String,
        /// Why.
        reason: String,
    },
    /// Escalate now instead of waiting: the hold would make it miss its deadline.
    Escalate(String),
}

impl Host {
    /// The gate's verdict for `d` (decision `decision_id`) on `ev` at `now`; `deadline` is
    /// by when it must run. A pass takes the decision's budget slots.
    pub(crate) fn gate(
        &self,
        decision_id: &str,
        ev: &Event,
        d: &Decision,
        deadline: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Verdict {
        let paused = self.pause_verdict(ev);
        if paused != Verdict::Pass {
            return paused;
        }
        let window = self.window_verdict(ev, d, deadline, now);
        if window != Verdict::Pass {
            return window;
        }
        let blocked = self.blocker_verdict(ev, d, now);
        if blocked != Verdict::Pass {
            return blocked;
        }
        self.budget_verdict(decision_id, ev, d)
    }

    /// Before a runbook's first step with an effect (`key` is that step's idempotency key):
    /// asks the gate, and holds the decision unless it passes (a runbook resumed after a
    /// restart past its first effect is in flight: it goes on). Returns whether the runbook
    /// must stop here (held, or escalated). The `escalate` runbook and a dry run pass.
    pub fn hold_if_gated(
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
        match self.store.step_begun(key) {
            Ok(true) => {
                // Resumed past its first effect: in flight, never held; it holds its slots.
                self.resume_budget(decision_id, ev, d);
                return false;
            }
            Ok(false) => {}
            Err(e) => {
                // Fail closed: neither passed unasked nor forced into a slot. Not recorded
                // as held: the runbook stays pending (resumed at the next start).
                self.log_line(&serde_json::json!({
                    "time": rfc(Utc::now()), "decision_id": decision_id, "error": e.to_string(),
                }));
                return true;
            }
        }
        let now = Utc::now();
        let deadline = hold_deadline(ev, d, decided_at);
        let verdict = self.gate(decision_id, ev, d, deadline, now);
        let (by, scope, reason, escalate) = match verdict {
            Verdict::Pass => return false,
            Verdict::Hold { by, scope, reason } => (by, scope, reason, None),
            Verdict::Escalate(why) => ("window", String::new(), why.clone(), Some(why)),
        };
        let row = HeldRow {
            decision_id: decision_id.to_string(),
            event_id: ev.id.clone(),
            action: d.action.as_str().to_string(),
            event_json: keel_engine::redact::to_redacted_string(ev).unwrap_or_default(),
            by: by.to_string(),
            scope,
            reason,
            since: rfc(now),
            deadline: deadline.map(rfc),
        };
        if let Err(e) = self.store.hold(&row) {
            // Not recorded: the runbook stays pending (resumed at the next start), and no
            // effect runs while held.
            self.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": decision_id, "error": e.to_string(),
            }));
            return true;
        }
        self.metrics.add("keel_held_total", &[("reason", by)], 1.0);
        self.log_held(&row, now);
        if let Some(why) = escalate {
            self.escalate_held(&row, &why, now);
        }
        true
    }

    fn log_held(&self, h: &HeldRow, now: DateTime<Utc>) {
        self.log_line(&serde_json::json!({
            "time": rfc(now), "decision_id": h.decision_id, "event_id": h.event_id,
            "held": {"by": h.by, "scope": h.scope, "reason": h.reason, "deadline": h.deadline},
        }));
    }

    /// Escalates a held decision instead of running it: its `held` row goes, its runbook is
    /// `escalated`, and the escalation goes to the outbox, in one transaction.
    fn escalate_held(&self, h: &HeldRow, why: &str, now: DateTime<Utc>) {
        let kind = if h.by == "pause" {
            "paused_past_deadline"
        } else {
            "held_past_deadline"
        };
        let k = super::outbox::key(&h.decision_id, kind);
        let reason = format!(
            "`{}` for event {}: {}",
            h.action,
            escape(&h.event_id),
            escape(why)
        );
        let body = serde_json::json!({
            "kind": kind, "idempotency_key": k, "decision_id": h.decision_id,
            "event_id": h.event_id, "action": h.action, "held_by": h.by,
            "reason": reason, "severity": "error", "escalation_key": k,
        })
        .to_string();
        let entry = super::store::NewOutbox {
            key: &k,
            decision_id: &h.decision_id,
            body: &body,
        };
        let res = self.store.expire_held(&h.decision_id, &entry, &rfc(now));
        match res {
            Ok(()) => {
                self.metrics
                    .add("keel_runbooks_failed_total", &[("action", &h.action)], 1.0);
                self.log_line(&serde_json::json!({
                    "time": rfc(now), "decision_id": h.decision_id, "escalation": {
                        "reason": reason, "severity": "error", "held_by": h.by,
                    },
                }));
            }
            Err(e) => self.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": h.decision_id, "error": e.to_string(),
            })),
        }
    }

    /// One look at the pauses (the `/readyz` report, `keel_paused{kind}`), the budgets'
    /// leases (renewed) and the held decisions, oldest first: one whose deadline passed
    /// escalates, one the gate now lets through is released (its runbook is returned, to
    /// start), one still held stays (its reason updated when another gate holds it now).
    /// Runs on the deciding thread, every tick of the run loop.
    pub fn check_held(self: &Arc<Self>) -> Vec<Work> {
        let mut work: Vec<Work> = Vec::new();
        self.report_pauses();
        self.renew_budget_leases();
        let held = match self.store.held() {
            Ok(h) => h,
            Err(e) => {
                self.log_line(
                    &serde_json::json!({"time": rfc(Utc::now()), "error": e.to_string()}),
                );
                return work;
            }
        };
        for h in held {
            let now = Utc::now();
            let deadline = h
                .deadline
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            if let Some(t) = deadline.filter(|t| *t <= now) {
                let why = keel_engine::budget::held_past_deadline(t, &h.by, &h.scope, &h.reason);
                self.escalate_held(&h, &why, now);
                continue;
            }
            let ev = serde_json::from_str::<Event>(&h.event_json).ok();
            let d = self
                .store
                .decision_json(&h.decision_id)
                .ok()
                .flatten()
                .and_then(|j| serde_json::from_str::<Decision>(&j).ok());
            let (Some(ev), Some(d)) = (ev, d) else {
                continue;
            };
            match self.gate(&h.decision_id, &ev, &d, deadline, now) {
                Verdict::Pass => match self.store.release(&h.decision_id) {
                    Ok(Some(_)) => {
                        self.log_line(&serde_json::json!({
                            "time": rfc(now), "decision_id": h.decision_id,
                            "event_id": h.event_id,
                            "released": {"by": h.by, "scope": h.scope},
                        }));
                        work.push((h.decision_id.clone(), ev, d));
                    }
                    // Not released (gone meanwhile, or the store failed): its slots go back.
                    Ok(None) => self.release_budget(&h.decision_id),
                    Err(e) => {
                        self.release_budget(&h.decision_id);
                        self.log_line(&serde_json::json!({
                            "time": rfc(now), "decision_id": h.decision_id,
                            "error": e.to_string(),
                        }));
                    }
                },
                Verdict::Hold { by, scope, reason } => {
                    // Held by another gate now: a new line. The same gate with new figures
                    // (a lease renewed, a window's next opening): the stored reason only.
                    let other = by != h.by || scope != h.scope;
                    if other || reason != h.reason {
                        let row = HeldRow {
                            by: by.to_string(),
                            scope,
                            reason,
                            ..h
                        };
                        if self.store.hold(&row).is_ok() && other {
                            self.metrics.add("keel_held_total", &[("reason", by)], 1.0);
                            self.log_held(&row, now);
                        }
                    }
                }
                Verdict::Escalate(why) => self.escalate_held(&h, &why, now),
            }
        }
        work
    }

    /// The pauses' gauges and `/readyz` report.
    fn report_pauses(&self) {
        let pauses = match self.store.pauses() {
            Ok(p) => p,
            Err(e) => {
                self.log_line(
                    &serde_json::json!({"time": rfc(Utc::now()), "error": e.to_string()}),
                );
                return;
            }
        };
        for kind in ["all", "region", "resource_group", "resource"] {
            let n = pauses
                .iter()
                .filter(|p| pause::Scope::parse(&p.scope).is_ok_and(|s| s.kind() == kind))
                .count();
            self.metrics.set("keel_paused", &[("kind", kind)], n as f64);
        }
        self.health
            .set_pauses(pauses.into_iter().map(|p| (p.scope, p.reason)).collect());
    }
}
