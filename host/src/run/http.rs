//! What the runbook steps and the outbox share to reach the network: a step attempt's
//! [`StepError`], the webhook post of `http` steps and escalations (generic or PagerDuty
//! Events v2), the Scheduled Events approval of `azure_ack` steps, and bounded reads of
//! response bodies.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_engine::normalize::azure_scheduled_events::start_requests;
use keel_engine::Event;

use super::{rfc, Host};
use crate::config::{HttpFormat, StepKind};

/// Why one attempt of a step failed.
#[derive(Debug)]
pub struct StepError {
    /// What went wrong (escaped before it is logged).
    pub message: String,
    /// The server's `Retry-After`: the next attempt waits at least that long.
    pub retry_after: Option<Duration>,
    /// Whether another attempt cannot help (a refused request, nothing to resubmit): the
    /// step fails at once, and the runbook escalates.
    pub permanent: bool,
    /// Whether the failure certainly happened before any effect (the program could not be
    /// started, the connection was refused before anything was sent): only such a failure
    /// lets a non-idempotent step try again.
    pub before_effect: bool,
    /// Whether the attempt may have acted without Keel knowing its result (killed by a
    /// signal, the connection lost after sending): a non-idempotent step is then in doubt.
    pub in_doubt: bool,
}

impl StepError {
    /// A failure that another attempt can fix.
    pub fn retry(message: impl Into<String>, retry_after: Option<Duration>) -> StepError {
        StepError {
            message: message.into(),
            retry_after,
            permanent: false,
            before_effect: false,
            in_doubt: false,
        }
    }

    /// A failure that another attempt cannot fix.
    pub fn permanent(message: impl Into<String>) -> StepError {
        StepError {
            permanent: true,
            ..StepError::retry(message, None)
        }
    }

    /// A failure that certainly happened before any effect: any step may try again.
    pub fn before_effect(message: impl Into<String>) -> StepError {
        StepError {
            before_effect: true,
            ..StepError::retry(message, None)
        }
    }

    /// An attempt that may have acted, its result unknown.
    pub fn in_doubt(message: impl Into<String>) -> StepError {
        StepError {
            in_doubt: true,
            ..StepError::retry(message, None)
        }
    }
}

impl From<String> for StepError {
    fn from(message: String) -> StepError {
        StepError::retry(message, None)
    }
}

/// Why a request could not be completed: refused before anything was sent (no connection),
/// or lost after it may have been received (in doubt).
pub(super) fn send_error(what: &str, e: &reqwest::Error) -> StepError {
    let message = format!("{what}: {e}");
    if e.is_connect() {
        StepError::before_effect(message)
    } else {
        StepError::in_doubt(message)
    }
}

/// The PagerDuty Events v2 body of a generic body: `dedup_key` is its escalation key (or the
/// idempotency key), the severity one of PagerDuty's (`error` when absent or unknown).
pub fn pagerduty_body(
    routing_key: &str,
    source: &str,
    key: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let text = |k: &str| body.get(k).and_then(serde_json::Value::as_str);
    let severity = text("severity")
        .filter(|s| ["critical", "error", "warning", "info"].contains(s))
        .unwrap_or("error");
    let summary = text("reason")
        .map(str::to_string)
        .or_else(|| {
            Some(format!(
                "{} for event {}",
                text("action").unwrap_or("decision"),
                text("event_id").unwrap_or("?")
            ))
        })
        .unwrap_or_default();
    // PagerDuty's summary holds at most 1024 characters.
    let summary: String = summary.chars().take(1024).collect();
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": text("escalation_key").unwrap_or(key),
        "payload": {
            "summary": summary, "source": source, "severity": severity,
            "custom_details": body,
        },
    })
}

/// POSTs `body` (in the step's format) to an `http` step's webhook with `Idempotency-Key:
/// key`; on failure why (with the server's `Retry-After`, and whether the request may have
/// been received).
pub async fn post_http(
    host: &Arc<Host>,
    kind: &StepKind,
    key: &str,
    body: &serde_json::Value,
) -> Result<(), StepError> {
    let StepKind::Http {
        url,
        format,
        routing_key,
    } = kind
    else {
        return Err(StepError::permanent("not an http step"));
    };
    let payload = match (format, routing_key) {
        (HttpFormat::PagerDuty, Some(rk)) => pagerduty_body(
            rk.expose(),
            host.cfg.self_name.as_deref().unwrap_or("keel"),
            key,
            body,
        ),
        (HttpFormat::PagerDuty, None) => {
            return Err(StepError::permanent("pagerduty step without a routing key"))
        }
        (HttpFormat::Generic, _) => body.clone(),
    };
    let r = host
        .http
        .post(url)
        .header("Idempotency-Key", key)
        .json(&payload)
        .send()
        .await
        .map_err(|e| send_error("webhook", &e))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(StepError::retry(
            format!("HTTP {}", r.status()),
            super::backoff::retry_after(r.headers()),
        ))
    }
}

/// Approves a Scheduled Event: only for Azure Scheduled Events, only when every VM the event
/// lists is this host's own (the approval applies to all of them; otherwise NotBefore runs
/// out), never in dry-run. The approval is in the store before the request is sent, and
/// confirmed with the step's outcome ([`Store::finish_step_approving`]).
///
/// [`Store::finish_step_approving`]: super::store::Store::finish_step_approving
pub async fn azure_ack(
    host: &Arc<Host>,
    ev: &Event,
    decision_id: &str,
) -> Result<String, StepError> {
    let Some(se) = &host.cfg.azure_scheduled_events else {
        return Ok("skipped: no Scheduled Events source".into());
    };
    let Some(vid) = ev.maintenance.as_ref().and_then(|m| m.vendor_id.clone()) else {
        return Ok("skipped: not a Scheduled Event".into());
    };
    let me = host.self_name().unwrap_or("");
    let listed: Vec<String> = ev
        .raw
        .as_ref()
        .and_then(|r| r.get("Resources"))
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if me.is_empty() || listed.is_empty() || !listed.iter().all(|r| r.eq_ignore_ascii_case(me)) {
        return Ok(
            "skipped: the event lists VMs other than this one; letting NotBefore run out".into(),
        );
    }
    if host.cfg.dry_run {
        return Ok("skipped: dry run".into());
    }
    // Durable before the request: from now on the event may be approved, and its
    // disappearance is not a proven cancellation (after a crash too).
    host.store
        .approval_before_send(&vid, decision_id, &rfc(Utc::now()))
        .map_err(|e| StepError::before_effect(e.to_string()))?;
    let r = host
        .http
        .post(&se.url)
        .header("Metadata", "true")
        .json(&start_requests([vid.as_str()]))
        .send()
        .await
        .map_err(|e| send_error("StartRequests", &e))?;
    if r.status().is_success() {
        Ok("ok".into())
    } else {
        Err(format!("StartRequests answered HTTP {}", r.status()).into())
    }
}

/// Reads a response body, refusing one larger than the normalizers accept.
pub async fn read_limited(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
    let max = keel_engine::normalize::MAX_PAYLOAD_BYTES;
    if r.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("response body larger than {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("response body larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
