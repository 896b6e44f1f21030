//! The Azure Scheduled Events source: IMDS polled about once a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::poll::{self, Halt, Poll};
use super::{deliver, read_limited};
use crate::config::SeSource;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::{Host, Inbox};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The Azure Scheduled Events source's name (its metrics label, and its normalizer).
pub const SE: &str = "azure.scheduled_events";

struct Poller {
    host: Arc<Host>,
    se: SeSource,
    tx: mpsc::Sender<Inbox>,
    /// No round has succeeded yet: the service may still be starting.
    first: bool,
}

impl Poll for Poller {
    async fn round(&mut self) -> Result<Duration, Halt> {
        let se = &self.se;
        let timeout = if self.first {
            se.first_timeout
        } else {
            se.timeout
        };
        let r = self
            .host
            .http
            .get(&se.url)
            .header("Metadata", "true")
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| (e.to_string(), None))?;
        if !r.status().is_success() {
            return Err(Halt::Failed((
                format!("HTTP {}", r.status()),
                retry_after(r.headers()),
            )));
        }
        let body = read_limited(r).await.map_err(|e| (e, None))?;
        deliver(&self.tx, SE, body).await?;
        self.first = false;
        Ok(se.interval)
    }
}

/// Polls IMDS Scheduled Events (with `Metadata: true`) about once a second. The first call may
/// take up to two minutes (the service starts on demand), so it has a longer timeout. A 429,
/// a failure or a document the normalizer rejects backs off exponentially (honouring
/// Retry-After), is counted, and never stops the host.
pub async fn poll_scheduled_events(
    host: Arc<Host>,
    se: SeSource,
    tx: mpsc::Sender<Inbox>,
    stop: watch::Receiver<bool>,
) {
    let backoff = Backoff::new(se.interval, MAX_BACKOFF.max(se.interval));
    let poller = Poller {
        host: host.clone(),
        se,
        tx,
        first: true,
    };
    poll::run(&host, SE, "poll", backoff, poller, stop).await;
}
