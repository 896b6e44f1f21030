//! The Azure Scheduled Events source: IMDS polled about once a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{deliver, pause, read_limited, Deliver, Failure};
use crate::config::SeSource;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::{Host, Inbox};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The Azure Scheduled Events source's name (its metrics label, and its normalizer).
pub const SE: &str = "azure.scheduled_events";

/// Polls IMDS Scheduled Events (with `Metadata: true`) about once a second. The first call may
/// take up to two minutes (the service starts on demand), so it has a longer timeout. A 429,
/// a failure or a document the normalizer rejects backs off exponentially (honouring
/// Retry-After), is counted, and never stops the host.
pub async fn poll_scheduled_events(
    host: Arc<Host>,
    se: SeSource,
    tx: mpsc::Sender<Inbox>,
    mut stop: watch::Receiver<bool>,
) {
    let mut first = true;
    let mut backoff = Backoff::new(se.interval, MAX_BACKOFF.max(se.interval));
    loop {
        let timeout = if first { se.first_timeout } else { se.timeout };
        let res = host
            .http
            .get(&se.url)
            .header("Metadata", "true")
            .timeout(timeout)
            .send()
            .await;
        let failure: Option<Failure> = match res {
            Ok(r) if r.status().is_success() => match read_limited(r).await {
                Ok(b) => match deliver(&tx, SE, b).await {
                    Ok(()) => None,
                    Err(Deliver::Rejected(e)) => Some((e, None)),
                    Err(Deliver::Closed) => return,
                },
                Err(e) => Some((e, None)),
            },
            Ok(r) => Some((format!("HTTP {}", r.status()), retry_after(r.headers()))),
            Err(e) => Some((e.to_string(), None)),
        };
        let wait = match failure {
            None => {
                first = false;
                backoff.reset();
                host.source_ok(SE, "poll");
                se.interval
            }
            Some((why, ra)) => {
                host.source_failed(SE, "poll", &why);
                backoff.next(ra)
            }
        };
        if !pause(wait, &mut stop).await {
            return;
        }
    }
}
