//! Source health: what `/readyz` reports, and the per-source metrics
//! `keel_source_errors_total{source}` and `keel_source_last_success_timestamp_seconds{source}`.
//!
//! A source has one or more channels (the GCP source watches two keys, each with its own
//! request loop). A source is healthy when every channel has succeeded at least once and none
//! has been failing for longer than `unready_after`; the host is ready when every source is.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, Default)]
struct Channel {
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

/// How a recorded outcome changed a channel, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth a log line.
    Same,
    /// The channel started failing (the first failure after a success, or ever).
    StartedFailing,
    /// The channel succeeded after failing.
    Recovered,
}

/// The health of every source.
#[derive(Debug, Default)]
pub struct Health {
    channels: Mutex<BTreeMap<(&'static str, &'static str), Channel>>,
    /// The pauses (scope, reason) as last read from the store: paused is still ready.
    pauses: Mutex<Vec<(String, String)>>,
}

impl Health {
    /// Registers a channel of a source, so that readiness waits for its first success.
    pub fn register(&self, source: &'static str, channel: &'static str) {
        if let Ok(mut m) = self.channels.lock() {
            m.entry((source, channel)).or_default();
        }
    }

    /// Records a success. Returns the change and whether the whole source is now healthy
    /// (no channel failing).
    pub fn ok(&self, source: &'static str, channel: &'static str) -> (Change, bool) {
        let Ok(mut m) = self.channels.lock() else {
            return (Change::Same, false);
        };
        let c = m.entry((source, channel)).or_default();
        let change = if c.failing_since.is_some() {
            Change::Recovered
        } else {
            Change::Same
        };
        c.last_ok = Some(Instant::now());
        c.failing_since = None;
        c.last_error = None;
        let whole = m
            .iter()
            .filter(|((s, _), _)| *s == source)
            .all(|(_, c)| c.failing_since.is_none());
        (change, whole)
    }

    /// Records a failure with its reason (already escaped for display).
    pub fn failed(&self, source: &'static str, channel: &'static str, why: &str) -> Change {
        let Ok(mut m) = self.channels.lock() else {
            return Change::Same;
        };
        let c = m.entry((source, channel)).or_default();
        c.last_error = Some(why.to_string());
        if c.failing_since.is_none() {
            c.failing_since = Some(Instant::now());
            Change::StartedFailing
        } else {
            Change::Same
        }
    }

    /// Sets the pauses (scope, reason) the report shows.
    pub fn set_pauses(&self, pauses: Vec<(String, String)>) {
        if let Ok(mut p) = self.pauses.lock() {
            *p = pauses;
        }
    }

    /// Whether every source is ready, and a JSON report per source, with the pauses
    /// (`paused`, `pauses`: a paused host is still ready).
    pub fn readiness(&self, unready_after: Duration) -> (bool, Value) {
        let pauses: Vec<Value> = self
            .pauses
            .lock()
            .map(|p| {
                p.iter()
                    .map(|(scope, reason)| json!({"scope": scope, "reason": reason}))
                    .collect()
            })
            .unwrap_or_default();
        let (ready, mut report) = self.sources_readiness(unready_after);
        report["paused"] = json!(!pauses.is_empty());
        report["pauses"] = Value::Array(pauses);
        (ready, report)
    }

    fn sources_readiness(&self, unready_after: Duration) -> (bool, Value) {
        let Ok(m) = self.channels.lock() else {
            return (
                false,
                json!({"ready": false, "error": "health lock poisoned"}),
            );
        };
        let mut ready = true;
        let mut sources = serde_json::Map::new();
        for ((source, channel), c) in m.iter() {
            let failing_for = c.failing_since.map(|t| t.elapsed());
            let ok = c.last_ok.is_some() && failing_for.is_none_or(|d| d <= unready_after);
            ready &= ok;
            let entry = sources
                .entry(source.to_string())
                .or_insert_with(|| json!({"ready": true, "channels": {}}));
            if !ok {
                entry["ready"] = json!(false);
            }
            entry["channels"][*channel] = json!({
                "ready": ok,
                "succeeded": c.last_ok.is_some(),
                "seconds_since_success": c.last_ok.map(|t| t.elapsed().as_secs_f64()),
                "failing_for_seconds": failing_for.map(|d| d.as_secs_f64()),
                "last_error": c.last_error,
            });
        }
        (ready, json!({"ready": ready, "sources": sources}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_every_channel_succeeded_and_red_after_failing_too_long() {
        let h = Health::default();
        h.register("gcp.metadata", "maintenance-event");
        h.register("gcp.metadata", "preempted");
        assert!(!h.readiness(Duration::from_secs(60)).0);
        h.ok("gcp.metadata", "maintenance-event");
        assert!(!h.readiness(Duration::from_secs(60)).0);
        assert_eq!(h.ok("gcp.metadata", "preempted"), (Change::Same, true));
        assert!(h.readiness(Duration::from_secs(60)).0);
        assert_eq!(
            h.failed("gcp.metadata", "preempted", "HTTP 500"),
            Change::StartedFailing
        );
        assert_eq!(
            h.failed("gcp.metadata", "preempted", "HTTP 500"),
            Change::Same
        );
        // Failing, but not for long yet.
        assert!(h.readiness(Duration::from_secs(60)).0);
        let (ready, report) = h.readiness(Duration::ZERO);
        assert!(!ready);
        assert_eq!(report["sources"]["gcp.metadata"]["ready"], false);
        assert_eq!(
            report["sources"]["gcp.metadata"]["channels"]["preempted"]["last_error"],
            "HTTP 500"
        );
        // The other channel's success does not make the source whole.
        assert_eq!(
            h.ok("gcp.metadata", "maintenance-event"),
            (Change::Same, false)
        );
        assert_eq!(h.ok("gcp.metadata", "preempted"), (Change::Recovered, true));
        assert!(h.readiness(Duration::ZERO).0);
    }
}
