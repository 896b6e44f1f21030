//! The legacy Azure in-VM maintenance endpoint (2015 preview,
//! `docs/protocols.md#azure-legacy-maintenance-endpoint`).
//!
//! `GET {url}/metadata/v1/maintenance` answers `{}` while nothing is coming, and
//! `{"EventID", "EventCreationTime"}` when a reboot begins within about five minutes. Its
//! sibling `GET {url}/metadata/v1/InstanceInfo` (`{"ID": "_vm", "UD": "0", "FD": "0"}`) is read
//! first, until it has been read once, so that the normalizer's state (persisted with the
//! host's other normalizer state) names the VM and its domains in every later event; a 404
//! there means the endpoint has no InstanceInfo and it is not asked again. Both requests carry
//! `Metadata: true` (the 2015 service did not need it; today's IMDS does). A failed round (a
//! timeout, an error status, a body the normalizer rejects) is counted and backs off,
//! honouring `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::{mpsc, watch};

use super::poll::{self, Halt, Poll};
use super::{deliver, read_limited, Failure};
use crate::config::AzureMaintenanceV1Source;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::{Host, Inbox};

/// The source's name (its metrics label, and its normalizer).
pub const SOURCE: &str = "azure.maintenance_v1";

/// GETs `{url}/metadata/v1/{path}`: its body, or `None` for 404.
async fn get(
    host: &Host,
    cfg: &AzureMaintenanceV1Source,
    path: &str,
) -> Result<Option<Vec<u8>>, Failure> {
    let r = host
        .http
        .get(format!("{}/metadata/v1/{path}", cfg.url))
        .header("Metadata", "true")
        .timeout(cfg.timeout)
        .send()
        .await
        .map_err(|e| (format!("{path}: {e}"), None))?;
    match r.status() {
        s if s.is_success() => read_limited(r)
            .await
            .map(Some)
            .map_err(|e| (format!("{path}: {e}"), None)),
        StatusCode::NOT_FOUND => Ok(None),
        s => {
            let hint = match s.as_u16() {
                400 => " (is the Metadata header stripped by a proxy?)",
                429 => " (throttled: IMDS allows about 5 requests per second per VM)",
                _ => "",
            };
            Err((format!("{path}: HTTP {s}{hint}"), retry_after(r.headers())))
        }
    }
}

struct Poller {
    host: Arc<Host>,
    cfg: AzureMaintenanceV1Source,
    tx: mpsc::Sender<Inbox>,
    /// InstanceInfo has not been read yet (and is wanted).
    want_info: bool,
}

impl Poll for Poller {
    /// One round: InstanceInfo while it is wanted (until a round reads it), then the
    /// maintenance document.
    async fn round(&mut self) -> Result<Duration, Halt> {
        let (host, cfg) = (&self.host, &self.cfg);
        let mut want_info = self.want_info;
        if want_info {
            if let Some(body) = get(host, cfg, "InstanceInfo").await? {
                deliver(&self.tx, SOURCE, body)
                    .await
                    .map_err(|d| Halt::from(d).within("InstanceInfo"))?;
            }
            want_info = false;
        }
        match get(host, cfg, "maintenance").await? {
            Some(body) => deliver(&self.tx, SOURCE, body)
                .await
                .map_err(|d| Halt::from(d).within("maintenance"))?,
            None => {
                return Err(Halt::Failed((
                    "maintenance: HTTP 404 (this IMDS has no legacy maintenance endpoint)".into(),
                    None,
                )))
            }
        }
        self.want_info = want_info;
        Ok(cfg.interval)
    }
}

/// Polls the endpoint every `interval` until the host stops.
pub async fn poll(
    host: Arc<Host>,
    cfg: AzureMaintenanceV1Source,
    tx: mpsc::Sender<Inbox>,
    stop: watch::Receiver<bool>,
) {
    let backoff = Backoff::new(cfg.interval, cfg.max_backoff.max(cfg.interval));
    let poller = Poller {
        host: host.clone(),
        want_info: cfg.instance_info,
        cfg,
        tx,
    };
    poll::run(&host, SOURCE, "poll", backoff, poller, stop).await;
}
