//! The host's sources, end to end: the real `keel run` binary against loopback stubs that
//! follow the vendor protocols (AWS IMDSv2 with required tokens, the GCP metadata server with
//! wait-for-change and ETags), and the ingest endpoint. Assertions read the decision log (JSON
//! lines on stdout), `/metrics` and `/readyz`. Durations are scaled down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

mod common;

use common::{metric, root, serve, Keel};

/// The common head of a test configuration: the standard policies, fresh state, any port on
/// loopback, runbooks of `log` steps only.
fn config(dir: &Path, sources: &str) -> String {
    format!(
        "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nself: test-vm\nunready_after: 1s\nsources:\n{sources}runbooks:\n  drain:\n    - name: announce\n      log: {{}}\n  retry_without_agent:\n    - name: note\n      log: {{}}\n",
        root().join("policies/standard").display(),
        dir.join("state.db").display(),
    )
}

/// Starts `keel run` on a fresh configuration with `sources`, and waits until it listens.
async fn start(sources: &str, env: &[(&str, &str)]) -> Keel {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(&cfg, config(dir.path(), sources)).unwrap();
    let mut k = Keel::start(&cfg, &[], env).keep_dir(dir);
    k.wait_listen(Duration::from_secs(20)).await;
    k
}

fn steps_of<'a>(lines: &'a [Value], decision_id: &str) -> Vec<(&'a str, &'a str)> {
    lines
        .iter()
        .filter(|l| l["decision_id"] == decision_id && l.get("step").is_some())
        .map(|l| {
            (
                l["step"].as_str().unwrap(),
                l["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// AWS IMDSv2 stub: PUT /latest/api/token with a TTL header; every GET needs a live token
// (401 without); 404 pages for absent notices; a failure mode for whole stretches.

#[derive(Default)]
struct Imds {
    tokens: HashMap<String, Instant>,
    issued: usize,
    unauthorized: usize,
    gets: Vec<Instant>,
    /// Every GET answers this status (with this Retry-After) while set.
    fail: Option<(u16, Option<u64>)>,
    failed_served: usize,
    spot: Option<Value>,
    /// The `events/maintenance/scheduled` list while set; a 404 otherwise.
    scheduled: Option<Value>,
}

type ImdsState = Arc<Mutex<Imds>>;

fn imds_page(title: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/plain")], body).into_response()
}

async fn imds_stub() -> (String, ImdsState) {
    let st: ImdsState = Arc::default();
    let s = st.clone();
    let app = Router::new().fallback(move |method: Method, uri: Uri, h: HeaderMap| {
        let st = s.clone();
        async move { imds(&st, &method, uri.path(), &h) }
    });
    (serve(app).await, st)
}

fn imds(st: &ImdsState, method: &Method, path: &str, h: &HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if method == Method::PUT && path == "/latest/api/token" {
        if header("x-forwarded-for").is_some() {
            return text(StatusCode::FORBIDDEN, imds_page("403 - Forbidden"));
        }
        let Some(ttl) = header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| (1..=21_600).contains(t))
        else {
            return text(StatusCode::BAD_REQUEST, imds_page("400 - Bad Request"));
        };
        s.issued += 1;
        let token = format!("AQAEAStub{}-{}==", s.issued, ttl);
        s.tokens
            .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
        return text(StatusCode::OK, token);
    }
    if method != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            imds_page("405 - Method Not Allowed"),
        );
    }
    let live = header("x-aws-ec2-metadata-token")
        .and_then(|t| s.tokens.get(&t).copied())
        .is_some_and(|exp| Instant::now() < exp);
    if !live {
        s.unauthorized += 1;
        return text(StatusCode::UNAUTHORIZED, imds_page("401 - Unauthorized"));
    }
    s.gets.push(Instant::now());
    if let Some((status, retry_after)) = s.fail {
        s.failed_served += 1;
        let status = StatusCode::from_u16(status).unwrap();
        let mut r = text(status, imds_page(&format!("{} - Error", status.as_u16())));
        if let Some(ra) = retry_after {
            r.headers_mut()
                .insert("retry-after", ra.to_string().parse().unwrap());
        }
        return r;
    }
    match path {
        "/latest/meta-data/spot/instance-action" => match &s.spot {
            Some(v) => text(StatusCode::OK, v.to_string()),
            None => text(StatusCode::NOT_FOUND, imds_page("404 - Not Found")),
        },
        "/latest/meta-data/events/maintenance/scheduled" => match &s.scheduled {
            Some(v) => text(StatusCode::OK, v.to_string()),
            None => text(StatusCode::NOT_FOUND, imds_page("404 - Not Found")),
        },
        _ => text(StatusCode::NOT_FOUND, imds_page("404 - Not Found")),
    }
}

fn spot_terminate() -> Value {
    let at = chrono::Utc::now() + chrono::Duration::seconds(120);
    json!({"action": "terminate", "time": at.format("%Y-%m-%dT%H:%M:%SZ").to_string()})
}

/// AWS ends a scheduled event by clearing it from `events/maintenance/scheduled` (or by
/// marking it): once IMDS no longer lists it (an empty list, then a 404), the host decides its
/// completion, with the vendor id a drain's cordon was recorded under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_cleared_scheduled_event_is_decided_as_completed() {
    let (url, imds) = imds_stub().await;
    let id = "instance-event-0d59937288b749b32";
    imds.lock().unwrap().scheduled = Some(json!([{"NotBefore": "21 Jan 2019 09:00:43 GMT",
        "Code": "system-reboot", "Description": "scheduled reboot", "EventId": id,
        "NotAfter": "21 Jan 2019 09:17:23 GMT", "State": "active"}]));
    let mut k = start(&aws_source(&url, ""), &[]).await;
    let live = format!("aws.imds:{id}");
    k.wait_line("the live event's decision", Duration::from_secs(10), |l| {
        l["event_id"] == live.as_str()
    })
    .await;
    imds.lock().unwrap().scheduled = Some(json!([]));
    let done = format!("aws.imds:{id}/completed/2019-01-21T09:00:43Z");
    let line = k
        .wait_line("the completion's decision", Duration::from_secs(10), |l| {
            l["event_id"] == done.as_str()
        })
        .await;
    assert!(line["decision"].is_object(), "{line}");
    // Cleared for good (404 now): decided once.
    imds.lock().unwrap().scheduled = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let decided = |k: &Keel, id: &str| {
        k.json_lines()
            .iter()
            .filter(|l| l["event_id"] == id && l.get("decision").is_some())
            .count()
    };
    assert_eq!(decided(&k, &done), 1);
    assert_eq!(decided(&k, &live), 1);
}

/// A Spot notice whose `time` moves at every read (AWS's metadata mock dates it afresh; a
/// corrected notice would too) is one interruption, drained once; after IMDS answers 404 a new
/// notice is a new interruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_spot_notice_whose_time_moves_is_drained_once() {
    let (url, imds) = imds_stub().await;
    imds.lock().unwrap().spot = Some(spot_terminate());
    let mut k = start(&aws_source(&url, ""), &[]).await;
    let first = k
        .decision("aws.spot.interruption.drain", Duration::from_secs(10))
        .await;
    let first = first["event_id"].as_str().unwrap().to_string();
    for i in 0..10 {
        let at = chrono::Utc::now() + chrono::Duration::seconds(120 + i);
        imds.lock().unwrap().spot = Some(
            json!({"action": "terminate", "time": at.format("%Y-%m-%dT%H:%M:%SZ").to_string()}),
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let drains = |k: &Keel| {
        k.json_lines()
            .iter()
            .filter(|l| l["decision"]["policy"] == "aws.spot.interruption.drain")
            .count()
    };
    assert_eq!(drains(&k), 1, "{}", k.dump());
    imds.lock().unwrap().spot = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    imds.lock().unwrap().spot = Some(spot_terminate());
    k.wait_line("the next interruption", Duration::from_secs(10), |l| {
        l["decision"]["policy"] == "aws.spot.interruption.drain" && l["event_id"] != first.as_str()
    })
    .await;
}

fn aws_source(url: &str, extra: &str) -> String {
    format!("  aws_imds:\n    url: {url}\n    interval: 100ms\n    timeout: 1s\n    max_backoff: 300ms\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_spot_interruption_is_drained_with_imdsv2_tokens() {
    let (url, imds) = imds_stub().await;
    let mut k = start(&aws_source(&url, "    token_ttl: 1s\n"), &[]).await;
    k.wait_ready(200, Duration::from_secs(10)).await;
    imds.lock().unwrap().spot = Some(spot_terminate());
    let d = k
        .decision("aws.spot.interruption.drain", Duration::from_secs(10))
        .await;
    assert_eq!(d["decision"]["action"], "drain");
    let event_id = d["event_id"].as_str().unwrap().to_string();
    assert!(event_id.starts_with("aws.imds:"), "{event_id}");
    let id = d["decision_id"].as_str().unwrap().to_string();
    k.wait_line("the announce step", Duration::from_secs(5), |l| {
        l["decision_id"] == id.as_str() && l["step"] == "announce"
    })
    .await;
    assert_eq!(steps_of(&k.json_lines(), &id), [("announce", "ok")]);

    // Tokens live one second: the host renews them before they expire, so no GET is refused.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    {
        let s = imds.lock().unwrap();
        assert!(s.issued >= 2, "tokens issued: {}", s.issued);
        assert_eq!(
            s.unauthorized, 0,
            "GETs refused for a missing or expired token"
        );
    }
    // IMDS forgets every token (as after a restart): the 401 renews the token at once.
    let issued = {
        let mut s = imds.lock().unwrap();
        s.tokens.clear();
        s.issued
    };
    let t0 = Instant::now();
    while {
        let s = imds.lock().unwrap();
        s.unauthorized == 0 || s.issued == issued
    } {
        assert!(t0.elapsed() < Duration::from_secs(5), "no 401 and renewal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = k.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keel_decisions_total{action=\"drain\",policy=\"aws.spot.interruption.drain\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "keel_events_total{kind=\"maintenance\",source=\"aws.imds\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "keel_source_last_success_timestamp_seconds{source=\"aws.imds\"}"
        )
        .is_some(),
        "{m}"
    );
    // A renewed token is not a source failure.
    assert_eq!(
        metric(&m, "keel_source_errors_total{source=\"aws.imds\"}"),
        None,
        "{m}"
    );
    assert_eq!(k.readyz().await.0, 200);
    // The notice was read many times (for seconds) and decided once: stop the host (its whole
    // output is then read), then count.
    k.kill();
    let lines = k.json_lines();
    let decisions = lines.iter().filter(|l| l["event_id"] == event_id.as_str());
    assert_eq!(decisions.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_500s_are_counted_readyz_turns_red_and_the_source_recovers() {
    let (url, imds) = imds_stub().await;
    let mut k = start(&aws_source(&url, ""), &[]).await;
    k.wait_ready(200, Duration::from_secs(10)).await;
    let before = metric(
        &k.metrics().await,
        "keel_source_last_success_timestamp_seconds{source=\"aws.imds\"}",
    )
    .unwrap();

    // IMDS answers 500: counted at once, but /readyz stays green for `unready_after` (1 s).
    imds.lock().unwrap().fail = Some((500, None));
    let red_after = k.wait_ready(503, Duration::from_secs(5)).await;
    assert!(
        red_after >= Duration::from_millis(900),
        "red after {red_after:?}"
    );
    let (_, report) = k.readyz().await;
    assert_eq!(report["sources"]["aws.imds"]["ready"], false, "{report}");
    assert!(
        report["sources"]["aws.imds"]["channels"]["poll"]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{report}"
    );
    let m = k.metrics().await;
    let errors = metric(&m, "keel_source_errors_total{source=\"aws.imds\"}").unwrap();
    assert!(errors >= 2.0, "{m}");

    // 503 with Retry-After: 1 s: the host waits at least that long between tries (its own
    // backoff would be at most 300 ms).
    {
        let mut s = imds.lock().unwrap();
        s.fail = Some((503, Some(1)));
        s.gets.clear();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tries = imds.lock().unwrap().gets.len();
    assert!((1..=4).contains(&tries), "{tries} tries in 2.5 s");

    // The stub heals: the source recovers, /readyz turns green, and notices flow again.
    imds.lock().unwrap().fail = None;
    k.wait_ready(200, Duration::from_secs(5)).await;
    let m = k.metrics().await;
    let after = metric(
        &m,
        "keel_source_last_success_timestamp_seconds{source=\"aws.imds\"}",
    )
    .unwrap();
    assert!(after > before, "{before} -> {after}");
    imds.lock().unwrap().spot = Some(spot_terminate());
    k.decision("aws.spot.interruption.drain", Duration::from_secs(5))
        .await;
    // One log line when the failures started, one when they ended: no flood.
    let lines = k.json_lines();
    let started: Vec<&Value> = lines
        .iter()
        .filter(|l| l["source"] == "aws.imds" && l.get("error").is_some())
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(lines
        .iter()
        .any(|l| l["source"] == "aws.imds" && l["recovered"] == true));
}

// ------------------------------------------------------------------------------------------
// GCP metadata stub: `Metadata-Flavor: Google` required (403 without); every value has an
// ETag; `wait_for_change=true&last_etag=E` hangs while the ETag is still E, up to
// `timeout_sec`.

#[derive(Default)]
struct Gcp {
    values: HashMap<String, (String, u64)>,
    requests: usize,
    hanging: usize,
    waiting_now: usize,
    missing_flavor: usize,
    /// A misbehaving server (or proxy): `wait_for_change` answers at once, the value
    /// unchanged under a new ETag.
    fresh_etags: bool,
}

struct GcpStub {
    state: Arc<Mutex<Gcp>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl GcpStub {
    fn set(&self, key: &str, value: &str) {
        {
            let mut s = self.state.lock().unwrap();
            let e = s.values.entry(key.to_string()).or_default();
            e.0 = value.to_string();
            e.1 += 1;
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

async fn gcp_stub() -> (String, Arc<GcpStub>) {
    let (changed, _) = tokio::sync::watch::channel(0u64);
    let stub = Arc::new(GcpStub {
        state: Arc::default(),
        changed,
    });
    stub.set("maintenance-event", "NONE");
    stub.set("preempted", "FALSE");
    let s = stub.clone();
    let app = Router::new().fallback(move |uri: Uri, h: HeaderMap| {
        let s = s.clone();
        async move { gcp(&s, &uri, &h).await }
    });
    (format!("{}/computeMetadata/v1", serve(app).await), stub)
}

async fn gcp(stub: &GcpStub, uri: &Uri, h: &HeaderMap) -> Response {
    let Some(key) = uri.path().strip_prefix("/computeMetadata/v1/instance/") else {
        return text(StatusCode::NOT_FOUND, "Not Found".into());
    };
    let key = key.to_string();
    let mut rx = stub.changed.subscribe();
    {
        let mut s = stub.state.lock().unwrap();
        s.requests += 1;
        if h.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
            s.missing_flavor += 1;
            return text(
                StatusCode::FORBIDDEN,
                "Missing Metadata-Flavor:Google header.".into(),
            );
        }
        if !s.values.contains_key(&key) {
            return text(StatusCode::NOT_FOUND, "Not Found".into());
        }
    }
    let q: HashMap<&str, &str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let etag_of = |s: &Gcp| {
        let fresh = if s.fresh_etags { s.requests } else { 0 };
        format!(
            "etag-{key}-{}-{fresh}",
            s.values.get(&key).map_or(0, |v| v.1)
        )
    };
    let fresh = stub.state.lock().unwrap().fresh_etags;
    if q.get("wait_for_change") == Some(&"true") && !fresh {
        let last = q.get("last_etag").copied().unwrap_or("");
        let secs: u64 = q
            .get("timeout_sec")
            .and_then(|t| t.parse().ok())
            .unwrap_or(300);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        {
            let mut s = stub.state.lock().unwrap();
            s.hanging += 1;
            s.waiting_now += 1;
        }
        loop {
            if etag_of(&stub.state.lock().unwrap()) != last {
                break;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        stub.state.lock().unwrap().waiting_now -= 1;
    }
    let s = stub.state.lock().unwrap();
    let value = s.values.get(&key).map(|v| v.0.clone()).unwrap_or_default();
    let mut r = text(StatusCode::OK, value);
    r.headers_mut().insert("etag", etag_of(&s).parse().unwrap());
    r.headers_mut()
        .insert("metadata-flavor", "Google".parse().unwrap());
    r
}

/// A server (or a proxy) that answers a hanging request at once with the value unchanged
/// under a new ETag is read again only after `interval`, not in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_an_unchanged_value_under_new_etags_is_not_read_in_a_loop() {
    let (url, stub) = gcp_stub().await;
    stub.state.lock().unwrap().fresh_etags = true;
    let src = format!("  gcp_metadata:\n    url: {url}\n    wait_timeout: 30s\n    timeout: 2s\n    interval: 200ms\n    max_backoff: 500ms\n");
    let k = start(&src, &[]).await;
    k.wait_ready(200, Duration::from_secs(10)).await;
    let before = stub.state.lock().unwrap().requests;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = stub.state.lock().unwrap().requests - before;
    // Two keys, one read each per 200 ms: about ten in a second.
    assert!(n <= 16, "requests in one second: {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_terminate_on_host_maintenance_is_drained_through_a_hanging_request() {
    let (url, stub) = gcp_stub().await;
    // Requests may hang for 30 s: a change seen sooner came through an open request.
    let src = format!("  gcp_metadata:\n    url: {url}\n    wait_timeout: 30s\n    timeout: 2s\n    interval: 200ms\n    max_backoff: 500ms\n");
    let mut k = start(&src, &[]).await;
    k.wait_ready(200, Duration::from_secs(10)).await;
    let t0 = Instant::now();
    while stub.state.lock().unwrap().waiting_now < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no hanging requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stub.set("maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE");
    let t0 = Instant::now();
    let d = k
        .decision("gcp.terminate-on-maintenance.drain", Duration::from_secs(5))
        .await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(d["decision"]["action"], "drain");
    assert!(d["event_id"].as_str().unwrap().starts_with("gcp.metadata:"));
    let id = d["decision_id"].as_str().unwrap().to_string();
    k.wait_line("the announce step", Duration::from_secs(5), |l| {
        l["decision_id"] == id.as_str() && l["step"] == "announce"
    })
    .await;

    stub.set("preempted", "TRUE");
    k.decision("gcp.preempted.drain", Duration::from_secs(5))
        .await;

    // The maintenance ends; the value returns to NONE (a `completed` event, decided `none`).
    stub.set("maintenance-event", "NONE");
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let s = stub.state.lock().unwrap();
        assert_eq!(s.missing_flavor, 0);
        assert!(s.hanging >= 4, "hanging requests: {}", s.hanging);
        // No polling: two plain reads, then one request per change per key, plus the open ones.
        assert!(s.requests <= 12, "requests: {}", s.requests);
    }
    let lines = k.json_lines();
    let drains = lines
        .iter()
        .filter(|l| l["decision"]["policy"] == "gcp.terminate-on-maintenance.drain")
        .count();
    assert_eq!(drains, 1);
    let m = k.metrics().await;
    assert!(
        metric(
            &m,
            "keel_source_last_success_timestamp_seconds{source=\"gcp.metadata\"}"
        )
        .is_some(),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_source_errors_total{source=\"gcp.metadata\"}"),
        None,
        "{m}"
    );
    let (status, report) = k.readyz().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["sources"]["gcp.metadata"]["channels"]["preempted"]["ready"], true,
        "{report}"
    );
}

// ------------------------------------------------------------------------------------------
// Ingest.

const TOKEN: &str = "keel-test-token-0123456789abcdef";

fn ingest_body(key: &str) -> Value {
    let mut body: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // The host stamps the attempt itself.
    body.as_object_mut().unwrap().remove("attempt");
    body["idempotency_key"] = json!(key);
    body
}

async fn post(k: &Keel, token: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut req = common::http()
        .post(format!("{}/ingest", k.base()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text})),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_decides_retry_without_agent_once_per_key_and_refuses_bad_requests() {
    let src = "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n    max_body_bytes: 8192\n";
    let mut k = start(src, &[("KEEL_TEST_INGEST_TOKEN", TOKEN)]).await;
    k.wait_ready(200, Duration::from_secs(10)).await;

    let key = "deploy-2021-10-13/web-win-1/create/1";
    let (status, reply) = post(&k, Some(TOKEN), ingest_body(key).to_string()).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["action"], "retry_without_agent", "{reply}");
    assert_eq!(reply["attempt"], 1, "{reply}");
    assert_eq!(reply["attempt_stamped"], true, "{reply}");
    let event_id = format!("azure.arm:{key}");
    assert_eq!(reply["event_id"], event_id.as_str());
    let d = k
        .decision(
            "azure.vm-agent-missing.retry-without-agent",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(d["decision"]["action"], "retry_without_agent");
    assert_eq!(d["event_id"], event_id.as_str());
    let id = d["decision_id"].as_str().unwrap().to_string();
    k.wait_line("the note step", Duration::from_secs(5), |l| {
        l["decision_id"] == id.as_str() && l["step"] == "note"
    })
    .await;

    // The same key again: accepted once.
    let (status, reply) = post(&k, Some(TOKEN), ingest_body(key).to_string()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "duplicate", "{reply}");
    assert_eq!(reply["event_id"], event_id.as_str());

    // The retry failed too (a new key for the same VM and operation): the host counts it as
    // attempt 2, and the VM is not retried without the agent again.
    let (status, reply) = post(
        &k,
        Some(TOKEN),
        ingest_body("deploy-2021-10-13/web-win-1/create/2").to_string(),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["attempt"], 2, "{reply}");
    // Not retried again: a human has to look (azure.vm-agent-missing.retry-failed pages).
    assert_eq!(reply["action"], "none", "{reply}");
    let second_id = reply["event_id"].as_str().unwrap().to_string();
    let d2 = k
        .wait_line("the second decision", Duration::from_secs(5), |l| {
            l["event_id"] == second_id.as_str() && l.get("decision").is_some()
        })
        .await;
    assert_eq!(
        d2["decision"]["escalations"][0]["policy"], "azure.vm-agent-missing.retry-failed",
        "{d2}"
    );

    // Refusals: the token first, then the size, then the body.
    let (status, _) = post(
        &k,
        Some("wrong-token-0123456789abcdef"),
        ingest_body("x").to_string(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(&k, None, ingest_body("x").to_string()).await;
    assert_eq!(status, 401);
    let mut big = ingest_body("big");
    big["request"] = json!({"padding": "x".repeat(10_000)});
    let (status, _) = post(&k, Some("wrong-token-0123456789abcdef"), big.to_string()).await;
    assert_eq!(status, 401);
    let (status, reply) = post(&k, Some(TOKEN), big.to_string()).await;
    assert_eq!(status, 413, "{reply}");
    let (status, reply) = post(
        &k,
        Some(TOKEN),
        r#"{"idempotency_key": "bad-1", "operation": "create", "error": 42}"#,
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("error"),
        "{reply}"
    );
    let (status, reply) = post(&k, Some(TOKEN), "{\"idempotency_key\": \"bad-2\",").await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("JSON"), "{reply}");
    let mut no_key = ingest_body("k");
    no_key.as_object_mut().unwrap().remove("idempotency_key");
    let (status, reply) = post(&k, Some(TOKEN), no_key.to_string()).await;
    assert_eq!(status, 400, "{reply}");
    // The reply says what the body holds (no pointer to a document the client cannot read).
    assert_eq!(
        reply["error"],
        "`idempotency_key`: required (the ingest body: {idempotency_key, resource, operation, attempt?, request?, error})",
        "{reply}"
    );

    let m = k.metrics().await;
    assert_eq!(
        metric(&m, "keel_ingest_requests_total{status=\"202\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_ingest_requests_total{status=\"200\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_ingest_requests_total{status=\"401\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_ingest_requests_total{status=\"413\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_ingest_requests_total{status=\"400\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "keel_source_errors_total{source=\"ingest\"}"),
        Some(7.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "keel_events_total{kind=\"operation_failure\",source=\"azure.arm\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "keel_source_last_success_timestamp_seconds{source=\"ingest\"}"
        )
        .is_some(),
        "{m}"
    );
    assert_eq!(k.readyz().await.0, 200);
    // Every body was answered, and a decision is logged before its answer: stop the host (its
    // whole output is then read), then count.
    k.kill();
    let lines = k.json_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event_id"] == event_id.as_str())
            .count(),
        1,
        "one decision for the key"
    );
    assert!(!lines.iter().any(|l| l["event_id"] == "azure.arm:bad-1"));
}

/// `keel run` with a configuration that must be refused before anything starts.
fn refused(dir: &Path, sources: &str, listen: &str, env: &[(&str, &str)]) -> String {
    let cfg = dir.join("keel.yaml");
    let body = config(dir, sources).replace("listen: 127.0.0.1:0", &format!("listen: {listen}"));
    std::fs::write(&cfg, body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("KEEL_TEST_UNSET_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

#[test]
fn sources_configuration_is_validated_with_positions() {
    let d = tempfile::tempdir().unwrap();
    // Line 6 is `sources:`, so the sources start on line 7.
    let err = refused(
        d.path(),
        "  ingest:\n    token_env: KEEL_TEST_UNSET_TOKEN\n",
        "127.0.0.1:0",
        &[],
    );
    assert!(
        err.contains(
            "keel.yaml:8:16: error: the environment variable `KEEL_TEST_UNSET_TOKEN` is not set"
        ),
        "{err}"
    );
    let err = refused(
        d.path(),
        "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n",
        "0.0.0.0:0",
        &[("KEEL_TEST_INGEST_TOKEN", TOKEN)],
    );
    assert!(
        err.contains("keel.yaml:3:9: error: `listen` is 0.0.0.0:0, not a loopback address"),
        "{err}"
    );
    let err = refused(
        d.path(),
        "  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\n    max_body_byte: 10\n  aws_imd: {}\n  gcp_metadata:\n    url: ftp://x\n    wait_timeout: 500ms\n",
        "127.0.0.1:0",
        &[("KEEL_TEST_INGEST_TOKEN", "short")],
    );
    for want in [
        "keel.yaml:8:16: error: the environment variable `KEEL_TEST_INGEST_TOKEN` holds a token shorter than 16 characters",
        "keel.yaml:9:5: error: unknown key `max_body_byte` (did you mean `max_body_bytes`?)",
        "keel.yaml:10:3: error: unknown key `aws_imd` (did you mean `aws_imds`?)",
        "keel.yaml:12:10: error: expected an http:// or https:// URL",
        "keel.yaml:13:19: error: the metadata server counts `timeout_sec` in whole seconds",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    let err = refused(
        d.path(),
        "  aws_imds:\n    token_tll: 60s\n    interval: 0s\n",
        "127.0.0.1:0",
        &[],
    );
    for want in [
        "keel.yaml:8:5: error: unknown key `token_tll` (did you mean `token_ttl`?)",
        "keel.yaml:9:15: error: must be longer than zero",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}
