//! The escalation outbox against a loopback webhook: retries with the same `Idempotency-Key`
//! until delivered, survival across a restart, and the PagerDuty Events v2 format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{not_before_in_15_minutes, Scenario};
use serde_json::Value;

/// A webhook that answers 500 to its first `fail_first` requests (or to all while `down`).
#[derive(Default)]
struct Hook {
    fail_first: usize,
    down: bool,
    /// Every request: its Idempotency-Key, its body, the status answered.
    got: Vec<(Option<String>, Value, u16)>,
}

type HookState = Arc<Mutex<Hook>>;

async fn hook(State(st): State<HookState>, h: HeaderMap, Json(body): Json<Value>) -> StatusCode {
    let key = h
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut s = st.lock().unwrap();
    let status = if s.down || s.got.len() < s.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::ACCEPTED
    };
    s.got.push((key, body, status.as_u16()));
    status
}

async fn serve_hook(st: HookState) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hook", post(hook)).with_state(st);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

const POLICY: &str = r#"version: 1
policies:
  - name: test.reboot.page
    description: Every announced Reboot is paged.
    on: [maintenance]
    when: event.maintenance.type == "reboot" && event.maintenance.status == "scheduled"
    action: escalate
    reason: reboot announced
    params: { severity: critical }
"#;

/// Rewrites the scenario's configuration: a policy that pages every Reboot, and an
/// `escalate` runbook whose webhook is `hook_url` (with `http_extra` in its `http` map).
fn configure(sc: &Scenario, hook_url: &str, http_extra: &str) {
    let old = std::fs::read_to_string(&sc.config).unwrap();
    let se_url = old
        .lines()
        .find_map(|l| l.trim().strip_prefix("url: "))
        .unwrap()
        .to_string();
    let policies = sc.dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("page.yaml"), POLICY).unwrap();
    std::fs::write(
        &sc.config,
        format!(
            r#"policies: {policies}
state: {state}
listen: 127.0.0.1:0
self: {vm}
sources:
  azure_scheduled_events:
    url: {se_url}
    interval: 100ms
    timeout: 2s
    first_timeout: 5s
runbooks:
  escalate:
    - name: page
      http: {{ url: "{hook_url}"{http_extra} }}
      timeout: 2s
      backoff: 100ms
"#,
            policies = policies.display(),
            state = sc.state.display(),
            vm = common::VM,
        ),
    )
    .unwrap();
}

fn undelivered(sc: &Scenario) -> i64 {
    let c = rusqlite::Connection::open(&sc.state).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn is_delivered(l: &Value) -> bool {
    l["outbox"].is_string() && l["outcome"] == "delivered"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_twice_gets_the_escalation_on_the_third_try_with_one_key() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    let st: HookState = Arc::new(Mutex::new(Hook {
        fail_first: 2,
        ..Hook::default()
    }));
    configure(&sc, &serve_hook(st.clone()).await, "");
    let mut k = sc.keel(&[], &[]);
    k.wait_line("delivery", Duration::from_secs(20), is_delivered)
        .await;
    let got = st.lock().unwrap().got.clone();
    let statuses: Vec<u16> = got.iter().map(|g| g.2).collect();
    assert_eq!(statuses, [500, 500, 202], "{}", k.dump());
    let keys: Vec<&Option<String>> = got.iter().map(|g| &g.0).collect();
    assert!(keys[0].is_some());
    assert!(keys.iter().all(|x| *x == keys[0]), "{keys:?}");
    assert_eq!(got[2].1["kind"], "escalation");
    assert_eq!(got[2].1["policy"], "test.reboot.page");
    assert_eq!(got[2].1["severity"], "critical");
    assert_eq!(got[2].1["idempotency_key"].as_str(), keys[0].as_deref());
    let retries = k
        .json_lines()
        .iter()
        .filter(|l| l["outbox"].is_string() && l["outcome"] == "retry")
        .count();
    assert_eq!(retries, 2);
    assert_eq!(undelivered(&sc), 0);
    // Delivered (recorded before the line above), the entry is never sent again, and the
    // decision (`none`, with an escalation) has no runbook of its own: stop the host, then
    // count.
    k.kill();
    assert!(
        !k.json_lines().iter().any(|l| l.get("step").is_some()),
        "{}",
        k.dump()
    );
    assert_eq!(st.lock().unwrap().got.len(), 3, "{}", k.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_survives_a_restart_while_the_webhook_is_down() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    let st: HookState = Arc::new(Mutex::new(Hook {
        down: true,
        ..Hook::default()
    }));
    configure(&sc, &serve_hook(st.clone()).await, "");
    let mut k = sc.keel(&[], &[]);
    k.wait_line("a failed delivery", Duration::from_secs(20), |l| {
        l["outbox"].is_string() && l["outcome"] == "retry"
    })
    .await;
    k.kill();
    assert_eq!(undelivered(&sc), 1);
    let key = st.lock().unwrap().got[0].0.clone();
    st.lock().unwrap().down = false;
    let mut k = sc.keel(&[], &[]);
    k.wait_line("delivery", Duration::from_secs(20), is_delivered)
        .await;
    let got = st.lock().unwrap().got.clone();
    assert_eq!(got.last().unwrap().2, 202);
    assert!(got.iter().all(|g| g.0 == key), "{got:?}");
    assert_eq!(undelivered(&sc), 0);
    // Not decided again after the restart: one escalation only.
    let decided = k
        .json_lines()
        .iter()
        .filter(|l| l.get("decision").is_some())
        .count();
    assert_eq!(decided, 0, "{}", k.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_format_sends_events_v2() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    let st: HookState = Arc::default();
    configure(
        &sc,
        &serve_hook(st.clone()).await,
        ", format: pagerduty, routing_key_env: KEEL_TEST_PD_ROUTING_KEY",
    );
    let mut k = sc.keel(&[], &[("KEEL_TEST_PD_ROUTING_KEY", "R0UT1NGKEY")]);
    k.wait_line("delivery", Duration::from_secs(20), is_delivered)
        .await;
    let got = st.lock().unwrap().got.clone();
    assert_eq!(got.len(), 1);
    let b = &got[0].1;
    assert_eq!(b["routing_key"], "R0UT1NGKEY");
    assert_eq!(b["event_action"], "trigger");
    let dedup = b["dedup_key"].as_str().unwrap();
    assert_eq!(dedup.len(), 64, "the escalation's key: {b}");
    assert_eq!(b["payload"]["summary"], "reboot announced");
    assert_eq!(b["payload"]["source"], common::VM);
    assert_eq!(b["payload"]["severity"], "critical");
    assert_eq!(b["payload"]["custom_details"]["policy"], "test.reboot.page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_steps_are_validated_with_positions() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    configure(&sc, "http://127.0.0.1:9/hook", ", format: pagerdity");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config"])
        .arg(&sc.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // The configuration is invalid: nothing started (exit 3).
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("keel.yaml:14:")
            && err.contains("expected `generic` or `pagerduty` (did you mean `pagerduty`?)"),
        "{err}"
    );
    configure(
        &sc,
        "http://127.0.0.1:9/hook",
        ", format: pagerduty, routing_key_env: KEEL_TEST_UNSET_ROUTING_KEY",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--config"])
        .arg(&sc.config)
        .env_remove("KEEL_TEST_UNSET_ROUTING_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("keel.yaml:14:") && err.contains("`KEEL_TEST_UNSET_ROUTING_KEY` is not set"),
        "{err}"
    );
}
