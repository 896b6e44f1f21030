//! `keel pause`, `keel resume` and `keel status` against the real binary, while `keel run`
//! runs on the same state: a Scheduled Event arriving under a pause is held (no effect), shown
//! by `keel status`, `/readyz` and the metrics, and runs on the resume; a pause of another
//! region holds nothing; a pause survives a restart; a held drain whose NotBefore passes
//! escalates; a runbook under way is not stopped by a pause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{metric, not_before_in_15_minutes, Keel, Scenario, EVENT_ID, VM};
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(30);

/// Runs a `keel` command (not `run`) on `config`; its exit code, stdout and stderr.
fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("USER", "ops-alice")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `keel status --json`, checked to exit 0.
fn status(config: &Path) -> Value {
    let (code, out, err) = cli(config, &["status", "--json"]);
    assert_eq!(code, 0, "keel status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The announced Reboot of this VM, Scheduled, NotBefore as given.
fn reboot(not_before: &str) -> Value {
    json!({
        "EventId": EVENT_ID, "EventStatus": "Scheduled", "EventType": "Reboot",
        "ResourceType": "VirtualMachine", "Resources": [VM], "NotBefore": not_before,
        "Description": "Host server is undergoing maintenance.",
        "EventSource": "Platform", "DurationInSeconds": -1,
    })
}

/// A scenario whose document announces nothing yet.
async fn quiet_scenario() -> Scenario {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    sc.change_document(Vec::clear);
    sc
}

fn is_held(l: &Value) -> bool {
    l["held"]["by"] == "pause"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_taken_while_keel_runs_holds_a_new_event_until_the_resume() {
    let sc = quiet_scenario().await;
    let mut k = sc.keel(&[], &[]);
    k.wait_listen(WITHIN).await;
    sc.wait_polls(&mut k, 2, WITHIN).await;

    // `keel run` holds the state lock: the CLI writes its pause all the same.
    let (code, out, err) = cli(&sc.config, &["pause", "--reason", "INC-42 freeze"]);
    assert_eq!(code, 0, "{out}{err}\n{}", k.dump());
    assert!(out.contains("paused all by ops-alice"), "{out}");
    let deadline = Instant::now() + WITHIN;
    loop {
        let (code, report) = k.readyz().await;
        if report["paused"] == true {
            assert_eq!(code, 200, "a paused host is still ready: {report}");
            assert_eq!(
                report["pauses"],
                json!([{"scope": "all", "reason": "INC-42 freeze"}])
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said paused: {report}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    sc.change_document(|evs| evs.push(reboot(&not_before_in_15_minutes())));
    let held = k.wait_line("the held line", WITHIN, is_held).await;
    assert_eq!(held["held"]["scope"], "all");
    assert_eq!(held["held"]["reason"], "INC-42 freeze");
    assert!(held["held"]["deadline"].is_string(), "{held}");
    // More polls: nothing the hold stopped happens later.
    sc.wait_polls(&mut k, 5, WITHIN).await;
    assert!(sc.exec_runs().is_empty(), "the cordon ran while paused");
    assert!(sc.approvals().is_empty(), "approved while paused");
    assert!(
        sc.step_rows().iter().all(|r| r.0 == "announce"),
        "{:?}",
        sc.step_rows()
    );
    assert_eq!(sc.drain_runbooks(), ["held"]);

    let m = k.metrics().await;
    assert_eq!(
        metric(&m, r#"keel_held_total{reason="pause"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, r#"keel_paused{kind="all"}"#), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, r#"keel_paused{kind="region"}"#),
        Some(0.0),
        "{m}"
    );

    let st = status(&sc.config);
    assert_eq!(st["pauses"][0]["scope"], "all");
    assert_eq!(st["pauses"][0]["by"], "ops-alice");
    assert_eq!(st["held"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["held"][0]["action"], "drain");
    assert_eq!(st["held"][0]["decision_id"], held["decision_id"]);
    let (_, text, _) = cli(&sc.config, &["status"]);
    assert!(text.contains("held: 1"), "{text}");
    assert!(text.contains("INC-42 freeze"), "{text}");

    let (code, out, _) = cli(&sc.config, &["resume"]);
    assert_eq!(code, 0, "{out}");
    k.wait_line("the release", WITHIN, |l| l["released"]["by"] == "pause")
        .await;
    k.wait_until("the cordon after the resume", WITHIN, || {
        sc.exec_runs().len() == 1
    })
    .await;
    k.wait_until("the approval after the resume", WITHIN, || {
        sc.approvals() == [EVENT_ID]
    })
    .await;
    let st = status(&sc.config);
    assert_eq!(st["pauses"], json!([]));
    assert_eq!(st["held"], json!([]));
    let (code, report) = k.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(report["paused"], false, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_survives_a_restart() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    // Paused before any host ran: the CLI creates the state.
    let (code, out, err) = cli(&sc.config, &["pause", "resource:test-vm"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut k = sc.keel(&[], &[]);
    let held = k.wait_line("the held line", WITHIN, is_held).await;
    assert_eq!(held["held"]["scope"], "resource:test-vm");
    k.kill();

    let mut k = sc.keel(&[], &[]);
    k.wait_listen(WITHIN).await;
    sc.wait_polls(&mut k, 5, WITHIN).await;
    let (_, report) = k.readyz().await;
    assert_eq!(report["pauses"][0]["scope"], "resource:test-vm", "{report}");
    assert!(
        sc.exec_runs().is_empty(),
        "the cordon ran after the restart"
    );
    assert_eq!(status(&sc.config)["held"].as_array().unwrap().len(), 1);

    let (code, _, _) = cli(&sc.config, &["resume", "resource:TEST-VM"]);
    assert_eq!(code, 0);
    k.wait_until("the cordon after the resume", WITHIN, || {
        sc.exec_runs().len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_drain_whose_not_before_passes_escalates_without_running() {
    let not_before = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let sc = Scenario::new(false, &not_before).await;
    let (code, _, _) = cli(&sc.config, &["pause", "--reason", "hold everything"]);
    assert_eq!(code, 0);
    let mut k = sc.keel(&[], &[]);
    let held = k.wait_line("the held line", WITHIN, is_held).await;
    let esc = k
        .wait_line("the escalation", WITHIN, |l| {
            l["escalation"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("paused past its deadline"))
        })
        .await;
    assert_eq!(esc["decision_id"], held["decision_id"]);
    assert_eq!(sc.drain_runbooks(), ["escalated"]);
    let st = status(&sc.config);
    assert_eq!(st["held"], json!([]), "{st}");
    // The escalation went to the outbox with the expiry: still waiting there, or (no
    // `escalate` runbook here) already delivered by the outbox loop, which polls on its own.
    let delivered = k
        .json_lines()
        .iter()
        .any(|l| l["decision_id"] == held["decision_id"] && l["outcome"] == "delivered");
    assert!(
        st["outbox"]["backlog"] == 1 || delivered,
        "the escalation is neither in the outbox nor delivered: {st}\n{}",
        k.dump()
    );
    // The resume comes too late: nothing runs.
    cli(&sc.config, &["resume"]);
    sc.wait_polls(&mut k, 5, WITHIN).await;
    assert!(sc.exec_runs().is_empty());
    assert!(sc.approvals().is_empty());
}

/// A configuration replaying one Event Grid Scheduled Event (a Reboot of this VM in
/// westeurope) with a counted `exec` drain; `keel run` stops once it is replayed.
fn replay_config(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let counter = dir.join("cordon.count");
    let event = dir.join("event.json");
    let nb = (chrono::Utc::now() + chrono::Duration::minutes(15))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let mut props = reboot(&nb);
    props["ScheduledEventApiVersion"] = json!("2020-07-01");
    let envelope = json!({
        "id": "e1", "eventType": "Microsoft.ResourceNotifications.MaintenanceResources.ScheduledEventEmitted",
        "subject": "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/test-vm",
        "eventTime": chrono::Utc::now().to_rfc3339(), "dataVersion": "3.0",
        "data": {"resourceInfo": {
            "id": "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/test-vm/providers/microsoft.maintenance/scheduledevents/e1",
            "name": "e1", "type": "microsoft.maintenance/scheduledEvents",
            "location": "westeurope", "properties": props,
        }},
    });
    std::fs::write(&event, format!("{envelope}\n")).unwrap();
    let config = dir.join("keel.yaml");
    std::fs::write(
        &config,
        format!(
            r#"policies: {policies}
state: {state}
listen: 127.0.0.1:0
self: {VM}
sources:
  files:
    - path: {event}
      normalizer: azure.scheduled_events
runbooks:
  drain:
    - name: cordon
      exec: [/bin/sh, -c, 'echo "$KEEL_IDEMPOTENCY_KEY" >> "$0"', {counter}]
      timeout: 5s
"#,
            policies = common::root().join("policies/standard").display(),
            state = dir.join("state.db").display(),
            event = event.display(),
            counter = counter.display(),
        ),
    )
    .unwrap();
    (config, counter)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_holds_only_the_events_of_its_region() {
    for (scope, held) in [("region:eastus", false), ("region:WestEurope", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (config, counter) = replay_config(dir.path());
        let (code, _, err) = cli(&config, &["pause", scope]);
        assert_eq!(code, 0, "{err}");
        let mut k = Keel::start(&config, &[], &[]);
        let st = k.wait_exit(WITHIN).await;
        assert!(st.success(), "{}", k.dump());
        let decided = k
            .json_lines()
            .into_iter()
            .any(|l| l["decision"]["action"] == "drain");
        assert!(decided, "no drain decided\n{}", k.dump());
        let runs = std::fs::read_to_string(&counter).unwrap_or_default();
        let lines = k.json_lines();
        if held {
            assert!(runs.is_empty(), "{scope}: the cordon ran");
            assert!(lines.iter().any(is_held), "{scope}: not held\n{}", k.dump());
            assert_eq!(status(&config)["held"][0]["scope"], "region:westeurope");
        } else {
            assert_eq!(
                runs.lines().count(),
                1,
                "{scope}: the cordon did not run\n{}",
                k.dump()
            );
            assert!(!lines.iter().any(is_held), "{scope}: held\n{}", k.dump());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runbook_under_way_finishes_under_a_pause_and_status_shows_it_in_flight() {
    let sc = Scenario::new(false, &not_before_in_15_minutes()).await;
    let gate = sc.dir.path().join("gate");
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: wait-for-gate
      exec: [/bin/sh, -c, 'while [ ! -e "$0" ]; do sleep 0.05; done', {gate}]
      timeout: 60s
    - name: cordon
      exec: [/bin/sh, -c, 'echo "$KEEL_IDEMPOTENCY_KEY" >> "$0"', {counter}]
      timeout: 5s
"#,
            gate = gate.display(),
            counter = sc.counter.display(),
        ),
        "",
    );
    let mut k = sc.keel(&[], &[]);
    k.wait_listen(WITHIN).await;
    let config = sc.config.clone();
    let mut st = Value::Null;
    k.wait_until("the runbook in flight", WITHIN, || {
        st = status(&config);
        st["in_flight"][0]["step"]["name"] == "wait-for-gate"
    })
    .await;
    assert_eq!(st["schema_version"].as_i64(), Some(10));
    for key in ["pauses", "held", "leases", "in_flight", "deferrals"] {
        assert!(st[key].is_array(), "{key}: {st}");
    }
    let f = &st["in_flight"][0];
    assert_eq!(f["action"], "drain");
    assert!(
        f["event_id"]
            .as_str()
            .unwrap()
            .contains(&EVENT_ID.to_lowercase()),
        "{st}"
    );
    assert!(
        f["since"].is_string() && f["step"]["started_at"].is_string(),
        "{st}"
    );
    assert_eq!(f["step"]["index"], 0);
    assert!(st["outbox"]["backlog"].is_i64(), "{st}");
    let (_, text, _) = cli(&sc.config, &["status"]);
    assert!(text.contains("runbooks in flight: 1"), "{text}");
    assert!(text.contains("`wait-for-gate`"), "{text}");

    let (code, _, _) = cli(&sc.config, &["pause"]);
    assert_eq!(code, 0);
    let deadline = Instant::now() + WITHIN;
    while k.readyz().await.1["paused"] != true {
        assert!(Instant::now() < deadline, "/readyz never said paused");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    std::fs::write(&gate, "").unwrap();
    assert_eq!(sc.wait_runbook_finished(&mut k, WITHIN).await, "done");
    assert_eq!(
        sc.exec_runs().len(),
        1,
        "the runbook under way was stopped by the pause"
    );
    assert!(!k.json_lines().iter().any(is_held));
    assert_eq!(status(&sc.config)["in_flight"], json!([]));
}

#[test]
fn help_has_examples_and_a_bad_scope_is_a_usage_error() {
    for cmd in ["pause", "resume", "status"] {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:") && text.contains(&format!("keel {cmd}")),
            "{text}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = replay_config(dir.path());
    let (code, _, err) = cli(&config, &["pause", "zone:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown scope kind `zone`"), "{err}");
    assert!(!dir.path().join("state.db").exists(), "nothing was written");
    // No state yet: status says so and exits 4.
    let (code, _, err) = cli(&config, &["status"]);
    assert_eq!(code, 4, "{err}");
}
