//! Sources: the pollers and listeners that hand raw payloads to the run loop, and the host's
//! own HTTP endpoints ([`server`]: `/metrics`, `/healthz`, `/readyz`, and `POST /ingest` when
//! configured), with what they share (handing a payload over, bounded reads).
//!
//! One file per source: [`azure_scheduled_events`], [`azure_maintenance_v1`],
//! [`azure_resource_health`], [`aws_imds`], [`gcp_metadata`], [`ingest`], [`files`]; the
//! polled ones share one loop ([`poll`]). Every source backs off on failure (exponential, with
//! jitter, honouring `Retry-After`), counts its failures in `keel_source_errors_total{source}`,
//! reports its health for `/readyz`, and never stops the other sources or the process.

pub mod aws_imds;
pub mod azure_maintenance_v1;
pub mod azure_resource_health;
pub mod azure_scheduled_events;
pub mod files;
pub mod gcp_metadata;
pub mod ingest;
pub mod poll;
pub mod server;

pub use super::http::read_limited;
pub use azure_scheduled_events::{poll_scheduled_events, SE};
pub use server::serve_http;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Host, Inbox, Payload};

/// Why handing a payload to the run loop did not succeed.
#[derive(Debug)]
pub enum Deliver {
    /// The normalizer rejected it (its message, escaped).
    Rejected(String),
    /// The run loop is gone: the host is stopping.
    Closed,
}

/// Why a source's round failed: the reason (escaped before it is logged), and the server's
/// `Retry-After`.
pub type Failure = (String, Option<Duration>);

/// Hands a payload to the run loop and waits until it was normalized and decided.
pub async fn deliver(
    tx: &mpsc::Sender<Inbox>,
    normalizer: &'static str,
    bytes: Vec<u8>,
) -> Result<(), Deliver> {
    let p = Payload {
        normalizer,
        bytes,
        observed_at: Utc::now(),
    };
    let (ack, answer) = oneshot::channel();
    tx.send(Inbox::Poll(p, ack))
        .await
        .map_err(|_| Deliver::Closed)?;
    match answer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Deliver::Rejected(e)),
        Err(_) => Err(Deliver::Closed),
    }
}

/// The state of the host's HTTP endpoints.
#[derive(Clone)]
pub struct App {
    /// The host.
    pub host: Arc<Host>,
    /// Where ingest bodies go (when the ingest source is configured): a queue of
    /// `sources.ingest.queue` bodies.
    pub inbox: Option<mpsc::Sender<Inbox>>,
    /// One permit per ingest request handled at once (`sources.ingest.concurrent_requests`).
    pub ingest_slots: Arc<Semaphore>,
}
