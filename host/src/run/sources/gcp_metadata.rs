//! The GCP Compute Engine metadata server (`docs/protocols.md#gcp-metadata`).
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

use super::poll::{self, Halt, Poll};
use super::{deliver, read_limited, Failure};
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

struct Poller {
    host: Arc<Host>,
    cfg: GcpMetadataSource,
    key: &'static str,
    tx: mpsc::Sender<Inbox>,
    url: String,
    /// `timeout_sec` of a hanging request.
    wait_s: String,
    /// The `ETag` of the value last read: the next request hangs until it changes.
    etag: Option<String>,
    /// The value last read.
    last: Option<Vec<u8>>,
}

impl Poller {
    /// One request: the value and its new `ETag`.
    async fn fetch(&self) -> Result<(Vec<u8>, Option<String>), Failure> {
        let (cfg, key) = (&self.cfg, self.key);
        let req = self
            .host
            .http
            .get(&self.url)
            .header("Metadata-Flavor", "Google");
        let req = match &self.etag {
            Some(e) => req
                .query(&[
                    ("wait_for_change", "true"),
                    ("last_etag", e.as_str()),
                    ("timeout_sec", self.wait_s.as_str()),
                ])
                .timeout(cfg.wait_timeout.saturating_add(cfg.timeout)),
            None => req.timeout(cfg.timeout),
        };
        let r = req
            .send()
            .await
            .map_err(|e| (format!("{key}: {e}"), None))?;
        let s = r.status();
        if s != StatusCode::OK {
            let hint = match s.as_u16() {
                403 => " (is the Metadata-Flavor header stripped by a proxy?)",
                404 => " (the metadata server has no such key)",
                503 => " (the metadata server is unavailable, as during maintenance)",
                _ => "",
            };
            return Err((format!("{key}: HTTP {s}{hint}"), retry_after(r.headers())));
        }
        let new_etag = etag_of(r.headers());
        let body = read_limited(r)
            .await
            .map_err(|e| (format!("{key}: {e}"), None))?;
        Ok((body, new_etag))
    }
}

impl Poll for Poller {
    /// One request, its value handed to the normalizer. The next starts at once when this
    /// one hung until the value changed.
    async fn round(&mut self) -> Result<Duration, Halt> {
        let started = Instant::now();
        let hanging = self.etag.is_some();
        let (body, new_etag) = self.fetch().await?;
        // Without an ETag the server cannot hang: read again after `interval`. An unchanged
        // value (or ETag) returned well before `timeout_sec` means it did not hang either (a
        // proxy or an emulator whose ETags change at every answer): do not spin.
        let cfg = &self.cfg;
        let early = started.elapsed() < cfg.wait_timeout / 2;
        let unchanged = self.etag == new_etag || self.last.as_deref() == Some(body.as_slice());
        let pace = match (&new_etag, hanging) {
            (None, _) => cfg.interval,
            (Some(_), true) if early && unchanged => cfg.interval,
            _ => Duration::ZERO,
        };
        self.last = Some(body.clone());
        deliver(&self.tx, SOURCE, body)
            .await
            .map_err(|d| Halt::from(d).within(self.key))?;
        self.etag = new_etag;
        Ok(pace)
    }
}

/// Watches one key until the host stops: after a failure, backs off from one second.
pub async fn watch(
    host: Arc<Host>,
    cfg: GcpMetadataSource,
    key: &'static str,
    tx: mpsc::Sender<Inbox>,
    stop: watch::Receiver<bool>,
) {
    let backoff = Backoff::new(Duration::from_secs(1), cfg.max_backoff);
    let poller = Poller {
        host: host.clone(),
        url: format!("{}/instance/{key}", cfg.url),
        wait_s: cfg.wait_timeout.as_secs().max(1).to_string(),
        cfg,
        key,
        tx,
        etag: None,
        last: None,
    };
    poll::run(&host, SOURCE, key, backoff, poller, stop).await;
}
