//! Whole scenarios against the real `keel run` binary and a loopback Scheduled Events stub
//! (incarnations, Started, cancellation, StartRequests), scaled down where the platform's own
//! durations would make a test slow:
//! - a platform Reboot drained, then acknowledged, then Started and completed;
//! - a cancellation while the drain runs: the approval is skipped, the runbook is `canceled`;
//! - a Spot Preempt with 30 seconds' notice: drained and approved well before NotBefore;
//! - a drain that misses its deadline (NotBefore three seconds ahead, a step that hangs): the
//!   step is stopped, nothing is approved, the runbook fails and escalates;
//! - two drains with `limits.concurrent_drains: 1`: the second waits for the first;
//! - a non-idempotent step that times out runs once and escalates once; one is retried only
//!   when it certainly did not start;
//! - a second host on the same state refuses to start, naming the first; a killed host frees it.
//!
//! The other scenarios of the suite live beside the code they exercise: a webhook that
//! succeeds on the third try (`outbox.rs`), an IMDS that answers 500 for a while
//! (`sources.rs`), `kill -9` at every step boundary (`crash.rs`), dry run (`dry_run.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Keel, Scenario, EVENT_ID, VM};
use serde_json::{json, Value};

/// IMDS's NotBefore format, `secs` from now.
fn not_before_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Every step line of the log: (step, outcome).
fn steps(k: &Keel) -> Vec<(String, String)> {
    k.json_lines()
        .iter()
        .filter(|l| l.get("step").is_some() && l.get("outcome").is_some())
        .map(|l| {
            (
                l["step"].as_str().unwrap_or("").to_string(),
                l["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn wait_for(what: &str, within: Duration, k: &mut Keel, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if let Ok(Some(status)) = k.child.try_wait() {
            panic!("keel exited with {status} before {what}\n{}", k.dump());
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {within:?}\n{}",
            k.dump()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_is_drained_then_acknowledged_then_completes() {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done"
    );
    assert_eq!(sc.approvals(), [EVENT_ID], "approved exactly once");
    assert_eq!(sc.exec_runs().len(), 1, "drained exactly once");
    // The stub turns the event Started, then removes it: the host sees it completed and
    // does nothing more (the VM was drained for it within the hour).
    wait_for(
        "the completed event",
        Duration::from_secs(30),
        &mut k,
        || sc.statuses() == ["scheduled", "started", "completed"],
    )
    .await;
    // Every decision that followed (Started, then gone) was recorded before the completion,
    // and any runbook of theirs after it: stop the host, then count.
    k.kill();
    assert_eq!(
        sc.drain_runbooks(),
        ["done"],
        "one drain, no second one for Started"
    );
    assert_eq!(sc.approvals(), [EVENT_ID]);
    assert_eq!(sc.exec_runs().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancellation_during_the_drain_skips_the_approval() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let marker = sc.dir.path().join("draining");
    let release = sc.dir.path().join("release");
    // The drain's first step holds until the test lets it go.
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: cordon
      exec: ["/bin/sh", "-c", "touch \"$0\"; while [ ! -e \"$1\" ]; do sleep 0.05; done", "{}", "{}"]
      timeout: 60s
      retries: 0
    - name: approve
      azure_ack: {{}}
"#,
            marker.display(),
            release.display()
        ),
        "",
    );
    let mut k = sc.keel(&[], &[]);
    let m = marker.clone();
    wait_for(
        "the drain to start",
        Duration::from_secs(30),
        &mut k,
        || m.exists(),
    )
    .await;
    // The platform withdraws the event: gone from the next document, incarnation + 1, nothing
    // approved, NotBefore still ahead.
    sc.change_document(|evs| evs.clear());
    wait_for("the cancellation", Duration::from_secs(30), &mut k, || {
        sc.statuses().len() == 2
    })
    .await;
    std::fs::write(&release, b"").unwrap();
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "canceled"
    );
    assert!(
        sc.approvals().is_empty(),
        "a canceled event is never approved"
    );
    assert_eq!(sc.statuses(), ["scheduled", "canceled"]);
    let lines = k.json_lines();
    assert_eq!(
        steps(&k),
        [
            ("cordon".to_string(), "ok".to_string()),
            (
                "approve".to_string(),
                "skipped: the event was canceled".to_string()
            )
        ]
    );
    assert!(lines.iter().any(|l| l.get("canceled").is_some()));
}

fn preempt(not_before: &str) -> Value {
    json!({
        "EventId": EVENT_ID, "EventStatus": "Scheduled", "EventType": "Preempt",
        "ResourceType": "VirtualMachine", "Resources": [VM], "NotBefore": not_before,
        "Description": "", "EventSource": "Platform", "DurationInSeconds": -1,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preempt_with_30_seconds_notice_is_drained_and_approved_before_not_before() {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    let not_before = chrono::Utc::now() + chrono::Duration::seconds(30);
    sc.change_document(|evs| {
        *evs = vec![preempt(
            &not_before.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        )]
    });
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done"
    );
    assert!(
        chrono::Utc::now() < not_before,
        "the runbook finished before NotBefore"
    );
    assert_eq!(sc.approvals(), [EVENT_ID]);
    let lines = k.json_lines();
    let d = lines
        .iter()
        .find(|l| l["decision"]["action"] == "drain")
        .unwrap();
    assert_eq!(d["decision"]["policy"], "azure.maintenance.evict.drain-now");
    assert_eq!(sc.exec_runs().len(), 1);
}

/// Approving an event starts it for every VM it lists: one that names another VM too is
/// drained here but never approved (its NotBefore runs out for the other VM's sake).
#[tokio::test(flavor = "multi_thread")]
async fn a_preempt_that_names_another_vm_too_is_drained_and_never_approved() {
    let sc = Scenario::new(true, &common::not_before_in_15_minutes()).await;
    sc.change_document(|evs| {
        let mut p = preempt(&common::not_before_in_15_minutes());
        p["Resources"] = json!(["other-vm", VM]);
        *evs = vec![p]
    });
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "done"
    );
    assert!(sc.approvals().is_empty(), "{:?}", sc.approvals());
    let st = steps(&k);
    assert!(
        st.iter().any(|(name, outcome)| name == "approve"
            && outcome.starts_with("skipped: the event lists VMs other than this one")),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_misses_its_deadline_is_stopped_and_escalates() {
    let sc = Scenario::new(true, &not_before_in(3)).await;
    sc.change_document(|evs| *evs = vec![preempt(&not_before_in(3))]);
    sc.set_runbooks(
        r#"runbooks:
  drain:
    - name: cordon
      exec: ["/bin/sleep", "300"]
      timeout: 600s
      retries: 0
    - name: approve
      azure_ack: {}
"#,
        "",
    );
    let started = Instant::now();
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "failed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the hanging step was stopped at the deadline, not at its own timeout"
    );
    assert!(sc.approvals().is_empty());
    let st = steps(&k);
    assert_eq!(st.len(), 1, "{st:?}");
    assert!(
        st[0]
            .1
            .starts_with("failed: the runbook missed its deadline"),
        "{st:?}"
    );
    // A missed deadline escalates (logged right after the runbook's end is recorded).
    k.wait_line("the escalation", Duration::from_secs(20), |l| {
        l.get("escalation").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drains_beyond_the_limit_wait_for_a_slot() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let log = sc.dir.path().join("drains.log");
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: cordon
      exec: ["/bin/sh", "-c", "echo start >> \"$0\"; sleep 1; echo end >> \"$0\"", "{}"]
      timeout: 10s
      retries: 0
"#,
            log.display()
        ),
        "limits: { concurrent_drains: 1 }",
    );
    let second = "0D7B3D39-6A5B-4F0E-8E3A-C6F7C1B2D002";
    // A second notice for this VM while the first is drained: a Spot eviction (a second
    // Reboot would be deferred by `azure.maintenance.pending-again.defer`).
    sc.change_document(|evs| {
        let mut other = preempt(&common::not_before_in_15_minutes());
        other["EventId"] = json!(second);
        evs.push(other);
    });
    let mut k = sc.keel(&[], &[]);
    let l = log.clone();
    wait_for("two drains", Duration::from_secs(60), &mut k, || {
        std::fs::read_to_string(&l).is_ok_and(|s| s.lines().count() == 4)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["start", "end", "start", "end"],
        "one drain at a time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_policy_decides_in_the_host_with_its_compile_cache_beside_the_state() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    // The maintenance-window example plugin (built into wasm-plugins/dist/ by
    // `cargo run -p xtask -- build-plugins`, which test.sh runs first).
    let text = std::fs::read_to_string(&sc.config).unwrap();
    let rest = &text[text.find('\n').unwrap()..];
    let policies = common::root().join("wasm-plugins/examples/maintenance-window");
    std::fs::write(
        &sc.config,
        format!("policies: {}{rest}", policies.display()),
    )
    .unwrap();
    let mut k = sc.keel(&[], &[]);
    k.wait_line("the plugin's decision", Duration::from_secs(60), |l| {
        l["decision"]["policy"] == "team.maintenance-window"
    })
    .await;
    let d = k
        .json_lines()
        .into_iter()
        .find(|l| l["decision"]["policy"] == "team.maintenance-window")
        .unwrap();
    // Inside the Tokyo window it drains; outside, it defers to the window's next opening.
    let action = d["decision"]["action"].as_str().unwrap().to_string();
    assert!(["drain", "defer"].contains(&action.as_str()), "{d}");
    assert_eq!(d["decision"]["errors"], json!([]), "{d}");
    let cache = sc.state.parent().unwrap().join("plugin-cache");
    let entries = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert!(entries >= 1, "no compiled component in {}", cache.display());
}

/// Stops the host once its decision log has an escalation line: a failed runbook's state is
/// recorded first and its escalation logged right after, and a loaded machine can stop
/// between the two (then the line is missing from a host killed at once).
async fn stop_after_escalation(k: &mut Keel) {
    k.wait_line("the runbook's escalation", Duration::from_secs(20), |l| {
        l.get("escalation").is_some()
    })
    .await;
    k.kill();
}

/// The escalation lines of the decision log.
fn escalations(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l.get("escalation").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_idempotent_step_that_times_out_runs_once_and_escalates_once() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let count = sc.dir.path().join("cordon.runs");
    // Its effect (a line in the file) happens at once; then it hangs past its timeout. Its
    // `retries` must not repeat it: the effect may have happened.
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: cordon
      exec: ["/bin/sh", "-c", "echo run >> \"$0\"; sleep 30", "{}"]
      timeout: 500ms
      retries: 3
      backoff: 50ms
      idempotent: false
    - name: approve
      azure_ack: {{}}
"#,
            count.display()
        ),
        "",
    );
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "failed"
    );
    // The runbook's end is written after its last attempt: stop the host, then count.
    stop_after_escalation(&mut k).await;
    let runs = std::fs::read_to_string(&count).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "ran {runs:?}\n{}", k.dump());
    let st = steps(&k);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].0, "cordon");
    assert_eq!(
        st[0].1,
        "in_doubt_escalated: timed out after 500ms; the step is not idempotent, so it is not retried"
    );
    let lines = k.json_lines();
    let attempt = lines
        .iter()
        .find(|l| l["step"] == "cordon")
        .map(|l| l["attempt"].clone());
    assert_eq!(attempt, Some(json!(1)));
    let esc = escalations(&lines);
    assert_eq!(esc.len(), 1, "{esc:?}");
    assert_eq!(
        esc[0]["escalation"]["reason"],
        format!(
            "runbook `drain` failed for event azure.scheduled_events:{}/{VM}",
            EVENT_ID.to_lowercase()
        )
    );
    assert!(sc.approvals().is_empty(), "nothing after a failed step");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_idempotent_step_is_retried_only_when_it_certainly_did_not_start() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let count = sc.dir.path().join("cordon.runs");
    let missing = sc.dir.path().join("no-such-program");
    // `probe` cannot be started (no effect possible): its retries apply. `cordon` starts and
    // fails with an exit code: it ran, so it is not retried.
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: probe
      exec: ["{}"]
      retries: 2
      backoff: 50ms
    - name: cordon
      exec: ["/bin/sh", "-c", "echo run >> \"$0\"; exit 1", "{}"]
      retries: 2
      backoff: 50ms
"#,
            missing.display(),
            count.display()
        ),
        "",
    );
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "failed"
    );
    stop_after_escalation(&mut k).await;
    let lines = k.json_lines();
    let probe: Vec<&Value> = lines.iter().filter(|l| l["step"] == "probe").collect();
    assert_eq!(probe.len(), 1, "{probe:?}");
    assert_eq!(probe[0]["attempt"], 3, "{probe:?}");
    assert!(
        probe[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("failed: cannot run ")),
        "{probe:?}"
    );
    // The first step failed: the runbook stopped there.
    assert_eq!(std::fs::read_to_string(&count).ok(), None);
    assert_eq!(escalations(&lines).len(), 1);

    // Now only `cordon`, which runs and exits 1.
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    sc.set_runbooks(
        &format!(
            r#"runbooks:
  drain:
    - name: cordon
      exec: ["/bin/sh", "-c", "echo run >> \"$0\"; exit 1", "{}"]
      retries: 2
      backoff: 50ms
"#,
            count.display()
        ),
        "",
    );
    let mut k = sc.keel(&[], &[]);
    assert_eq!(
        sc.wait_runbook_finished(&mut k, Duration::from_secs(60))
            .await,
        "failed"
    );
    stop_after_escalation(&mut k).await;
    assert_eq!(
        std::fs::read_to_string(&count).unwrap_or_default(),
        "run\n",
        "an exec that ran and failed is not run again"
    );
    let lines = k.json_lines();
    let cordon: Vec<&Value> = lines.iter().filter(|l| l["step"] == "cordon").collect();
    assert_eq!(cordon.len(), 1, "{cordon:?}");
    assert_eq!(cordon[0]["attempt"], 1);
    assert_eq!(escalations(&lines).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_on_the_same_state_refuses_to_start_and_a_killed_one_frees_it() {
    let sc = Scenario::new(false, &common::not_before_in_15_minutes()).await;
    let mut first = sc.keel(&[], &[]);
    first.wait_listen(Duration::from_secs(60)).await;
    let pid = first.child.id();

    let mut second = sc.keel(&[], &[]);
    let status = second.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(4), "{status}\n{}", second.dump());
    let err = second.stderr();
    assert!(
        err.contains(&format!("in use by another keel run (pid {pid} on ")),
        "{err}"
    );
    assert!(err.contains(", started 20"), "{err}");
    assert!(
        second.json_lines().is_empty(),
        "the second host did nothing: {}",
        second.dump()
    );
    // The first one is unaffected: it still drains.
    assert_eq!(
        sc.wait_runbook_finished(&mut first, Duration::from_secs(60))
            .await,
        "done"
    );

    // SIGKILL: no destructor runs; the lock goes with the process.
    first.kill();
    let mut third = sc.keel(&[], &[]);
    third.wait_listen(Duration::from_secs(60)).await;
    let lock = std::fs::read_to_string(sc.dir.path().join("state.db.lock")).unwrap();
    assert!(
        lock.starts_with(&format!("pid {} on ", third.child.id())),
        "{lock}"
    );
}
