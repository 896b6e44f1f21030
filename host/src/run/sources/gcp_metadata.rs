//! The GCP Compute Engine metadata server (DOMAIN.md section 5 and section 8 facts 22-24).
//!
//! Each key (`instance/maintenance-event`, `instance/preempted`) has its own loop with a
//! hanging request always open: the first read is plain and returns the value with its
//! `ETag`; every later one is `?wait_for_change=true&last_etag=<ETag>&timeout_sec=<n>`, which
//! the server holds until the value changes (or `timeout_sec` passes). Every request carries
//! `Metadata-Flavor: Google`. The value changes 60 seconds before maintenance starts, so the
//! request must be open when it does: after a failure the loop backs off from one second
//! (Google's advice for a 503 during maintenance), honouring `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{deliver, pause, read_limited, Deliver};
use crate::config::GcpMetadataSource;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::{Host, Inbox};

/// The source's name (its metrics label, and its normalizer).
pub const SOURCE: &str = "gcp.metadata";

/// The keys watched, under `instance/`; each is a channel of the source's health.
pub const KEYS: [&str; 2] = ["maintenance-event", "preempted"];

/// The longest `ETag` kept (Google's are 16 hex digits).
const MAX_ETAG: usize = 256;

/// An `ETag` fit to send back in a query string (the query is URL-encoded anyway).
fn etag_of(h: &reqwest::header::HeaderMap) -> Option<String> {
    let v = h.get(reqwest::header::ETAG)?.to_str().ok()?.trim();
    (!v.is_empty() && v.len() <= MAX_ETAG && v.chars().all(|c| c.is_ascii_graphic()))
        .then(|| v.to_string())
}

/// Watches one key until the host stops.
pub async fn watch(
    host: Arc<Host>,
    cfg: GcpMetadataSource,
    key: &'static str,
    tx: mpsc::Sender<Inbox>,
    mut stop: watch::Receiver<bool>,
) {
    let url = format!("{}/instance/{key}", cfg.url);
    let wait_s = cfg.wait_timeout.as_secs().max(1).to_string();
    let mut etag: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_secs(1), cfg.max_backoff);
    loop {
        let started = Instant::now();
        let mut req = host.http.get(&url).header("Metadata-Flavor", "Google");
        let hanging = etag.is_some();
        req = match &etag {
            Some(e) => req
                .query(&[
                    ("wait_for_change", "true"),
                    ("last_etag", e.as_str()),
                    ("timeout_sec", wait_s.as_str()),
                ])
                .timeout(cfg.wait_timeout.saturating_add(cfg.timeout)),
            None => req.timeout(cfg.timeout),
        };
        let res = tokio::select! {
            r = req.send() => r,
            _ = stop.changed() => return,
        };
        let outcome: Result<Option<String>, super::Failure> = match res {
            Ok(r) if r.status() == StatusCode::OK => {
                let new_etag = etag_of(r.headers());
                match read_limited(r).await {
                    Ok(body) => match deliver(&tx, SOURCE, body).await {
                        Ok(()) => Ok(new_etag),
                        Err(Deliver::Rejected(e)) => Err((format!("{key}: {e}"), None)),
                        Err(Deliver::Closed) => return,
                    },
                    Err(e) => Err((format!("{key}: {e}"), None)),
                }
            }
            Ok(r) => {
                let s = r.status();
                let hint = match s.as_u16() {
                    403 => " (is the Metadata-Flavor header stripped by a proxy?)",
                    404 => " (the metadata server has no such key)",
                    503 => " (the metadata server is unavailable, as during maintenance)",
                    _ => "",
                };
                Err((format!("{key}: HTTP {s}{hint}"), retry_after(r.headers())))
            }
            Err(e) => Err((format!("{key}: {e}"), None)),
        };
        let wait = match outcome {
            Ok(new_etag) => {
                backoff.reset();
                host.source_ok(SOURCE, key);
                // Without an ETag the server cannot hang: read again after `interval`. An
                // unchanged value returned well before `timeout_sec` means it did not hang
                // either; do not spin.
                let early = started.elapsed() < cfg.wait_timeout / 2;
                let pace = match (&new_etag, hanging) {
                    (None, _) => cfg.interval,
                    (Some(n), true) if early && etag.as_deref() == Some(n.as_str()) => cfg.interval,
                    _ => Duration::ZERO,
                };
                etag = new_etag;
                pace
            }
            Err((why, ra)) => {
                host.source_failed(SOURCE, key, &why);
                backoff.next(ra)
            }
        };
        if !wait.is_zero() && !pause(wait, &mut stop).await {
            return;
        }
    }
}
