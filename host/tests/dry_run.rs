//! Dry-run identity: the same scenario (a platform Reboot, drained with log, exec, http and
//! azure_ack steps) run live and with `--dry-run`, each against fresh stubs and fresh state,
//! gives the same decision log except for `mode`, the steps' outcomes (`planned` in dry-run)
//! and the time fields; and the dry run has no effect at all: no StartRequests, no exec, no
//! webhook request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Keel, Scenario, STEPS};
use serde_json::Value;

/// The lines that link event, decision and steps (everything with a `decision_id`, except the
/// `log` executor's own output, which is an effect), with their time fields removed.
fn decision_log(k: &Keel) -> Vec<Value> {
    k.json_lines()
        .into_iter()
        .filter(|l| l.get("decision_id").is_some() && l.get("log").is_none())
        .map(|mut l| {
            if let Some(o) = l.as_object_mut() {
                o.remove("time");
            }
            l
        })
        .collect()
}

/// Takes `field` out of every line that has it; the values taken, in order.
fn take(lines: &mut [Value], field: &str) -> Vec<Value> {
    lines
        .iter_mut()
        .filter_map(|l| l.as_object_mut()?.remove(field))
        .collect()
}

async fn run(not_before: &str, dry_run: bool) -> (Scenario, Vec<Value>) {
    let sc = Scenario::new(false, not_before).await;
    let args: &[&str] = if dry_run { &["--dry-run"] } else { &[] };
    let mut k = sc.keel(args, &[]);
    let last = STEPS[STEPS.len() - 1];
    k.wait_line(
        &format!("the `{last}` step"),
        Duration::from_secs(20),
        |l| l["step"] == last,
    )
    .await;
    // Anything more would follow from the next reads of the document: let the host read it
    // a few more times, then stop it and take its whole log.
    sc.wait_polls(&mut k, 4, Duration::from_secs(20)).await;
    k.kill();
    let lines = decision_log(&k);
    (sc, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_logs_the_same_decisions_and_steps_as_a_live_run_with_no_effect() {
    let not_before = common::not_before_in_15_minutes();
    let (live_sc, mut live) = run(&not_before, false).await;
    let (dry_sc, mut dry) = run(&not_before, true).await;

    // The live run acted: one exec, one webhook request, one StartRequests.
    assert_eq!(live_sc.exec_runs().len(), 1);
    assert_eq!(live_sc.hook_keys().len(), 1);
    assert_eq!(live_sc.approvals(), [common::EVENT_ID]);
    // The dry run did nothing at all.
    assert!(dry_sc.exec_runs().is_empty(), "dry-run ran the exec");
    assert!(dry_sc.hook_keys().is_empty(), "dry-run called the webhook");
    assert!(dry_sc.approvals().is_empty(), "dry-run sent StartRequests");

    let decisions = |ls: &[Value]| ls.iter().filter(|l| l.get("decision").is_some()).count();
    assert_eq!(decisions(&live), 1, "{live:#?}");
    assert_eq!(decisions(&dry), 1, "{dry:#?}");

    assert_eq!(take(&mut live, "mode"), ["live"]);
    assert_eq!(take(&mut dry, "mode"), ["dry_run"]);
    assert_eq!(take(&mut live, "outcome"), ["ok"; 4]);
    assert_eq!(take(&mut dry, "outcome"), ["planned"; 4]);
    // Everything else is identical: decision id, event, policy set digest, the decision, and
    // every step with its index, attempt and idempotency key.
    assert_eq!(live, dry);
    let steps: Vec<&str> = live.iter().filter_map(|l| l["step"].as_str()).collect();
    assert_eq!(steps, STEPS);
}
