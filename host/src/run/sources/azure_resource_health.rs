//! Azure Resource Health for this VM (`docs/protocols.md#azure-resource-health`).
//!
//! The VM is the configured one, or else this one, as IMDS's instance metadata names it
//! (`GET {azure_identity.endpoint}/metadata/instance/compute?api-version=2021-02-01`, read
//! once, at the first round). Every `interval` (a minute by default: Resource Health itself only learns of a change
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

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::poll::{self, Halt, Poll};
use super::{deliver, read_limited, Failure};
use crate::config::{resource_id_ok, ResourceHealthSource};
use crate::run::backoff::{retry_after, Backoff};
use crate::run::identity::TokenClient;
use crate::run::{Host, Inbox};

/// The source's name (its metrics label, and its normalizer).
pub const SOURCE: &str = "azure.resource_health";

/// The IMDS api-version of the instance metadata read when no VM is configured.
pub const INSTANCE_API_VERSION: &str = "2021-02-01";

/// The URL polled for the VM `resource_id`.
pub fn status_url(cfg: &ResourceHealthSource, resource_id: &str) -> String {
    format!(
        "{}{resource_id}/providers/Microsoft.ResourceHealth/availabilityStatuses/current?api-version={}",
        cfg.arm_endpoint, cfg.api_version
    )
}

/// This VM's resource id from an IMDS `/metadata/instance/compute` document: `resourceId`,
/// else built from `subscriptionId`, `resourceGroupName` and `name`.
pub fn resource_id_of(compute: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(compute)
        .map_err(|_| "instance metadata: the compute document is not JSON".to_string())?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let id = match field("resourceId") {
        Some(id) => id.to_string(),
        None => match (
            field("subscriptionId"),
            field("resourceGroupName"),
            field("name"),
        ) {
            (Some(sub), Some(rg), Some(vm)) => format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
            ),
            _ => {
                return Err(
                    "instance metadata: no resourceId, nor subscriptionId, resourceGroupName and name"
                        .into(),
                )
            }
        },
    };
    if resource_id_ok(&id) {
        Ok(id)
    } else {
        let t: String = id.chars().take(200).collect();
        Err(format!(
            "instance metadata: {} is not an ARM resource id",
            keel_engine::escape(&t)
        ))
    }
}

/// This VM's resource id, read from IMDS (`Metadata: true`).
async fn discover(host: &Host, cfg: &ResourceHealthSource) -> Result<String, Failure> {
    let body = instance_compute(host, &host.cfg.azure_identity.endpoint, cfg.timeout).await?;
    resource_id_of(&body).map_err(|e| (e, None))
}

/// IMDS's instance metadata compute document (`GET {base}/metadata/instance/compute`,
/// `Metadata: true`): this VM's name, resource group, subscription and resource id.
pub async fn instance_compute(
    host: &Host,
    base: &str,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, Failure> {
    let r = host
        .http
        .get(format!(
            "{}/metadata/instance/compute",
            base.trim_end_matches('/')
        ))
        .query(&[("api-version", INSTANCE_API_VERSION)])
        .header("Metadata", "true")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| (format!("instance metadata: {e}"), None))?;
    if !r.status().is_success() {
        return Err((
            format!("instance metadata: HTTP {}", r.status()),
            retry_after(r.headers()),
        ));
    }
    read_limited(r)
        .await
        .map_err(|e| (format!("instance metadata: {e}"), None))
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

struct Poller {
    host: Arc<Host>,
    cfg: ResourceHealthSource,
    tx: mpsc::Sender<Inbox>,
    /// The status URL: the configured VM's, or this VM's once it was read from IMDS.
    url: Option<String>,
}

impl Poll for Poller {
    /// One round: this VM's id from IMDS (until a round reads it), then its current status.
    async fn round(&mut self) -> Result<Duration, Halt> {
        let (host, cfg) = (&self.host, &self.cfg);
        let url = match &self.url {
            Some(u) => u.clone(),
            None => {
                let u = status_url(cfg, &discover(host, cfg).await?);
                self.url = Some(u.clone());
                u
            }
        };
        let body = fetch(host, cfg, &url).await?;
        deliver(&self.tx, SOURCE, body).await?;
        Ok(cfg.interval)
    }
}

/// Polls Resource Health every `interval` until the host stops.
pub async fn poll(
    host: Arc<Host>,
    cfg: ResourceHealthSource,
    tx: mpsc::Sender<Inbox>,
    stop: watch::Receiver<bool>,
) {
    let backoff = Backoff::new(
        Duration::from_secs(1).min(cfg.interval),
        cfg.max_backoff.max(cfg.interval),
    );
    let poller = Poller {
        host: host.clone(),
        url: cfg.resource_id.as_deref().map(|id| status_url(&cfg, id)),
        cfg,
        tx,
    };
    poll::run(&host, SOURCE, "poll", backoff, poller, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_is_read_from_instance_metadata() {
        let id =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm";
        let doc = format!(r#"{{"resourceId": "{id}", "name": "other"}}"#);
        assert_eq!(resource_id_of(doc.as_bytes()).as_deref(), Ok(id));
        let doc = br#"{"subscriptionId": "s", "resourceGroupName": "rg", "name": "vm", "resourceId": ""}"#;
        assert_eq!(resource_id_of(doc).as_deref(), Ok(id));
        assert!(resource_id_of(br#"{"name": "vm"}"#).is_err());
        assert!(resource_id_of(br#"{"resourceId": "https://evil.example/x"}"#).is_err());
        assert!(resource_id_of(b"[").is_err());
    }
}
