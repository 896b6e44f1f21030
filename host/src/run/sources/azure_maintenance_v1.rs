//! The legacy Azure in-VM maintenance endpoint (2015 preview, DOMAIN.md 1.6 and section 8
//! erratum 16).
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

use reqwest::StatusCode;
use tokio::sync::{mpsc, watch};

use super::{deliver, pause, read_limited, Deliver};
use crate::config::AzureMaintenanceV1Source;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::{Host, Inbox};

/// The source's name (its metrics label, and its normalizer).
pub const SOURCE: &str = "azure.maintenance_v1";

/// Why a round failed: the reason, and the server's `Retry-After`.
use super::Failure;

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

async fn hand(tx: &mpsc::Sender<Inbox>, path: &str, body: Vec<u8>) -> Result<(), Option<Failure>> {
    match deliver(tx, SOURCE, body).await {
        Ok(()) => Ok(()),
        Err(Deliver::Rejected(e)) => Err(Some((format!("{path}: {e}"), None))),
        Err(Deliver::Closed) => Err(None),
    }
}

/// One round: InstanceInfo while it is wanted, then the maintenance document. Returns whether
/// InstanceInfo is still wanted.
async fn round(
    host: &Host,
    cfg: &AzureMaintenanceV1Source,
    tx: &mpsc::Sender<Inbox>,
    want_info: bool,
) -> Result<bool, Option<Failure>> {
    let mut want_info = want_info;
    if want_info {
        if let Some(body) = get(host, cfg, "InstanceInfo").await.map_err(Some)? {
            hand(tx, "InstanceInfo", body).await?;
        }
        want_info = false;
    }
    match get(host, cfg, "maintenance").await.map_err(Some)? {
        Some(body) => hand(tx, "maintenance", body).await?,
        None => {
            return Err(Some((
                "maintenance: HTTP 404 (this IMDS has no legacy maintenance endpoint)".into(),
                None,
            )))
        }
    }
    Ok(want_info)
}

/// Polls the endpoint every `interval` until the host stops.
pub async fn poll(
    host: Arc<Host>,
    cfg: AzureMaintenanceV1Source,
    tx: mpsc::Sender<Inbox>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.interval, cfg.max_backoff.max(cfg.interval));
    let mut want_info = cfg.instance_info;
    loop {
        let res = tokio::select! {
            r = round(&host, &cfg, &tx, want_info) => r,
            _ = stop.changed() => return,
        };
        let wait = match res {
            Ok(still) => {
                want_info = still;
                backoff.reset();
                host.source_ok(SOURCE, "poll");
                cfg.interval
            }
            Err(Some((why, ra))) => {
                host.source_failed(SOURCE, "poll", &why);
                backoff.next(ra)
            }
            Err(None) => return,
        };
        if !pause(wait, &mut stop).await {
            return;
        }
    }
}
