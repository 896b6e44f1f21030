//! A loopback stub of the Azure Scheduled Events endpoint that follows the protocol: the
//! `Metadata: true` header, incarnations, Scheduled → (StartRequests) → Started → gone.
//! Used by `keel demo`. (The integration tests have their own, in `host/tests/common/`, which
//! can also hold a document unchanged: this crate is a binary and exports nothing to them.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the stub has seen and serves.
#[derive(Debug, Default)]
pub struct StubState {
    /// The document's incarnation.
    pub incarnation: i64,
    /// The events served.
    pub events: Vec<Value>,
    /// Every EventId approved with StartRequests, in order.
    pub approvals: Vec<String>,
    /// Requests refused for a missing `Metadata: true` header.
    pub missing_header: usize,
    /// Whether the last event has completed (vanished after Started).
    pub completed: bool,
}

/// A running stub.
pub struct Stub {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<Mutex<StubState>>,
}

impl Stub {
    /// The Scheduled Events URL of the stub.
    pub fn url(&self) -> String {
        format!(
            "http://{}/metadata/scheduledevents?api-version=2020-07-01",
            self.addr
        )
    }

    /// Announces a platform event of `event_type` for `vm`, starting in `notice`.
    pub fn schedule(&self, event_id: &str, event_type: &str, vm: &str, notice: Duration) {
        let now = chrono::Utc::now();
        let not_before = chrono::Duration::from_std(notice)
            .ok()
            .and_then(|n| now.checked_add_signed(n))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        if let Ok(mut s) = self.state.lock() {
            s.incarnation += 1;
            s.completed = false;
            s.events.push(json!({
                "EventId": event_id, "EventStatus": "Scheduled", "EventType": event_type,
                "ResourceType": "VirtualMachine", "Resources": [vm],
                "NotBefore": not_before.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                "Description": "Host server is undergoing maintenance.",
                "EventSource": "Platform", "DurationInSeconds": -1,
            }));
        }
    }
}

/// Starts the stub on a loopback port. After an approval the event turns Started, and
/// `impact` later it is gone (completed).
pub async fn start(impact: Duration) -> std::io::Result<Stub> {
    let state = Arc::new(Mutex::new(StubState {
        incarnation: 1,
        ..StubState::default()
    }));
    let app = Router::new()
        .route("/metadata/scheduledevents", get(get_doc).post(post_start))
        .with_state((state.clone(), impact));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Stub { addr, state })
}

type S = State<(Arc<Mutex<StubState>>, Duration)>;

fn metadata(h: &HeaderMap) -> bool {
    h.get("Metadata").and_then(|v| v.to_str().ok()) == Some("true")
}

async fn get_doc(State((st, _)): S, h: HeaderMap) -> (StatusCode, Json<Value>) {
    let Ok(mut s) = st.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    };
    if !metadata(&h) {
        s.missing_header += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Required metadata header not specified"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"DocumentIncarnation": s.incarnation, "Events": s.events})),
    )
}

async fn post_start(State((st, impact)): S, h: HeaderMap, body: Json<Value>) -> StatusCode {
    if !metadata(&h) {
        return StatusCode::BAD_REQUEST;
    }
    let Some(reqs) = body.get("StartRequests").and_then(Value::as_array) else {
        return StatusCode::BAD_REQUEST;
    };
    let ids: Vec<String> = reqs
        .iter()
        .filter_map(|r| r.get("EventId").and_then(Value::as_str).map(str::to_string))
        .collect();
    let mut started = Vec::new();
    if let Ok(mut s) = st.lock() {
        let mut changed = false;
        for e in s.events.iter_mut() {
            let id = e
                .get("EventId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if ids.iter().any(|i| i.eq_ignore_ascii_case(&id)) && e["EventStatus"] == "Scheduled" {
                e["EventStatus"] = json!("Started");
                e["NotBefore"] = json!("");
                started.push(id);
                changed = true;
            }
        }
        if changed {
            s.incarnation += 1;
        }
        s.approvals.extend(ids);
    }
    for id in started {
        let st = st.clone();
        tokio::spawn(async move {
            tokio::time::sleep(impact).await;
            if let Ok(mut s) = st.lock() {
                s.events
                    .retain(|e| e.get("EventId").and_then(Value::as_str) != Some(id.as_str()));
                s.incarnation += 1;
                s.completed = true;
            }
        });
    }
    StatusCode::OK
}
