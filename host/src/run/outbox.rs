//! The escalation outbox: every escalation (a decision's new ones, and a failed runbook's) is
//! written to the store with the decision, then delivered by one task to the `escalate`
//! runbook's `http` steps (a `log` step only logs), with retries, exponential backoff with
//! jitter and `Retry-After`. An entry stays until delivered, across restarts: a webhook that
//! times out, or a process killed, loses nothing. Every attempt carries the entry's key as
//! `Idempotency-Key`, so the receiver can drop repeats (delivery is at least once).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_engine::{escape, Action, Decision, Event};
use tokio::sync::watch;

use super::backoff;
use super::store::OutboxRow;
use super::{rfc, Host};
use crate::config::StepKind;

/// The longest wait between two delivery attempts of one entry.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// How often the task looks for due entries.
const POLL: Duration = Duration::from_millis(100);

/// The outbox key of something a decision escalates: the same after a restart.
pub fn key(decision_id: &str, what: &str) -> String {
    super::short_hash(&format!("{decision_id}\u{1f}outbox\u{1f}{what}"), 16)
}

/// The outbox entries (key, body) of a decision's escalations that are not repeats.
pub fn decision_entries(decision_id: &str, ev: &Event, d: &Decision) -> Vec<(String, String)> {
    d.escalations
        .iter()
        .filter(|e| !e.repeat)
        .map(|e| {
            let k = key(decision_id, &e.key);
            let body = serde_json::json!({
                "kind": "escalation", "idempotency_key": k, "decision_id": decision_id,
                "event_id": ev.id, "action": d.action, "policy": e.policy,
                "reason": e.reason, "severity": e.severity, "escalation_key": e.key,
            });
            (k, body.to_string())
        })
        .collect()
}

/// The outbox entry (key, body) of a runbook that failed.
pub fn runbook_failed_entry(decision_id: &str, ev: &Event, d: &Decision) -> (String, String) {
    let k = key(decision_id, "runbook_failed");
    let body = serde_json::json!({
        "kind": "runbook_failed", "idempotency_key": k, "decision_id": decision_id,
        "event_id": ev.id, "action": d.action, "policy": d.policy,
        "reason": format!("runbook `{}` failed for event {}", d.action, escape(&ev.id)),
        "severity": "error", "escalation_key": k,
    });
    (k, body.to_string())
}

/// Delivers due entries until `stop` turns true, and keeps `keel_outbox_depth` current.
pub async fn deliver(host: Arc<Host>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Ok(n) = host.store.outbox_depth() {
            host.metrics.set("keel_outbox_depth", &[], n as f64);
        }
        // In a fleet the entries taken are claimed for as long as delivering them all may
        // take (every `http` step's timeout, plus a margin, each): no other host attempts
        // them meanwhile; a host that dies leaves them due again at the claim's end.
        let limit = if host.store.is_fleet() { 8 } else { 32 };
        let per_entry: Duration = host
            .cfg
            .runbooks
            .get(&Action::Escalate)
            .map(|steps| {
                steps
                    .iter()
                    .fold(Duration::ZERO, |t, s| t.saturating_add(s.timeout))
            })
            .unwrap_or_default()
            .saturating_add(Duration::from_secs(5));
        let now = Utc::now();
        let claim = chrono::Duration::from_std(per_entry.saturating_mul(limit))
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now);
        match host
            .store
            .outbox_due(&rfc(now), &rfc(claim), limit as usize)
        {
            Ok(rows) => {
                for row in rows {
                    if *stop.borrow() {
                        return;
                    }
                    deliver_one(&host, &row).await;
                }
            }
            Err(e) => host.log_line(&serde_json::json!({
                "time": rfc(Utc::now()), "outbox": "error", "error": e.to_string(),
            })),
        }
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One delivery attempt of one entry to every `http` step of the `escalate` runbook.
async fn deliver_one(host: &Arc<Host>, row: &OutboxRow) {
    let body: serde_json::Value =
        serde_json::from_str(&row.body).unwrap_or_else(|_| serde_json::json!({}));
    let steps = host
        .cfg
        .runbooks
        .get(&Action::Escalate)
        .cloned()
        .unwrap_or_default();
    let mut failure: Option<String> = None;
    let mut retry_after = None;
    let mut initial = Duration::from_secs(1);
    for step in &steps {
        match &step.kind {
            StepKind::Http { .. } => {
                initial = step.backoff.max(Duration::from_millis(1));
                let res = tokio::time::timeout(
                    step.timeout,
                    super::http::post_http(host, &step.kind, &row.key, &body),
                )
                .await;
                let err = match res {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => {
                        retry_after = retry_after.max(e.retry_after);
                        e.message
                    }
                    Err(_) => format!("timed out after {:?}", step.timeout),
                };
                host.metrics
                    .add("keel_outbox_attempts_total", &[("outcome", "failed")], 1.0);
                failure = Some(format!("{}: {}", escape(&step.name), escape(&err)));
                break;
            }
            StepKind::Log => host.log_line(&serde_json::json!({
                "time": rfc(Utc::now()), "decision_id": row.decision_id,
                "outbox": row.key, "log": body,
            })),
            // Only http and log steps deliver escalations.
            _ => {}
        }
    }
    let now = Utc::now();
    match failure {
        None => {
            host.metrics
                .add("keel_outbox_attempts_total", &[("outcome", "ok")], 1.0);
            let _ = host.store.outbox_delivered(&row.key, &rfc(now));
            host.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": row.decision_id, "outbox": row.key,
                "outcome": "delivered", "attempt": row.attempts + 1,
            }));
        }
        Some(err) => {
            let wait = delay(initial, row.attempts, retry_after);
            let next = chrono::Duration::from_std(wait)
                .ok()
                .and_then(|w| now.checked_add_signed(w))
                .unwrap_or(now);
            let _ = host.store.outbox_retry(&row.key, &rfc(next), &err);
            host.log_line(&serde_json::json!({
                "time": rfc(now), "decision_id": row.decision_id, "outbox": row.key,
                "outcome": "retry", "attempt": row.attempts + 1, "error": err,
                "next_at": rfc(next),
            }));
        }
    }
}

/// The wait after the `failed`-th failure (0-based): `initial * 2^failed` capped at
/// [`MAX_DELAY`], with equal jitter, and at least the server's `Retry-After`.
pub fn delay(initial: Duration, failed: i64, retry_after: Option<Duration>) -> Duration {
    let failed = u32::try_from(failed.max(0)).unwrap_or(u32::MAX);
    backoff::equal_jitter(initial, failed, MAX_DELAY, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_with_jitter_caps_and_honours_retry_after() {
        let i = Duration::from_millis(100);
        for (n, d) in [(0, 100u64), (1, 200), (2, 400)] {
            let w = delay(i, n, None);
            assert!(w >= Duration::from_millis(d / 2) && w <= Duration::from_millis(d));
        }
        assert!(delay(i, 40, None) <= MAX_DELAY);
        assert!(delay(i, 0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
