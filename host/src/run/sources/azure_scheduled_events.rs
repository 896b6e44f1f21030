//! The Azure Scheduled Events source: IMDS polled about once a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::azure_resource_health::instance_compute;
use super::poll::{self, Halt, Poll};
use super::{deliver, read_limited, Failure};
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

/// The longest VM name accepted from IMDS (Azure's are at most 64 characters; a scale set's
/// instance name adds `_` and its index).
const MAX_VM_NAME: usize = 128;

/// This VM's name, from IMDS instance metadata (`compute.name`) at the origin of the
/// Scheduled Events URL: the name Scheduled Events list it under.
async fn vm_name(host: &Host, se: &SeSource, timeout: Duration) -> Result<String, Failure> {
    let fail = |why: String| format!("this VM's name (set `self:` to give it): {why}");
    let url = reqwest::Url::parse(&se.url).map_err(|e| (fail(e.to_string()), None))?;
    let origin = url.origin().ascii_serialization();
    let body = instance_compute(host, &origin, timeout)
        .await
        .map_err(|(why, after)| (fail(why), after))?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| (fail("the compute document is not JSON".into()), None))?;
    match doc.get("name").and_then(|n| n.as_str()).map(str::trim) {
        Some(n) if !n.is_empty() && n.len() <= MAX_VM_NAME && !n.contains(char::is_control) => {
            Ok(n.to_string())
        }
        Some(n) => Err((
            fail(format!(
                "`name` is not a VM name: \"{}\"",
                keel_engine::escape(&n.chars().take(80).collect::<String>())
            )),
            None,
        )),
        None => Err((fail("the compute document has no `name`".into()), None)),
    }
}

impl Poll for Poller {
    async fn round(&mut self) -> Result<Duration, Halt> {
        let se = &self.se;
        let timeout = if self.first {
            se.first_timeout
        } else {
            se.timeout
        };
        // Without this VM's name every VM's event would be taken as this one's: an event for
        // a neighbour in the availability set would drain this VM. Nothing is read until it
        // is known.
        if self.host.self_name().is_none() {
            let name = vm_name(&self.host, se, timeout).await?;
            self.host.learn_self(name);
        }
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
