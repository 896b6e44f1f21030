//! The HTTP ingest endpoint: deployment tools report failed operations with `POST /ingest`.
//!
//! The body is `{idempotency_key, resource, operation, attempt?, request?,
//! error}` (`error` being the raw ARM error body, an async operation status, an activity-log
//! `statusMessage`, or a raw HTTP response), read by the `azure.arm` normalizer. The endpoint
//! lives on the host's `listen` address (loopback unless `allow_remote`), wants
//! `Authorization: Bearer <token>` (the token from the environment variable `token_env`), and
//! refuses bodies over `max_body_bytes`.
//!
//! Answers: `202` accepted and decided (the reply names the event, the decision and the
//! attempt); `200` `duplicate` for an idempotency key accepted before (nothing is decided
//! twice), or `no_failure` when the body reports no failed operation; `400` with the
//! normalizer's error; `401` without the right token; `413` over the size limit; `500` when the
//! state store fails; `503` with `Retry-After` when the queue to the run loop is full, too many
//! requests are in flight, the request took longer than `request_timeout`, or the host is
//! stopping.
//!
//! The event's time is the body's own (the error's end time) only while it is within 15
//! minutes before and 1 minute after the body arrived, else the arrival ([`counted_time`]):
//! the guards count by it.
//!
//! When the body gives no `attempt`, the host stamps `failure.attempt` itself: failures of one
//! (resource, operation) within `attempt_window` of the previous one count 1, 2, 3, ... The
//! count, the key and the decision are written in one transaction.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use keel_engine::normalize::{normalize, Input, NormalizeError, NormalizerState};
use keel_engine::{escape, Event, Kind, Timestamp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::App;
use crate::run::store::{Db, IngestRecord, Prefetch};
use crate::run::{rfc, Effects, Host, Inbox, IngestReply, Payload, Work};

/// The source's name (its metrics label).
pub const SOURCE: &str = "ingest";

/// The normalizer that reads ingest bodies.
pub const NORMALIZER: &str = "azure.arm";

/// The longest idempotency key accepted.
pub const MAX_KEY_CHARS: usize = 512;

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn authorized(h: &HeaderMap, token: &str) -> bool {
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = v.trim().splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(given)) if scheme.eq_ignore_ascii_case("bearer") => {
            same_secret(given.trim(), token)
        }
        _ => false,
    }
}

fn reply(host: &Host, status: StatusCode, body: Value) -> Response {
    host.metrics.add(
        "keel_ingest_requests_total",
        &[("status", status.as_str())],
        1.0,
    );
    let mut r = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// 503 with `Retry-After`: the host is busy (or stopping); the client should try again.
fn busy(host: &Host, why: &str) -> Response {
    let mut r = reply(host, StatusCode::SERVICE_UNAVAILABLE, json!({"error": why}));
    r.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(RETRY_AFTER_S),
    );
    r
}

/// The `Retry-After` of a 503, in seconds.
const RETRY_AFTER_S: &str = "1";

/// `POST /ingest`: at most `sources.ingest.concurrent_requests` at once and
/// `sources.ingest.request_timeout` each; beyond either, or when the queue to the run loop is
/// full, 503 with `Retry-After` at once.
pub async fn post(State(app): State<App>, req: Request) -> Response {
    let host = app.host.clone();
    let Some(cfg) = &host.cfg.ingest else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !authorized(req.headers(), cfg.token.expose()) {
        host.metrics
            .add("keel_source_errors_total", &[("source", SOURCE)], 1.0);
        return reply(
            &host,
            StatusCode::UNAUTHORIZED,
            json!({"error": "a valid `Authorization: Bearer <token>` header is required"}),
        );
    }
    let Ok(_slot) = app.ingest_slots.clone().try_acquire_owned() else {
        return busy(&host, "too many ingest requests at once; retry later");
    };
    match tokio::time::timeout(cfg.request_timeout, accept(&app, req)).await {
        Ok(r) => r,
        Err(_) => busy(
            &host,
            "the request was not decided in time; retry with the same idempotency key",
        ),
    }
}

/// Reads the body of an authorized request, queues it for the run loop and waits for its
/// decision.
async fn accept(app: &App, req: Request) -> Response {
    let host = app.host.clone();
    let (Some(cfg), Some(inbox)) = (&host.cfg.ingest, &app.inbox) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The body limit (a route layer) applies here, after the token was checked.
    let bytes = match Bytes::from_request(req, &()).await {
        Ok(b) => b,
        Err(rejection) => {
            host.metrics
                .add("keel_source_errors_total", &[("source", SOURCE)], 1.0);
            let status = rejection.status();
            let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is larger than {} bytes", cfg.max_body_bytes)
            } else {
                escape(&rejection.body_text())
            };
            return reply(&host, status, json!({"error": msg}));
        }
    };
    let (tx, rx) = oneshot::channel();
    let p = Payload {
        normalizer: NORMALIZER,
        bytes: bytes.to_vec(),
        observed_at: Utc::now(),
    };
    let arrived = host.normalize_on_arrival(&p);
    match inbox.try_send(Inbox::Ingest(p, tx, arrived)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return busy(&host, "the ingest queue is full; retry later");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return busy(&host, "the host is stopping");
        }
    }
    match rx.await {
        Ok(IngestReply { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            reply(&host, status, body)
        }
        Err(_) => reply(
            &host,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the host is stopping"}),
        ),
    }
}

/// A key of a JSON object, case-insensitively (as the normalizer reads them).
/// How far before its arrival an ingest body may date its failure (15 minutes).
pub const MAX_REPORTED_AGE: chrono::Duration = chrono::Duration::minutes(15);

/// How far after its arrival an ingest body may date its failure (clock skew: 1 minute).
pub const MAX_REPORTED_SKEW: chrono::Duration = chrono::Duration::minutes(1);

/// The time an ingest event is decided and counted at: the body's own time while it is
/// within [`MAX_REPORTED_AGE`] before and [`MAX_REPORTED_SKEW`] after its arrival, else the
/// arrival. The guards and the correlation history count by the events' times, and the body's
/// time is the client's word: a client holding the ingest token cannot spread an outage over
/// days (or into the future) to stay under the storm guard and the retry budget.
pub fn counted_time(reported: Timestamp, observed: Timestamp) -> Timestamp {
    let early = observed
        .checked_sub_signed(MAX_REPORTED_AGE)
        .unwrap_or(observed);
    let late = observed
        .checked_add_signed(MAX_REPORTED_SKEW)
        .unwrap_or(observed);
    if reported < early || reported > late {
        observed
    } else {
        reported
    }
}

/// The ingest normalizer's look-up of a field (`keel_engine`'s own is not public): the key
/// spelled exactly `key` first, else the first that matches case-insensitively (in byte
/// order: the map is sorted); `null` as absent.
#[cfg(test)]
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn bad(msg: impl Into<String>) -> IngestReply {
    IngestReply {
        status: 400,
        body: json!({"error": msg.into()}),
    }
}

/// An ingest body normalized before its batch ([`Host::normalize_on_arrival`],
/// [`Host::normalize_ahead`]): its events (or the normalizer's error), the `azure.arm` state
/// it was read with (and left unchanged), and what the batch reads of the body besides.
#[derive(Debug)]
pub struct Normalized {
    events: Result<Vec<Event>, NormalizeError>,
    state: Arc<ArmState>,
    head: Head,
    /// The redacted JSON the batch will store of the body's one event, when it is known
    /// before the batch ([`ahead_json`]).
    event_json: Option<String>,
}

/// Writes, on arrival, the redacted JSON that deciding the body will store of its event, so
/// that the one thread deciding batches does not: for a body of one operation failure that
/// gives its `attempt` (a body without one has it counted from the store, in the batch).
/// The event's time is set as the batch sets it ([`counted_time`] of its arrival: the same
/// again in the batch).
fn ahead_json(
    events: &mut Result<Vec<Event>, NormalizeError>,
    head: &Head,
    observed_at: Timestamp,
) -> Option<String> {
    let [ev] = events.as_deref_mut().ok()? else {
        return None;
    };
    if !head.attempt_given || ev.kind != Kind::OperationFailure || ev.failure.is_none() {
        return None;
    }
    ev.time = counted_time(ev.time, observed_at);
    keel_engine::redact::to_redacted_string(ev).ok()
}

impl Normalized {
    /// Adds to `want` what deciding this body will look up in the store, found as
    /// [`Host::ingest`] finds them: exact for a body it accepts (a body it refuses adds at
    /// most a key).
    fn wanted(&self, want: &mut Prefetch) {
        self.head.wanted(want);
        if let Ok([ev]) = self.events.as_deref() {
            want.events.push((ev.id.clone(), crate::run::status_of(ev)));
            if !self.head.attempt_given {
                want.attempts.extend(attempt_key(ev));
            }
        }
    }
}

/// What the batch reads of an ingest body besides its events: its `idempotency_key` as given
/// (checked in the batch), and whether it gives its `attempt`. Both case-insensitive.
#[derive(Debug, Default)]
struct Head {
    key: Option<Value>,
    attempt_given: bool,
}

impl Head {
    /// Reads the head of a body (nothing of one that is not a JSON object), as the
    /// normalizer finds the two fields in the body parsed whole ([`get_ci`]), without
    /// building the rest: the key spelled exactly as the field first, else of the keys that
    /// match case-insensitively the first in byte order; the last of its duplicates; `null`
    /// as absent. (A body giving `IDEMPOTENCY_KEY` and `idempotency_key` is recorded under
    /// the key its event is named by.)
    fn of(bytes: &[u8]) -> Head {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn wanted(&self, want: &mut Prefetch) {
        if let Some(Value::String(key)) = &self.key {
            want.keys.push(key.clone());
        }
    }
}

impl<'de> serde::Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Head;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Head, A::Error> {
                // Each field with the key it was found under, chosen as the normalizer's
                // case-insensitive look-up chooses in the map parsed whole: the key spelled
                // exactly `field` first, else the first match in byte order; of duplicates
                // the last one. Every other value is skipped unbuilt.
                fn wins<T>(found: &Option<(String, T)>, k: &str, field: &str) -> bool {
                    found
                        .as_ref()
                        .is_none_or(|(f, _)| k == field || (f != field && k <= f.as_str()))
                }
                let mut key: Option<(String, Value)> = None;
                let mut attempt: Option<(String, bool)> = None;
                while let Some(k) = m.next_key::<String>()? {
                    if k.eq_ignore_ascii_case("idempotency_key") {
                        let v: Value = m.next_value()?;
                        if wins(&key, &k, "idempotency_key") {
                            key = Some((k, v));
                        }
                    } else if k.eq_ignore_ascii_case("attempt") {
                        let v: Option<IgnoredAny> = m.next_value()?;
                        if wins(&attempt, &k, "attempt") {
                            attempt = Some((k, v.is_some()));
                        }
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Head {
                    key: key.map(|(_, v)| v).filter(|v| !v.is_null()),
                    attempt_given: attempt.is_some_and(|(_, given)| given),
                })
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The `azure.arm` normalizer's state.
pub type ArmState = keel_engine::normalize::azure_arm::State;

/// The (resource, operation) whose failed attempts an operation failure counts toward: the
/// resource's id, else its name, lower-cased. A failure of an unknown resource is never merged
/// with another's (`None`).
fn attempt_key(ev: &Event) -> Option<(String, String)> {
    let resource = ev.resource.id.as_deref().or(ev.resource.name.as_deref())?;
    let failure = ev.failure.as_ref()?;
    Some((
        resource.to_ascii_lowercase(),
        failure.operation.as_str().to_string(),
    ))
}

impl Host {
    /// Runs the ingest normalizer on `p` with `scratch` holding a copy of the host's
    /// `azure.arm` state (only an accepted body's changes are kept, by the caller). `Err`: the
    /// state's lock is poisoned.
    fn normalize_ingest(
        &self,
        p: &Payload,
        scratch: &mut NormalizerState,
    ) -> Result<Result<Vec<Event>, NormalizeError>, &'static str> {
        match self.nstate.lock() {
            Ok(st) => scratch.azure_arm = st.azure_arm.clone(),
            Err(_) => return Err("normalizer state lock poisoned"),
        }
        Ok(self.normalize_with(p, scratch))
    }

    fn normalize_with(
        &self,
        p: &Payload,
        scratch: &mut NormalizerState,
    ) -> Result<Vec<Event>, NormalizeError> {
        let mut input = Input::new(&p.bytes, p.observed_at);
        if let Some(me) = self.self_name() {
            input = input.self_name(me);
        }
        normalize(p.normalizer, &input, scratch)
    }

    /// Normalizes the ingest body `p` as it arrives, on the HTTP server's thread, so that the
    /// one thread that decides batches does not. Only while the normalizer's `azure.arm`
    /// state is empty, and only if the body leaves it so (a body that carries its own
    /// operation id or time, as ingest bodies do): the batch uses the result only when its
    /// state is still the one the body was read with, so it is exactly what the batch would
    /// have computed. `None` otherwise: the batch normalizes the body in its turn.
    pub fn normalize_on_arrival(&self, p: &Payload) -> Option<Normalized> {
        // Never waits for the lock (a poll's batch may hold it across store reads): the HTTP
        // threads serve other requests meanwhile.
        if self.nstate.try_lock().ok()?.azure_arm != ArmState::default() {
            return None;
        }
        let mut scratch = NormalizerState::default();
        let mut events = self.normalize_with(p, &mut scratch);
        if scratch.azure_arm != ArmState::default() {
            return None;
        }
        // A body the normalizer refused is answered 400 before its head is read.
        let head = if events.is_ok() {
            Head::of(&p.bytes)
        } else {
            Head::default()
        };
        let event_json = ahead_json(&mut events, &head, p.observed_at);
        Some(Normalized {
            events,
            state: Arc::new(ArmState::default()),
            head,
            event_json,
        })
    }

    /// Normalizes the ingest body `p` ahead of its batch, for a fleet: the batch then holds
    /// the fleet's write lock for less. What deciding it will look up in the store (its key,
    /// its event, its attempt count) is added to `want` for the batch's prefetch
    /// ([`Db::prefetch`](crate::run::store::Db::prefetch)). `arrived`: the body normalized on
    /// arrival, if it was ([`Host::normalize_on_arrival`]). `None` when the normalizer's
    /// state is not `snapshot` (taken once for the batch) or the normalizer changed it: the
    /// body is then normalized again in its turn.
    pub fn normalize_ahead(
        &self,
        p: &Payload,
        arrived: Option<Normalized>,
        snapshot: &Arc<ArmState>,
        want: &mut Prefetch,
    ) -> Option<Normalized> {
        if let Some(n) = arrived.filter(|n| *n.state == **snapshot) {
            n.wanted(want);
            return Some(n);
        }
        let head = Head::of(&p.bytes);
        let mut scratch = NormalizerState::default();
        let events = match self.normalize_ingest(p, &mut scratch) {
            Ok(events) if scratch.azure_arm == **snapshot => events,
            _ => {
                head.wanted(want);
                return None;
            }
        };
        let n = Normalized {
            events,
            state: snapshot.clone(),
            head,
            event_json: None,
        };
        n.wanted(want);
        Some(n)
    }

    /// Accepts one ingest body: normalizes it (`azure.arm`), accepts its idempotency key
    /// once, stamps `failure.attempt` when the body gives none, decides, and records the
    /// decision with the key and the attempt count in one transaction. Returns the HTTP reply
    /// and the runbook to run, if any. Called from the run loop, one body at a time.
    /// `ahead`: the body normalized before the batch ([`Host::normalize_ahead`]), used when
    /// the normalizer's state is still the one it was normalized with.
    pub fn ingest(
        self: &Arc<Self>,
        db: &Db<'_>,
        p: &Payload,
        ahead: Option<Normalized>,
        fx: &mut Effects,
    ) -> IngestReply {
        let (reply, work) = self.ingest_inner(db, p, ahead, fx);
        fx.work.extend(work);
        if reply.status >= 500 {
            let why = reply.body["error"].as_str().unwrap_or("internal error");
            self.source_failed(SOURCE, "endpoint", why);
        } else {
            if reply.status >= 400 {
                self.metrics
                    .add("keel_source_errors_total", &[("source", SOURCE)], 1.0);
            }
            self.source_ok(SOURCE, "endpoint");
        }
        reply
    }

    fn ingest_inner(
        self: &Arc<Self>,
        db: &Db<'_>,
        p: &Payload,
        ahead: Option<Normalized>,
        fx: &mut Effects,
    ) -> (IngestReply, Vec<Work>) {
        let none = Vec::new();
        let internal = |e: &dyn std::fmt::Display| IngestReply {
            status: 500,
            body: json!({"error": escape(&e.to_string())}),
        };
        // The normalizer first: its error is the most precise (with a JSON position). It runs
        // on a copy of the state; only an accepted body's changes are kept.
        // (Only its `azure.arm` part: the one this normalizer reads and writes.)
        let mut scratch = NormalizerState::default();
        let ahead = ahead.filter(|n| self.nstate.lock().is_ok_and(|st| st.azure_arm == *n.state));
        let (normalized, head, ev_json) = match ahead {
            Some(n) => {
                scratch.azure_arm = (*n.state).clone();
                (n.events, Some(n.head), n.event_json)
            }
            None => match self.normalize_ingest(p, &mut scratch) {
                Ok(r) => (r, None, None),
                Err(poisoned) => return (internal(&poisoned), none),
            },
        };
        let mut events = match normalized {
            Ok(evs) => evs,
            Err(e) => return (bad(escape(&e.to_string())), none),
        };
        // The normalizer accepted it, so it is JSON.
        let head = head.unwrap_or_else(|| Head::of(&p.bytes));
        let key = match head.key {
            Some(Value::String(k)) if !k.trim().is_empty() && k.chars().count() <= MAX_KEY_CHARS => {
                k
            }
            Some(_) => {
                return (
                    bad(format!(
                        "`idempotency_key`: expected a non-empty string of at most {MAX_KEY_CHARS} characters"
                    )),
                    none,
                )
            }
            None => {
                return (
                    bad("`idempotency_key`: required (the ingest body: {idempotency_key, resource, operation, attempt?, request?, error})"),
                    none,
                )
            }
        };
        match db.ingest_key(&key) {
            Ok(Some(event_id)) => {
                return (
                    IngestReply {
                        status: 200,
                        body: json!({"status": "duplicate", "idempotency_key": key, "event_id": event_id}),
                    },
                    none,
                )
            }
            Ok(None) => {}
            Err(e) => return (internal(&e), none),
        }
        if events.len() > 1 {
            return (
                bad(format!(
                    "the body holds {} failures; post one operation per body",
                    events.len()
                )),
                none,
            );
        }
        let Some(mut ev) = events.pop() else {
            return (
                IngestReply {
                    status: 200,
                    body: json!({"status": "no_failure", "idempotency_key": key}),
                },
                none,
            );
        };
        ev.time = counted_time(ev.time, p.observed_at);
        // Attempts are counted per (resource, operation).
        let counted = attempt_key(&ev);
        let Some(failure) = ev
            .failure
            .as_mut()
            .filter(|_| ev.kind == Kind::OperationFailure)
        else {
            return (bad("the body holds no operation failure"), none);
        };
        let given = head.attempt_given;
        if let (false, Some((resource, operation))) = (given, &counted) {
            let window = chrono::Duration::from_std(
                self.cfg
                    .ingest
                    .as_ref()
                    .map(|c| c.attempt_window)
                    .unwrap_or_default(),
            )
            .unwrap_or(chrono::Duration::MAX);
            let since = p
                .observed_at
                .checked_sub_signed(window)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            match db.attempts(resource, operation, &rfc(since)) {
                Ok(n) => failure.attempt = n.saturating_add(1),
                Err(e) => return (internal(&e), none),
            }
        }
        let attempt = failure.attempt;
        // Keep what the normalizer learnt (only its `azure.arm` part: runbooks may have
        // changed the rest meanwhile); the batch saves the state with the decision.
        match self.nstate.lock() {
            Ok(mut st) => st.azure_arm = scratch.azure_arm,
            Err(_) => return (internal(&"normalizer state lock poisoned"), none),
        }
        let record = IngestRecord {
            key: &key,
            counted: counted.as_ref().map(|(r, o)| (r.as_str(), o.as_str())),
            attempt,
        };
        // Written on arrival only for a body that gives its attempt: the event is as it was.
        let ev_json = ev_json.filter(|_| given);
        match self.decide(db, &ev, p.observed_at, Some(record), ev_json, fx) {
            Ok(Some(r)) => {
                let body = json!({
                    "status": "accepted", "idempotency_key": key, "event_id": ev.id,
                    "decision_id": r.decision_id, "action": r.decision.action,
                    "policy": r.decision.policy, "attempt": attempt,
                    "attempt_stamped": !given,
                });
                let work = if r.pending {
                    vec![(r.decision_id, ev, r.decision)]
                } else {
                    Vec::new()
                };
                (IngestReply { status: 202, body }, work)
            }
            // The event was recorded before under another key: nothing is decided twice.
            Ok(None) => (
                IngestReply {
                    status: 200,
                    body: json!({"status": "duplicate", "idempotency_key": key, "event_id": ev.id}),
                },
                none,
            ),
            // The whole batch rolls back (every body in it gets 500).
            Err(e) => {
                let reply = internal(&e);
                fx.failed.get_or_insert(e);
                (reply, none)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn host(dir: &std::path::Path) -> Arc<Host> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let path = dir.join("keel.yaml");
        std::fs::write(
            &path,
            format!(
                "policies: {}\nstate: state.db\nsources:\n  ingest:\n    token_env: KEEL_UNIT_TEST_NO_TOKEN\n",
                root.join("policies/standard").display()
            ),
        )
        .unwrap();
        // The token is never read: nothing is served.
        let cfg = crate::config::load_without_secrets(&path).unwrap();
        Host::new(cfg, Box::new(std::io::sink())).unwrap()
    }

    /// What [`Head::of`] must find: the body parsed whole, read with [`get_ci`].
    fn head_whole(bytes: &[u8]) -> (Option<Value>, bool) {
        let body = serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
        (
            get_ci(&body, "idempotency_key").cloned(),
            get_ci(&body, "attempt").is_some(),
        )
    }

    proptest::proptest! {
        #[test]
        fn the_head_of_a_body_is_what_the_body_parsed_whole_holds(
            entries in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "idempotency_key", "Idempotency_Key", "IDEMPOTENCY_KEY", "attempt",
                        "Attempt", "ATTEMPT", "resource", "error", "idempotency-key", "attempts",
                    ]),
                    proptest::sample::select(vec![
                        "null", "\"k-1\"", "\"\"", "3", "{\"a\": [1, null]}", "[]", "true",
                        "\"k\\u00e9\"",
                    ]),
                ),
                0..8,
            ),
            tail in proptest::sample::select(vec!["", " ", "x", "]"]),
        ) {
            let body = format!(
                "{{{}}}{tail}",
                entries.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", ")
            );
            let h = Head::of(body.as_bytes());
            proptest::prop_assert_eq!((h.key, h.attempt_given), head_whole(body.as_bytes()), "{}", body);
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_has_no_head() {
        for body in [
            "[]",
            "\"idempotency_key\"",
            "null",
            "{\"idempotency_key\": }",
            "",
        ] {
            let h = Head::of(body.as_bytes());
            assert_eq!(
                (h.key, h.attempt_given),
                head_whole(body.as_bytes()),
                "{body}"
            );
        }
    }

    fn payload(body: &Value) -> Payload {
        Payload {
            normalizer: NORMALIZER,
            bytes: body.to_string().into_bytes(),
            observed_at: Utc::now(),
        }
    }

    /// Sends `body` through a batch as the run loop does, normalized on arrival when it can be.
    fn post(host: &Arc<Host>, body: &Value) -> IngestReply {
        let p = payload(body);
        let arrived = host.normalize_on_arrival(&p);
        let (tx, mut rx) = oneshot::channel();
        let c = host.commit(vec![Inbox::Ingest(p, tx, arrived)]);
        host.deliver(c);
        rx.try_recv().unwrap()
    }

    #[test]
    fn a_body_is_normalized_on_arrival_only_where_its_batch_would_compute_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
            )
            .unwrap(),
        )
        .unwrap();
        // With its own operation id and times: read on arrival, exactly as the batch reads it.
        let p = payload(&fixture);
        let arrived = host
            .normalize_on_arrival(&p)
            .expect("normalized on arrival");
        let mut scratch = NormalizerState::default();
        let mut in_batch = host.normalize_ingest(&p, &mut scratch).unwrap().unwrap();
        // The batch dates the event as on arrival (its 2021 time is too old to count).
        in_batch[0].time = counted_time(in_batch[0].time, p.observed_at);
        assert_eq!(in_batch[0].time, p.observed_at);
        assert_eq!(arrived.events.as_deref().ok(), Some(&in_batch[..]));
        assert_eq!(arrived.head.key, Some(fixture["idempotency_key"].clone()));
        assert!(arrived.head.attempt_given);
        // The body gives its attempt: the event's JSON, as the batch stores it, is written
        // on arrival too; without an attempt (counted in the batch from the store), not.
        assert_eq!(
            arrived.event_json,
            Some(keel_engine::redact::to_redacted_string(&in_batch[0]).unwrap())
        );
        let mut unnumbered = fixture.clone();
        unnumbered.as_object_mut().unwrap().remove("attempt");
        let arrived_unnumbered = host.normalize_on_arrival(&payload(&unnumbered)).unwrap();
        assert!(arrived_unnumbered.events.is_ok() && arrived_unnumbered.event_json.is_none());
        // Without a key (its vendor id), times or operation name, the normalizer remembers
        // when it first saw the failure: that is the batch's to do, in its turn (where this
        // body, without its key, is refused, its state change dropped).
        let mut bare = fixture.clone();
        bare.as_object_mut().unwrap().remove("idempotency_key");
        let e = bare["error"].as_object_mut().unwrap();
        for k in ["startTime", "endTime", "name"] {
            e.remove(k);
        }
        assert!(host.normalize_on_arrival(&payload(&bare)).is_none());
        assert_eq!(post(&host, &bare).status, 400);
        assert!(
            host.normalize_on_arrival(&p).is_some(),
            "the state is empty"
        );
        // The same document read from a file source leaves the state non-empty: nothing is
        // normalized on arrival any more, and a body is still decided, in its batch.
        let (ack, _answer) = oneshot::channel();
        host.deliver(host.commit(vec![Inbox::Poll(payload(&bare), ack)]));
        assert!(host.normalize_on_arrival(&p).is_none());
        assert_eq!(post(&host, &fixture).status, 202);
        // The same body again, on arrival or not: one decision.
        assert_eq!(post(&host, &fixture).status, 200);
    }

    #[test]
    fn a_key_given_under_two_spellings_is_the_one_its_event_is_named_by() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        let mut body: Value = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let obj = body.as_object_mut().unwrap();
        obj.insert("idempotency_key".into(), json!("exact"));
        // Sorts first (upper case before lower): the exact spelling wins all the same.
        obj.insert("IDEMPOTENCY_KEY".into(), json!("shouted"));
        let p = payload(&body);
        let mut scratch = NormalizerState::default();
        let events = host.normalize_ingest(&p, &mut scratch).unwrap().unwrap();
        assert_eq!(events[0].id, "azure.arm:exact");
        assert_eq!(Head::of(&p.bytes).key, Some(json!("exact")));
        // Recorded under that key: the same body again is a repeat, and so is one giving
        // only the exact spelling; one giving only the other is another failure.
        assert_eq!(post(&host, &body).status, 202);
        assert_eq!(post(&host, &body).status, 200);
        let obj = body.as_object_mut().unwrap();
        obj.remove("IDEMPOTENCY_KEY");
        assert_eq!(post(&host, &body).status, 200);
        let obj = body.as_object_mut().unwrap();
        obj.remove("idempotency_key");
        obj.insert("IDEMPOTENCY_KEY".into(), json!("shouted"));
        assert_eq!(post(&host, &body).status, 202);
    }

    /// A host deciding with the policies in `policies`, with a budget whose group is the
    /// availability set, given as a percentage (so its members count).
    fn budget_host(dir: &std::path::Path, policies: &std::path::Path) -> Arc<Host> {
        let path = dir.join("keel.yaml");
        std::fs::write(
            &path,
            format!(
                "policies: {}\nstate: state.db\nsources:\n  ingest:\n    token_env: KEEL_UNIT_TEST_NO_TOKEN\n\
                 budgets:\n  - {{ name: sets, key: event.resource.availability_set, max_in_flight: \"25%\" }}\n",
                policies.display()
            ),
        )
        .unwrap();
        let cfg = crate::config::load_without_secrets(&path).unwrap();
        Host::new(cfg, Box::new(std::io::sink())).unwrap()
    }

    /// Posts `n` bodies of made-up VMs of the availability set `web`.
    fn post_made_up_vms(host: &Arc<Host>, n: usize) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(
                root.join("engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
            )
            .unwrap(),
        )
        .unwrap();
        for i in 0..n {
            let mut body = fixture.clone();
            body["idempotency_key"] = json!(format!("made-up-{i}"));
            body["resource"] = json!({
                "id": format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/fake-{i}"),
                "availability_set": "web",
            });
            assert_eq!(post(host, &body).status, 202, "{i}");
        }
    }

    fn web_members(host: &Arc<Host>) -> Vec<keel_engine::budget::Member> {
        host.store
            .key_view("sets", "web", &keel_engine::budget::rfc(Utc::now()))
            .unwrap()
            .members
    }

    /// A budget's group size, when not given, is the members seen: learned from the
    /// platform's signals, never from ingest bodies, which could name made-up VMs into a
    /// group and widen a `max_in_flight` given as a share of it.
    #[test]
    fn ingest_bodies_add_no_members_to_a_budget_s_group() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let host = budget_host(dir.path(), &root.join("policies/standard"));
        post_made_up_vms(&host, 5);
        assert!(web_members(&host).is_empty(), "{:?}", web_members(&host));
    }

    /// Nor when a policy defers them and they are decided again.
    #[test]
    fn deferred_ingest_bodies_decided_again_add_no_members_either() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("later.yaml"),
            "policies:\n  - name: later\n    on: [operation_failure]\n    when: event.failure.attempt >= 1\n    action: defer\n    params: { until: now }\n",
        )
        .unwrap();
        let host = budget_host(dir.path(), &policies);
        post_made_up_vms(&host, 3);
        assert!(host.store.pending().unwrap().is_empty());
        let redecided = host.due_deferrals();
        assert!(redecided.is_empty(), "deferred again, no runbook");
        assert!(web_members(&host).is_empty(), "{:?}", web_members(&host));
    }

    #[test]
    fn a_reported_time_counts_only_near_its_arrival() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let observed = at("2026-12-02T12:00:00Z");
        for (reported, counted) in [
            ("2026-12-02T11:50:00Z", "2026-12-02T11:50:00Z"),
            ("2026-12-02T11:45:00Z", "2026-12-02T11:45:00Z"),
            ("2026-12-02T11:44:59Z", "2026-12-02T12:00:00Z"),
            ("2021-10-13T07:02:00Z", "2026-12-02T12:00:00Z"),
            ("2026-12-02T12:01:00Z", "2026-12-02T12:01:00Z"),
            ("2026-12-02T12:01:01Z", "2026-12-02T12:00:00Z"),
            ("2099-01-01T00:00:00Z", "2026-12-02T12:00:00Z"),
        ] {
            assert_eq!(
                counted_time(at(reported), observed),
                at(counted),
                "{reported}"
            );
        }
    }
}
