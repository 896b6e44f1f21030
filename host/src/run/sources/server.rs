//! The host's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, and `POST /ingest` (the
//! [`ingest`](super::ingest) source) when configured.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, watch, Semaphore};

use super::{ingest, App};
use crate::run::{Host, Inbox};

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
            get(|State(a): State<App>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::run::metrics::CONTENT_TYPE,
                    )],
                    a.host.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(a): State<App>| async move {
                let (mut ready, mut report) = a.host.health.readiness(a.host.cfg.unready_after);
                // A fleet's database unreachable: red (no new lease, decision or step can be
                // recorded) until it answers again.
                if a.host.store.is_fleet() {
                    let up = a.host.store.reachable();
                    ready &= up;
                    report["ready"] = serde_json::json!(ready);
                    report["state"] = serde_json::json!({"backend": "postgres", "reachable": up});
                }
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
