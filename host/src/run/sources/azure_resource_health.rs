//! Azure Resource Health for this VM (DOMAIN.md 2.1 and section 8 erratum 3).
//!
//! Every `interval` (a minute by default: Resource Health itself only learns of a change
//! within minutes), `GET {arm_endpoint}{resource_id}/providers/Microsoft.ResourceHealth/
//! availabilityStatuses/current?api-version=<pinned>` with `Authorization: Bearer <token>`,
//! the token coming from the VM's managed identity ([`crate::run::identity`]). A 401 forgets
//! the token and asks once more with a fresh one. The status is handed to the
//! `azure.resource_health` normalizer; a repeated status is the same event and is decided
//! once. A failed round (no token, a timeout, an error status, a body the normalizer rejects)
//! is counted and backs off, honouring `Retry-After`. ARM's error bodies are untrusted: only
//! their code and message, escaped and truncated, reach the log.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use tokio::sync::{mpsc, watch};

use super::{deliver, pause, read_limited, Deliver};
use crate::config::ResourceHealthSource;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::identity::TokenClient;
use crate::run::{Host, Inbox, Payload};

/// The source's name (its metrics label, and its normalizer).
pub const SOURCE: &str = "azure.resource_health";

/// Why a round failed: the reason, and the server's `Retry-After`.
type Failure = (String, Option<Duration>);

/// The URL polled.
pub fn status_url(cfg: &ResourceHealthSource) -> String {
    format!(
        "{}{}/providers/Microsoft.ResourceHealth/availabilityStatuses/current?api-version={}",
        cfg.arm_endpoint, cfg.resource_id, cfg.api_version
    )
}

/// One GET of the current status, renewing the token once on 401.
async fn fetch(host: &Host, cfg: &ResourceHealthSource, url: &str) -> Result<Vec<u8>, Failure> {
    let mut renewed = false;
    loop {
        let token = host
            .identity
            .token()
            .await
            .map_err(|e| (e.to_string(), e.retry_after()))?;
        let auth = TokenClient::bearer(&token).map_err(|e| (e.to_string(), None))?;
        let r = host
            .http
            .get(url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .timeout(cfg.timeout)
            .send()
            .await
            .map_err(|e| (format!("availabilityStatuses: {e}"), None))?;
        let status = r.status();
        if status.is_success() {
            return read_limited(r)
                .await
                .map_err(|e| (format!("availabilityStatuses: {e}"), None));
        }
        if status == StatusCode::UNAUTHORIZED && !renewed {
            host.identity.invalidate().await;
            renewed = true;
            continue;
        }
        let ra = retry_after(r.headers());
        let body = read_limited(r).await.unwrap_or_default();
        let hint = match status.as_u16() {
            401 => " (a fresh token was refused too)",
            403 => " (the identity needs read access to the VM, e.g. the Reader role)",
            404 => " (no such VM: check the resource id)",
            _ => "",
        };
        return Err((
            format!(
                "availabilityStatuses: HTTP {status}{hint}{}",
                crate::run::arm::error_detail(&body)
            ),
            ra,
        ));
    }
}

/// Polls Resource Health every `interval` until the host stops.
pub async fn poll(
    host: Arc<Host>,
    cfg: ResourceHealthSource,
    tx: mpsc::Sender<Inbox>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(
        Duration::from_secs(1).min(cfg.interval),
        cfg.max_backoff.max(cfg.interval),
    );
    let url = status_url(&cfg);
    loop {
        let res = tokio::select! {
            r = fetch(&host, &cfg, &url) => r,
            _ = stop.changed() => return,
        };
        let outcome: Result<(), Failure> = match res {
            Ok(body) => {
                let p = Payload {
                    normalizer: SOURCE,
                    bytes: body,
                    observed_at: Utc::now(),
                };
                match deliver(&tx, p).await {
                    Ok(()) => Ok(()),
                    Err(Deliver::Rejected(e)) => Err((e, None)),
                    Err(Deliver::Closed) => return,
                }
            }
            Err(f) => Err(f),
        };
        let wait = match outcome {
            Ok(()) => {
                backoff.reset();
                host.source_ok(SOURCE, "poll");
                cfg.interval
            }
            Err((why, ra)) => {
                host.source_failed(SOURCE, "poll", &why);
                backoff.next(ra)
            }
        };
        if !pause(wait, &mut stop).await {
            return;
        }
    }
}
