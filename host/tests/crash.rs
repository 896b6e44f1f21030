//! The crash matrix: for every failpoint (`host/src/failpoint.rs`) and, for the `step.*` ones,
//! every step of the drain runbook (log, exec, http, azure_ack), run `keel run` against a
//! Scheduled Events stub announcing a Reboot, let the failpoint abort the process (like
//! `kill -9`), restart it on the same state without the failpoint, wait for the runbook to
//! finish, and count effects against the stubs:
//! - the non-idempotent `exec` never runs twice; left in doubt, it escalates
//!   (`in_doubt_escalated`) and the runbook stops there (no StartRequests);
//! - the idempotent `http` step and `azure_ack` run again only when the crash left them in
//!   doubt, and then with the same idempotency key (StartRequests for the same EventId: the
//!   service accepts repeats);
//! - nothing pending is lost: the runbook finishes after the restart, and the event is decided
//!   once.
//!
//! The same failpoints at every step of the `retry_without_agent` runbook (log, then `arm`),
//! fed through the ingest endpoint: the deployment tool's retry of its report after the crash is
//! decided only if the first decision was lost, and the ARM PUT runs again only when the crash
//! left it in doubt after its effect, with the same `x-ms-client-request-id`.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[allow(dead_code, unused_imports)]
#[path = "../src/failpoint.rs"]
mod failpoint;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{Scenario, EVENT_ID, STEPS};
use failpoint::FAILPOINTS;

/// One cell of the matrix: what should have happened, all runs counted.
struct Expect {
    exec_runs: usize,
    hook_requests: usize,
    approvals: usize,
    announce_logs: usize,
    runbook: &'static str,
    in_doubt_escalated: bool,
}

fn expect(point: &str, step: Option<&str>) -> Expect {
    let at = |s: &str| step == Some(s);
    let in_effect = point == failpoint::STEP_AFTER_EFFECT;
    let cordon_in_doubt = at("cordon") && point != failpoint::STEP_AFTER_OUTCOME;
    Expect {
        exec_runs: usize::from(!(at("cordon") && point == failpoint::STEP_BEFORE_EFFECT)),
        hook_requests: if cordon_in_doubt {
            0
        } else if at("notify") && in_effect {
            2
        } else {
            1
        },
        approvals: if cordon_in_doubt {
            0
        } else if at("approve") && in_effect {
            2
        } else {
            1
        },
        announce_logs: if at("announce") && in_effect { 2 } else { 1 },
        runbook: if cordon_in_doubt { "failed" } else { "done" },
        in_doubt_escalated: cordon_in_doubt,
    }
}

async fn cell(point: &str, step: Option<&str>) {
    let spec = match step {
        Some(s) => format!("{point}:{s}"),
        None => point.to_string(),
    };
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;

    // 1. Crash at the failpoint.
    let mut k = sc.keel(&[], &[("KEEL_FAILPOINT", &spec)]);
    let status = k.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        status.signal(),
        Some(6),
        "{spec}: keel did not abort ({status})\n{}",
        k.dump()
    );
    assert!(
        k.stderr().contains(&format!("failpoint {spec} fired")),
        "{spec}\n{}",
        k.dump()
    );
    let mut lines = k.json_lines();

    // 2. Restart on the same state, without the failpoint, until the runbook finished.
    let mut k = sc.keel(&[], &[]);
    let runbook = sc
        .wait_runbook_finished(&mut k, Duration::from_secs(60))
        .await;
    // Give the host time to see what followed (the event Started, then gone: decisions that
    // must not drain again) before counting.
    let want = expect(point, step);
    let settle = if want.approvals > 0 { 900 } else { 300 };
    tokio::time::sleep(Duration::from_millis(settle)).await;
    k.kill();
    lines.extend(k.json_lines());

    // 3. Count.
    let ctx = || format!("{spec}\n{}", k.dump());
    assert_eq!(runbook, want.runbook, "{}", ctx());
    assert_eq!(sc.drain_runbooks().len(), 1, "decided twice: {}", ctx());
    let rows = sc.step_rows();
    let key = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map(|r| r.1.clone())
            .unwrap_or_else(|| panic!("no `{name}` in the store: {rows:?}\n{}", ctx()))
    };
    let exec = sc.exec_runs();
    assert_eq!(exec.len(), want.exec_runs, "exec runs {exec:?}: {}", ctx());
    assert!(exec.iter().all(|k| *k == key("cordon")), "{exec:?}");
    let hook = sc.hook_keys();
    assert_eq!(
        hook.len(),
        want.hook_requests,
        "webhook {hook:?}: {}",
        ctx()
    );
    assert!(hook.iter().all(|k| *k == Some(key("notify"))), "{hook:?}");
    let approvals = sc.approvals();
    assert_eq!(
        approvals.len(),
        want.approvals,
        "StartRequests {approvals:?}: {}",
        ctx()
    );
    assert!(approvals.iter().all(|a| a == EVENT_ID), "{approvals:?}");
    let announced = lines.iter().filter(|l| l.get("log").is_some()).count();
    assert_eq!(announced, want.announce_logs, "{}", ctx());
    let escalated = lines
        .iter()
        .any(|l| l["step"] == "cordon" && l["outcome"] == "in_doubt_escalated");
    assert_eq!(escalated, want.in_doubt_escalated, "{}", ctx());
    if want.in_doubt_escalated {
        assert!(
            lines.iter().any(|l| l.get("escalation").is_some()),
            "no escalation: {}",
            ctx()
        );
        assert_eq!(
            rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["announce", "cordon"]
        );
    } else {
        // Every step finished ok, each under one key.
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, STEPS, "{}", ctx());
        assert!(
            rows.iter().all(|r| r.3.as_deref() == Some("ok")),
            "{rows:?}: {}",
            ctx()
        );
    }
    // A step the crash left in doubt was begun twice, under the same key; no other was.
    for (name, _, begun, _) in &rows {
        let in_doubt = step == Some(name.as_str()) && point != failpoint::STEP_AFTER_OUTCOME;
        assert_eq!(*begun, if in_doubt { 2 } else { 1 }, "`{name}`: {rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failpoint_at_every_step_of_the_drain_runbook_loses_nothing_and_repeats_nothing() {
    let t0 = Instant::now();
    let mut covered = BTreeSet::new();
    let mut cells = 0;
    for &point in FAILPOINTS {
        let steps: Vec<Option<&str>> = if point.starts_with("step.") {
            STEPS.iter().map(|s| Some(*s)).collect()
        } else {
            vec![None]
        };
        for step in steps {
            let t = Instant::now();
            cell(point, step).await;
            eprintln!("{point} {}: ok in {:?}", step.unwrap_or("-"), t.elapsed());
            cells += 1;
        }
        covered.insert(point);
    }
    assert_eq!(covered.len(), FAILPOINTS.len());
    assert_eq!(FAILPOINTS.len(), 5);
    assert_eq!(cells, 2 + 3 * STEPS.len());
    eprintln!("crash matrix: {cells} cells in {:?}", t0.elapsed());
}

// ------------------------------------------------------------------------------------------
// The `retry_without_agent` runbook (log, then `arm`), fed by the ingest endpoint: a deployment
// tool reports the 2021-10-13 failure with the create request; the runbook resubmits it to a
// loopback ARM stub with a token from a loopback managed-identity endpoint.

const ARM_STEPS: &[&str] = &["announce", "resubmit"];
const INGEST_TOKEN: &str = "keel-test-token-0123456789abcdef";

/// The `retry_without_agent` decisions' runbook states.
fn retry_runbooks(state: &std::path::Path) -> Vec<String> {
    let Ok(c) = rusqlite::Connection::open(state) else {
        return Vec::new();
    };
    let _ = c.busy_timeout(Duration::from_secs(5));
    let Ok(mut st) =
        c.prepare("SELECT runbook FROM decisions WHERE action = 'retry_without_agent'")
    else {
        return Vec::new();
    };
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Posts the body; `None` when the host died before answering.
async fn post(k: &common::Keel, body: &serde_json::Value) -> Option<u16> {
    let listen = k
        .json_lines()
        .into_iter()
        .find_map(|l| l["listen"].as_str().map(str::to_string))?;
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{listen}/ingest"))
        .bearer_auth(INGEST_TOKEN)
        .json(body)
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

async fn arm_cell(point: &str, step: Option<&str>) {
    let spec = match step {
        Some(s) => format!("{point}:{s}"),
        None => point.to_string(),
    };
    let (imds_url, _imds) = common::azure::imds_stub().await;
    let (arm_url, arm) = common::azure::arm_stub().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let config = dir.path().join("keel.yaml");
    std::fs::write(
        &config,
        format!(
            "policies: {}\nstate: {}\nlisten: 127.0.0.1:0\nazure_identity:\n  endpoint: {imds_url}\narm:\n  scopes: [\"/subscriptions/00000000-0000-0000-0000-000000000000\"]\nsources:\n  ingest:\n    token_env: KEEL_TEST_INGEST_TOKEN\nrunbooks:\n  retry_without_agent:\n    - name: announce\n      log: {{}}\n    - name: resubmit\n      arm:\n        endpoint: {arm_url}\n        poll_interval: 100ms\n      timeout: 10s\n      retries: 2\n      backoff: 100ms\n",
            common::root().join("host/tests/data/azure-policies").display(),
            state.display(),
        ),
    )
    .unwrap();
    let env = [
        ("KEEL_TEST_INGEST_TOKEN", INGEST_TOKEN),
        ("KEEL_FAILPOINT", spec.as_str()),
    ];
    let body = common::azure::ingest_body(
        "deploy/web-win-1/create/1",
        "web-win-1",
        Some(common::azure::create_request()),
    );

    // 1. Report the failure; crash at the failpoint.
    let mut k = common::Keel::start(&config, &[], &env);
    k.wait_line("the listen line", Duration::from_secs(60), |l| {
        l.get("listen").is_some()
    })
    .await;
    let first = post(&k, &body).await;
    let status = k.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.signal(), Some(6), "{spec}: no abort\n{}", k.dump());
    let mut lines = k.json_lines();

    // 2. Restart; the deployment tool, unsure, reports the same failure again (same key).
    let mut k = common::Keel::start(&config, &[], &env[..1]);
    k.wait_line("the listen line", Duration::from_secs(60), |l| {
        l.get("listen").is_some()
    })
    .await;
    let second = post(&k, &body).await;
    let lost = point == failpoint::DECISION_BEFORE_RECORD;
    assert_eq!(
        second,
        Some(if lost { 202 } else { 200 }),
        "{spec}: the retry is {} (first answer {first:?})\n{}",
        if lost {
            "the first decision"
        } else {
            "a duplicate"
        },
        k.dump()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while retry_runbooks(&state) != ["done"] {
        assert!(
            Instant::now() < deadline,
            "{spec}: runbook {:?}\n{}",
            retry_runbooks(&state),
            k.dump()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    k.kill();
    lines.extend(k.json_lines());

    // 3. Count: one decision; the PUT again only when the crash left it in doubt after its
    // effect, and then with the same client request id (ARM PUTs are idempotent).
    let puts: Vec<common::azure::Req> = arm
        .lock()
        .unwrap()
        .reqs
        .iter()
        .filter(|r| r.method == "PUT")
        .cloned()
        .collect();
    let resubmit_in_doubt = step == Some("resubmit") && point == failpoint::STEP_AFTER_EFFECT;
    assert_eq!(
        puts.len(),
        if resubmit_in_doubt { 2 } else { 1 },
        "{spec}: PUTs {puts:?}"
    );
    assert!(
        puts.iter()
            .all(|p| p.client_request_id == puts[0].client_request_id && p.body == puts[0].body),
        "{spec}: {puts:?}"
    );
    let announced = lines.iter().filter(|l| l.get("log").is_some()).count();
    let announce_in_doubt = step == Some("announce") && point == failpoint::STEP_AFTER_EFFECT;
    assert_eq!(announced, if announce_in_doubt { 2 } else { 1 }, "{spec}");
    assert_eq!(retry_runbooks(&state).len(), 1, "{spec}: decided twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failpoint_at_every_step_of_the_arm_runbook_loses_nothing_and_repeats_only_idempotent_puts(
) {
    let mut cells = 0;
    for &point in FAILPOINTS {
        let steps: Vec<Option<&str>> = if point.starts_with("step.") {
            ARM_STEPS.iter().map(|s| Some(*s)).collect()
        } else {
            vec![None]
        };
        for step in steps {
            let t = Instant::now();
            arm_cell(point, step).await;
            eprintln!(
                "arm {point} {}: ok in {:?}",
                step.unwrap_or("-"),
                t.elapsed()
            );
            cells += 1;
        }
    }
    assert_eq!(cells, 2 + 3 * ARM_STEPS.len());
}
