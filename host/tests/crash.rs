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
//!
//! A non-idempotent `exec` that times out, crashed at each of its boundaries: it runs at most
//! once (its `retries` notwithstanding) and the runbook escalates once.
//!
//! The approval, against a platform that drops an approved event from its very next document:
//! crashed before and after StartRequests, after its outcome, and in the middle of the batch
//! that decides the disappearance. After the restart that disappearance is `ended`, never
//! `canceled`, and StartRequests is not sent again once its outcome was recorded.
//!
//! Every cell counts only once the host is gone (or its runbook's end is recorded), so a late
//! duplicate cannot slip past the count.
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
    // Wait until the host has seen everything that follows before counting: an approved event
    // turns Started, then is gone (decisions that must not drain again, recorded before any
    // effect of theirs); a failed runbook logs its escalation. Then stop it: nothing more can
    // happen, and every effect is counted.
    let want = expect(point, step);
    if want.approvals > 0 {
        wait_gone(&sc, &mut k).await;
    }
    if want.in_doubt_escalated {
        k.wait_line("the escalation", Duration::from_secs(30), |l| {
            l.get("escalation").is_some()
        })
        .await;
    }
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

/// Waits until the store has recorded the announced event's disappearance (`completed` after
/// Started, `ended` when the Started document was missed, or a `canceled`, which the caller
/// then refuses).
async fn wait_gone(sc: &Scenario, k: &mut common::Keel) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = sc.statuses();
        if st
            .last()
            .is_some_and(|s| ["completed", "ended", "canceled"].contains(&s.as_str()))
        {
            return;
        }
        if let Ok(Some(status)) = k.child.try_wait() {
            panic!("keel exited with {status}: {st:?}\n{}", k.dump());
        }
        assert!(
            Instant::now() < deadline,
            "the event's disappearance was not recorded: {st:?}\n{}",
            k.dump()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
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

/// The idempotency key of the `resubmit` step, from the store.
fn resubmit_key(state: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(state).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let key: String = c
        .query_row("SELECT key FROM steps WHERE name = 'resubmit'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(key.len(), 32, "{key}");
    key
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
    // The runbook's end is written after its last step: stop the host, then count (nothing
    // can be sent any more).
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
    // Every PUT carries the resubmit step's idempotency key as its client request id, and the
    // same body.
    let key = resubmit_key(&state);
    let want_id = format!(
        "{}-{}-{}-{}-{}",
        &key[..8],
        &key[8..12],
        &key[12..16],
        &key[16..20],
        &key[20..32]
    );
    for p in &puts {
        assert_eq!(
            p.client_request_id.as_deref(),
            Some(want_id.as_str()),
            "{spec}: {puts:?}"
        );
        assert_eq!(p.body, puts[0].body, "{spec}: {puts:?}");
    }
    assert_eq!(
        puts[0].body["properties"]["hardwareProfile"],
        common::azure::create_request()["properties"]["hardwareProfile"],
        "{spec}: the resubmitted body is the reported request's: {puts:?}"
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

// ------------------------------------------------------------------------------------------
// A non-idempotent `exec` whose attempt times out (its effect, a line in the counter, already
// happened): crashed at each boundary of that step, then restarted, it has run at most once,
// is never retried (its `retries: 3` notwithstanding), and the runbook escalates once, through
// the `escalate` runbook's webhook.

async fn timeout_cell(point: &str) {
    let spec = format!("{point}:cordon");
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: cordon
      exec: ["/bin/sh", "-c", "echo \"$KEEL_IDEMPOTENCY_KEY\" >> \"$0\"; sleep 30", "{counter}"]
      timeout: 500ms
      retries: 3
      backoff: 50ms
      idempotent: false
    - name: approve
      azure_ack: {{}}
  escalate:
    - name: page
      http: {{ url: "{hook}" }}
      timeout: 5s
      retries: 2
      backoff: 100ms
"#,
            counter = sc.counter.display(),
            hook = sc.hook_url,
        ),
        "",
    );
    let mut k = sc.keel(&[], &[("KEEL_FAILPOINT", &spec)]);
    let status = k.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.signal(), Some(6), "{spec}: no abort\n{}", k.dump());
    let mut lines = k.json_lines();

    let mut k = sc.keel(&[], &[]);
    let runbook = sc
        .wait_runbook_finished(&mut k, Duration::from_secs(60))
        .await;
    // The escalation is delivered once the runbook failed; wait for it, then stop the host
    // and count.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sc.hook_keys().is_empty() {
        assert!(
            Instant::now() < deadline,
            "{spec}: no escalation delivered\n{}",
            k.dump()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    k.kill();
    lines.extend(k.json_lines());
    let ctx = || format!("{spec}\n{}", k.dump());

    assert_eq!(runbook, "failed", "{}", ctx());
    let rows = sc.step_rows();
    assert_eq!(rows.len(), 1, "{rows:?}: {}", ctx());
    let (name, key, begun, outcome) = &rows[0];
    assert_eq!(name, "cordon");
    // Crashed before its effect, it is in doubt and never runs; otherwise it ran once.
    let runs = sc.exec_runs();
    let want_runs = usize::from(point != failpoint::STEP_BEFORE_EFFECT);
    assert_eq!(runs.len(), want_runs, "exec runs {runs:?}: {}", ctx());
    assert!(runs.iter().all(|r| r == key), "{runs:?}");
    let after_outcome = point == failpoint::STEP_AFTER_OUTCOME;
    assert_eq!(*begun, if after_outcome { 1 } else { 2 }, "{rows:?}");
    let want_outcome = if point == failpoint::STEP_AFTER_EFFECT
        || point == failpoint::STEP_BEFORE_EFFECT
    {
        // Left without an outcome by the crash.
        "in_doubt_escalated"
    } else {
        "in_doubt_escalated: timed out after 500ms; the step is not idempotent, so it is not retried"
    };
    assert_eq!(outcome.as_deref(), Some(want_outcome), "{}", ctx());
    let hook = sc.hook_keys();
    assert_eq!(hook.len(), 1, "escalations delivered {hook:?}: {}", ctx());
    assert!(hook[0].is_some(), "{hook:?}");
    let escalated = lines
        .iter()
        .filter(|l| l.get("escalation").is_some())
        .count();
    assert_eq!(escalated, 1, "{}", ctx());
    assert!(sc.approvals().is_empty(), "{}", ctx());
    assert_eq!(sc.drain_runbooks().len(), 1, "decided twice: {}", ctx());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_idempotent_step_that_timed_out_never_runs_again_at_any_crash_point() {
    let points = [
        failpoint::STEP_BEFORE_EFFECT,
        failpoint::STEP_AFTER_EFFECT,
        failpoint::STEP_AFTER_OUTCOME,
    ];
    for point in points {
        let t = Instant::now();
        timeout_cell(point).await;
        eprintln!("timeout {point}: ok in {:?}", t.elapsed());
    }
}

// ------------------------------------------------------------------------------------------
// The approval: IMDS drops an approved event from its very next document (incarnation + 1,
// NotBefore still ahead, the Started phase never seen). Only the approval tells that
// disappearance from a cancellation, so it must survive a crash around the StartRequests and
// one in the middle of the batch that decides the disappearance (`decision.before_record#2`:
// the second decision, after the drain's).

/// `in_doubt`: the crash came after StartRequests and before its outcome was recorded.
async fn approval_cell(spec: &str, in_doubt: bool) {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    sc.vanish_on_approval();
    let mut k = sc.keel(&[], &[("KEEL_FAILPOINT", spec)]);
    let status = k.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.signal(), Some(6), "{spec}: no abort\n{}", k.dump());
    let point = spec.split('#').next().unwrap_or(spec);
    assert!(
        k.stderr().contains(&format!("failpoint {point} fired")),
        "{spec}\n{}",
        k.dump()
    );

    let mut k = sc.keel(&[], &[]);
    let runbook = sc
        .wait_runbook_finished(&mut k, Duration::from_secs(60))
        .await;
    wait_gone(&sc, &mut k).await;
    k.kill();
    let ctx = || format!("{spec}\n{}", k.dump());

    // The disappearance is recorded once, and not as a cancellation.
    assert_eq!(sc.statuses(), ["scheduled", "ended"], "{}", ctx());
    let approvals = sc.approvals();
    assert!(approvals.iter().all(|a| a == EVENT_ID), "{approvals:?}");
    assert_eq!(sc.drain_runbooks(), [runbook.as_str()], "{}", ctx());
    assert_eq!(sc.exec_runs().len(), 1, "{}", ctx());
    let rows = sc.step_rows();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, STEPS, "{}", ctx());
    let outcomes: Vec<Option<&str>> = rows.iter().map(|r| r.3.as_deref()).collect();
    // Recorded: StartRequests once, never again.
    let mut want = (1, "done", Some("ok"));
    if in_doubt {
        // In doubt, the idempotent ack runs again (the same EventId) unless the restarted host
        // has already seen the event gone, which ends the runbook (nothing left to approve).
        want = if runbook == "done" {
            (2, "done", Some("ok"))
        } else {
            (1, "canceled", Some("skipped: the event was canceled"))
        };
    }
    assert_eq!(
        (approvals.len(), runbook.as_str(), outcomes[3]),
        want,
        "StartRequests {approvals:?}: {}",
        ctx()
    );
    assert_eq!(outcomes[..3], [Some("ok"); 3], "{rows:?}: {}", ctx());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_survives_a_crash_around_it_and_in_the_middle_of_a_batch() {
    let cells = [
        // Before StartRequests: sent once, after the restart.
        (format!("{}:approve", failpoint::STEP_BEFORE_EFFECT), false),
        // Sent, outcome unknown: in doubt.
        (format!("{}:approve", failpoint::STEP_AFTER_EFFECT), true),
        // Sent and recorded: never again.
        (format!("{}:approve", failpoint::STEP_AFTER_OUTCOME), false),
        // The batch that decides the disappearance dies before it commits.
        (format!("{}#2", failpoint::DECISION_BEFORE_RECORD), false),
    ];
    for (spec, in_doubt) in cells {
        let t = Instant::now();
        approval_cell(&spec, in_doubt).await;
        eprintln!("approval {spec}: ok in {:?}", t.elapsed());
    }
}
