//! Sources: the Azure Scheduled Events poller, and the host's own HTTP endpoints.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::{Host, Payload};
use crate::config::SeSource;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Polls IMDS Scheduled Events (with `Metadata: true`) about once a second. The first call may
/// take up to two minutes (the service starts on demand), so it has a longer timeout. A 429
/// or a failure backs off exponentially (honouring Retry-After), is counted, and never stops
/// the host.
pub async fn poll_scheduled_events(
    host: Arc<Host>,
    se: SeSource,
    tx: mpsc::Sender<Payload>,
    mut stop: watch::Receiver<bool>,
) {
    const NAME: &str = "azure.scheduled_events";
    let mut first = true;
    let mut backoff = se.interval;
    loop {
        let timeout = if first { se.first_timeout } else { se.timeout };
        let res = host
            .http
            .get(&se.url)
            .header("Metadata", "true")
            .timeout(timeout)
            .send()
            .await;
        let wait = match res {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) if b.len() <= keel_engine::normalize::MAX_PAYLOAD_BYTES => {
                    first = false;
                    backoff = se.interval;
                    let p = Payload {
                        normalizer: NAME,
                        bytes: b.to_vec(),
                        observed_at: Utc::now(),
                    };
                    if tx.send(p).await.is_err() {
                        return;
                    }
                    se.interval
                }
                _ => {
                    host.metrics
                        .add("keel_source_errors_total", &[("source", NAME)], 1.0);
                    next(&mut backoff)
                }
            },
            Ok(r) => {
                host.metrics
                    .add("keel_source_errors_total", &[("source", NAME)], 1.0);
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(300)));
                let b = next(&mut backoff);
                retry_after.map_or(b, |r| r.max(b))
            }
            Err(_) => {
                host.metrics
                    .add("keel_source_errors_total", &[("source", NAME)], 1.0);
                next(&mut backoff)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => if *stop.borrow() { return; }
        }
    }
}

fn next(backoff: &mut Duration) -> Duration {
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    // Jitter: up to a quarter of the delay, from the clock's sub-second noise.
    let jitter = Duration::from_millis(
        u64::from(Utc::now().timestamp_subsec_millis()) % (backoff.as_millis() as u64 / 4 + 1),
    );
    *backoff + jitter
}

/// `/metrics` (Prometheus), `/healthz` (the process answers), `/readyz` (every source has
/// succeeded within `unready_after`).
pub async fn serve_http(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Host>>| async move { h.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Host>>| async move {
                let last = h.metrics.get(
                    "keel_source_last_success_timestamp_seconds",
                    &[("source", "azure.scheduled_events")],
                );
                let now = Utc::now().timestamp() as f64;
                if h.cfg.azure_scheduled_events.is_none()
                    || now - last <= h.cfg.unready_after.as_secs_f64()
                {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a source has failed for too long\n",
                    )
                }
            }),
        )
        .with_state(host);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while stop.changed().await.is_ok() {
                if *stop.borrow() {
                    break;
                }
            }
        })
        .await;
}
