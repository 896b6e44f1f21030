//! Sources: the pollers and listeners that hand raw payloads to the run loop, and the host's
//! own HTTP endpoints (`/metrics`, `/healthz`, `/readyz`, and `POST /ingest` when configured).
//!
//! One file per source: Azure Scheduled Events here, [`azure_maintenance_v1`],
//! [`azure_resource_health`], [`aws_imds`], [`gcp_metadata`], [`ingest`], [`files`]. Every source backs off on failure (exponential, with jitter, honouring
//! `Retry-After`), counts its failures in `keel_source_errors_total{source}`, reports its
//! health for `/readyz`, and never stops the other sources or the process.

pub mod aws_imds;
pub mod azure_maintenance_v1;
pub mod azure_resource_health;
pub mod files;
pub mod gcp_metadata;
pub mod ingest;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::backoff::{retry_after, Backoff};
use super::{Host, Inbox, Payload};
use crate::config::SeSource;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The Azure Scheduled Events source's name (its metrics label, and its normalizer).
pub const SE: &str = "azure.scheduled_events";

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

/// Reads a response body, refusing one larger than the normalizers accept.
pub async fn read_limited(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
    let max = keel_engine::normalize::MAX_PAYLOAD_BYTES;
    if r.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("response body larger than {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("response body larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Sleeps for `d`; false when the host is stopping.
pub async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        r = stop.changed() => r.is_ok() && !*stop.borrow(),
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

/// `/metrics` (Prometheus), `/healthz` (the process answers), `/readyz` (every source has
/// succeeded, and none has been failing for longer than `unready_after`; a JSON report per
/// source), and `POST /ingest` when the ingest source is configured.
///
/// At most `limits.connections` connections are served at once (one beyond is closed at
/// once), and a client that does not send a request's headers within `limits.header_timeout`
/// (slowloris), or leaves its connection idle that long, is disconnected.
pub async fn serve_http(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    inbox: Option<mpsc::Sender<Inbox>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut app = Router::new()
        .route(
            "/metrics",
            get(|State(a): State<App>| async move { a.host.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(a): State<App>| async move {
                let (ready, report) = a.host.health.readiness(a.host.cfg.unready_after);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, Json(report))
            }),
        );
    let mut slots = 1;
    if let (Some(cfg), Some(_)) = (&host.cfg.ingest, &inbox) {
        slots = cfg.concurrent_requests;
        app = app.route(
            "/ingest",
            post(ingest::post).layer(axum::extract::DefaultBodyLimit::max(cfg.max_body_bytes)),
        );
    }
    let limits = host.cfg.limits;
    let app = app.with_state(App {
        host,
        inbox,
        ingest_slots: Arc::new(Semaphore::new(slots)),
    });
    let connections = Arc::new(Semaphore::new(limits.connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                // Out of file descriptors, or a connection reset before it was accepted:
                // try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        };
        // Over the limit: close it at once rather than let it wait unanswered.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = async { while stop.changed().await.is_ok() && !*stop.borrow() {} } => {}
            }
            // Stopping: finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}
