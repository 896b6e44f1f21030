//! Issue 13, "Concurrency budgets, as leases", through the real `keel run` binary: a drain
//! whose budget is full is held with the reason (budget, key, in flight, holder, expiry), shown
//! by `keel status` and `keel eval --explain --config`, and runs when the first runbook has
//! ended and its slot has baked; one that cannot get a slot before its deadline escalates;
//! and when a holder is killed mid-runbook, the restarted host (a new holder) takes the
//! resumed runbook's slot over past the dead holder's TTL, does not run its non-idempotent
//! step again, and gives the slot to the waiter only once that runbook has ended. (A holder that never comes back
//! frees its slot when its lease expires: `run::budget::tests`, on a virtual clock.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{not_before_in_15_minutes, root, Keel, Scenario};
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(30);

/// `keel status --json` on `config`.
fn status(config: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `keel status` (text) on `config`.
fn status_text(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["status", "--config"])
        .arg(config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn time_of(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("no time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// A scenario where one Reboot names `vms` (each gets its own event), with a policy that
/// drains every VM named (this host standing for each of them), a budget of one VM at a time
/// (`bake`, `ttl`), and a
/// drain runbook whose one `exec` step (four drains may run at once on the host: only the
/// budget holds them) logs `start NAME`, waits for the file `gate.NAME`,
/// then logs `done NAME`.
async fn scenario(vms: &[&str], not_before: &str, bake: &str, ttl: &str) -> Scenario {
    scenario_with(vms, not_before, bake, ttl, ONE_STEP).await
}

/// The drain runbook of [`scenario`]: one non-idempotent step.
const ONE_STEP: &str = r#"    - name: drain-one
      exec: [/bin/sh, -c, 'echo "start $KEEL_RESOURCE_NAME" >> "$1"; while [ ! -e "$0.$KEEL_RESOURCE_NAME" ]; do sleep 0.05; done; echo "done $KEEL_RESOURCE_NAME" >> "$1"', GATE, COUNTER]
      timeout: 60s
"#;

/// Two steps: `mark` (not idempotent) logs `start NAME`; `wait` (idempotent) waits for the
/// gate file, then logs `done NAME`.
const TWO_STEPS: &str = r#"    - name: mark
      exec: [/bin/sh, -c, 'echo "start $KEEL_RESOURCE_NAME" >> "$0"', COUNTER]
      timeout: 5s
    - name: wait
      exec: [/bin/sh, -c, 'while [ ! -e "$0.$KEEL_RESOURCE_NAME" ]; do sleep 0.05; done; echo "done $KEEL_RESOURCE_NAME" >> "$1"', GATE, COUNTER]
      timeout: 60s
      idempotent: true
"#;

async fn scenario_with(
    vms: &[&str],
    not_before: &str,
    bake: &str,
    ttl: &str,
    steps: &str,
) -> Scenario {
    let sc = Scenario::new(false, not_before).await;
    sc.change_document(|evs| {
        evs[0]["Resources"] = json!(vms);
    });
    let policies = root().join("host/tests/data/drain-every-vm");
    let text = std::fs::read_to_string(&sc.config).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("policies:") {
            Some(_) => format!("policies: {}\n", policies.display()),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&sc.config, text).unwrap();
    let gate = sc.dir.path().join("gate");
    sc.set_runbooks(
        &format!(
            "runbooks:\n  drain:\n{}",
            steps
                .replace("GATE", &gate.display().to_string())
                .replace("COUNTER", &sc.counter.display().to_string())
        ),
        &format!(
            r#"limits:
  concurrent_drains: 4
budgets:
  - name: one-at-a-time
    key: '"web"'
    per: event.resource.name
    max_in_flight: 1
    bake: {bake}
    lease_ttl: {ttl}
"#
        ),
    );
    sc
}

fn open_gate(sc: &Scenario, vm: &str) {
    std::fs::write(sc.dir.path().join(format!("gate.{vm}")), "").unwrap();
}

fn is_budget_hold(l: &Value) -> bool {
    l["held"]["by"] == "budget"
}

/// The VM the first `start` line names, once one has.
async fn first_started(sc: &Scenario, k: &mut Keel) -> String {
    let mut who = String::new();
    k.wait_until("a drain started", WITHIN, || {
        who = sc
            .exec_runs()
            .first()
            .and_then(|l| l.strip_prefix("start ").map(str::to_string))
            .unwrap_or_default();
        !who.is_empty()
    })
    .await;
    who
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_budget_holds_the_second_drain_with_its_reason_until_the_first_ends_and_bakes() {
    let sc = scenario(&["vm-a", "vm-b"], &not_before_in_15_minutes(), "1s", "30s").await;
    let mut k = sc.keel(&[], &[]);
    let held = k.wait_line("the budget hold", WITHIN, is_budget_hold).await;
    let reason = held["held"]["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("held: budget one-at-a-time/web full, 1/1 in flight, holder test-vm#"),
        "{reason}"
    );
    assert!(reason.contains(" until 20"), "the lease's expiry: {reason}");
    assert_eq!(held["held"]["scope"], "one-at-a-time/web");
    assert!(
        held["held"]["deadline"].is_string(),
        "it keeps its deadline: {held}"
    );
    let first = first_started(&sc, &mut k).await;
    let second = if first == "vm-a" { "vm-b" } else { "vm-a" };
    // Both gates open: only the budget keeps the second one waiting.
    open_gate(&sc, second);

    let st = status(&sc.config);
    assert_eq!(st["leases"].as_array().unwrap().len(), 1, "{st}");
    let lease = &st["leases"][0];
    assert_eq!(lease["budget"], "one-at-a-time");
    assert_eq!(lease["key"], "web");
    assert_eq!(lease["unit"], first);
    assert!(
        lease["holder"].as_str().unwrap().starts_with("test-vm#"),
        "{lease}"
    );
    assert!(lease["released_at"].is_null());
    assert_eq!(st["held"][0]["by"], "budget", "{st}");
    assert_eq!(st["held"][0]["reason"], reason.as_str());
    let text = status_text(&sc.config);
    assert!(
        text.contains("budgets: 1 key(s) with slots taken"),
        "{text}"
    );
    assert!(
        text.contains("one-at-a-time/web  1 lease(s), max_in_flight 1, 1 waiting"),
        "{text}"
    );
    assert!(text.contains(&format!("unit {first} (decision")), "{text}");
    assert_eq!(
        sc.exec_runs(),
        [format!("start {first}")],
        "held: no effect yet"
    );

    open_gate(&sc, &first);
    let gave_back = k
        .wait_line("the first slot given back", WITHIN, |l| {
            l["budget"] == "released"
        })
        .await;
    let released = k
        .wait_line("the second released", WITHIN, |l| {
            l["released"]["by"] == "budget"
        })
        .await;
    assert_eq!(released["decision_id"], held["decision_id"]);
    let baked = time_of(&released["time"]) - time_of(&gave_back["time"]);
    assert!(
        baked >= chrono::Duration::seconds(1),
        "released {baked} after the first slot was given back, before the 1s bake"
    );
    k.wait_until("both drains done", WITHIN, || sc.exec_runs().len() == 4)
        .await;
    assert_eq!(
        sc.exec_runs(),
        [
            format!("start {first}"),
            format!("done {first}"),
            format!("start {second}"),
            format!("done {second}"),
        ],
        "one at a time"
    );
    k.wait_until("both runbooks finished", WITHIN, || {
        sc.drain_runbooks() == ["done", "done"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_cannot_get_a_slot_before_its_deadline_escalates_without_running() {
    let not_before = (Utc::now() + chrono::Duration::seconds(5))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let sc = scenario(&["vm-a", "vm-b"], &not_before, "0s", "30s").await;
    let mut k = sc.keel(&[], &[]);
    let held = k.wait_line("the budget hold", WITHIN, is_budget_hold).await;
    let esc = k
        .wait_line("the escalation", WITHIN, |l| {
            l["escalation"]["held_by"] == "budget"
        })
        .await;
    assert_eq!(esc["decision_id"], held["decision_id"]);
    let why = esc["escalation"]["reason"].as_str().unwrap();
    assert!(why.contains("held past its deadline"), "{why}");
    assert!(why.contains("budget one-at-a-time/web full"), "{why}");
    let first = first_started(&sc, &mut k).await;
    assert!(
        !sc.exec_runs().iter().any(|l| l.ends_with(&format!(
            " {}",
            if first == "vm-a" { "vm-b" } else { "vm-a" }
        ))),
        "the held drain never ran: {:?}",
        sc.exec_runs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_holder_s_runbook_keeps_its_slot_on_restart_and_its_non_idempotent_step_never_runs_again(
) {
    let sc = scenario_with(
        &["vm-a", "vm-b"],
        &not_before_in_15_minutes(),
        "0s",
        "3s",
        TWO_STEPS,
    )
    .await;
    let mut k = sc.keel(&[], &[]);
    let held = k.wait_line("the budget hold", WITHIN, is_budget_hold).await;
    let first = first_started(&sc, &mut k).await;
    let second = if first == "vm-a" { "vm-b" } else { "vm-a" };
    open_gate(&sc, second);
    k.wait_until("the first runbook at its second step", WITHIN, || {
        sc.step_rows().iter().any(|(name, _, _, _)| name == "wait")
    })
    .await;
    // Killed mid-runbook (SIGKILL: no cleanup), its lease still held.
    k.kill();
    let st = status(&sc.config);
    let lease = st["leases"][0].clone();
    assert_eq!(lease["unit"], first.as_str(), "{st}");
    let dead = lease["holder"].as_str().unwrap().to_string();

    // The restarted host is a new holder. The killed runbook is resumed past its first
    // effect: its done non-idempotent step is not run again, its idempotent one runs again,
    // and it keeps its slot (taken over, renewed) past the dead holder's TTL: the waiting
    // drain does not start.
    let mut k2 = sc.keel(&[], &[]);
    let config = sc.config.clone();
    let mut taken_over = false;
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let st = status(&config);
        let live: Vec<&Value> = st["leases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["released_at"].is_null())
            .collect();
        assert!(live.len() <= 1, "two units in flight: {st}");
        taken_over |= live
            .iter()
            .any(|l| l["unit"] == first.as_str() && l["holder"] != dead.as_str());
        assert!(
            !sc.exec_runs().contains(&format!("start {second}")),
            "the waiter started while the resumed runbook ran\n{}",
            k2.dump()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(taken_over, "the resumed runbook's slot was not taken over");
    open_gate(&sc, &first);
    let released = k2
        .wait_line("the held drain released", WITHIN, |l| {
            l["released"]["by"] == "budget"
        })
        .await;
    assert_eq!(released["decision_id"], held["decision_id"]);
    k2.wait_until("the second drain done", WITHIN, || {
        sc.exec_runs().contains(&format!("done {second}"))
    })
    .await;
    let runs = sc.exec_runs();
    assert_eq!(
        runs.iter()
            .filter(|l| **l == format!("start {first}"))
            .count(),
        1,
        "the non-idempotent step ran again: {runs:?}"
    );
    assert!(runs.contains(&format!("done {first}")), "{runs:?}");
}
