//! The blast-radius guards (storm, retry budget, flap) that `Engine::decide` applies after
//! resolution, read from the correlation history.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};

use chrono::Duration;
use keel_engine::{
    Action, Ctx, Decision, Engine, Event, GuardConfig, GuardName, History, Timestamp,
};
use proptest::prelude::*;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn failure(vm: &str, region: &str, category: &str, attempt: i64, at: Timestamp) -> Event {
    Event::from_json_str(&format!(
        r#"{{"id":"azure.arm:{vm}-{ts}-{attempt}","time":"{time}","source":"azure.arm","kind":"operation_failure",
        "resource":{{"id":"{vm}","name":"{vm}","os":"windows","region":"{region}"}},
        "failure":{{"operation":"create","code":"X","category":"{category}","attempt":{attempt}}}}}"#,
        ts = at.timestamp(),
        time = at.to_rfc3339()
    ))
    .unwrap()
}

fn healthy(vm: &str, at: Timestamp) -> Event {
    Event::from_json_str(&format!(
        r#"{{"id":"azure.resource_health:{vm}-{ts}","time":"{time}","source":"azure.resource_health","kind":"health",
        "resource":{{"id":"{vm}","name":"{vm}","region":"eastus"}},"health":{{"state":"available"}}}}"#,
        ts = at.timestamp(),
        time = at.to_rfc3339()
    ))
    .unwrap()
}

/// Retries every failure (of any attempt), without its own limits.
const RETRY_ALL: &str = r#"
policies:
  - name: retry-all
    on: [operation_failure]
    action: retry
"#;

fn engine(guards: GuardConfig) -> Engine {
    Engine::builder()
        .add_source("p.yaml", RETRY_ALL)
        .guards(guards)
        .build()
        .unwrap()
}

fn only(f: impl FnOnce(&mut GuardConfig)) -> GuardConfig {
    let mut g = GuardConfig::off();
    f(&mut g);
    g
}

fn step(engine: &Engine, h: &mut History, ev: &Event) -> Decision {
    h.record(ev);
    let d = engine.decide(ev, &Ctx::new(ev.time).with_history(h));
    h.record_decision(ev, &d);
    d
}

fn guard_of(d: &Decision) -> Option<GuardName> {
    d.guard.as_ref().map(|g| g.name)
}

#[test]
fn the_defaults_are_on_with_the_documented_values() {
    let g = GuardConfig::default();
    assert!(g.retry_budget.enabled && g.storm.enabled && g.flap.enabled);
    assert_eq!(
        (
            g.retry_budget.ratio,
            g.retry_budget.min_retries,
            g.retry_budget.window_s,
            g.retry_budget.host_min_retries
        ),
        (0.1, 3, 600, 10)
    );
    assert_eq!(
        (g.storm.threshold, g.storm.window_s, g.storm.cooldown_s),
        (20, 300, 900)
    );
    assert_eq!(
        (g.flap.max_attempts, g.flap.window_s, g.flap.reset_after_s),
        (3, 3600, 3600)
    );
    let off = GuardConfig::off();
    assert!(!off.retry_budget.enabled && !off.storm.enabled && !off.flap.enabled);
}

#[test]
fn the_retry_budget_allows_the_floor_then_a_tenth_of_first_attempts_and_escalates_once() {
    let e = engine(only(|g| g.retry_budget.enabled = true));
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    let mut retries = 0;
    let mut pages = 0;
    let mut keys = HashSet::new();
    for i in 0..40 {
        let ev = failure(
            &format!("vm-{i}"),
            "westeurope",
            "vm_agent",
            1,
            start + Duration::seconds(i),
        );
        let d = step(&e, &mut h, &ev);
        // Allowed while retries (with this one) <= 0.1 x first attempts + 3.
        let allowed = (retries + 1) as f64 <= 0.1 * (i + 1) as f64 + 3.0;
        if allowed {
            assert_eq!(d.action, Action::Retry, "vm-{i}: {d:?}");
            assert!(d.guard.is_none() && d.escalations.is_empty());
            retries += 1;
        } else {
            assert_eq!(d.action, Action::Escalate, "vm-{i}");
            let g = d.guard.as_ref().unwrap();
            assert_eq!(g.name, GuardName::RetryBudget);
            assert_eq!(g.scope, "westeurope/vm_agent");
            assert_eq!(g.held_action, Action::Retry);
            assert!(d.retry.is_none(), "a held retry resubmits nothing");
            assert_eq!(d.reason.as_deref(), Some(g.reason.as_str()));
            assert_eq!(d.escalations.len(), 1);
            assert_eq!(d.escalations[0].policy, "guard.retry_budget");
            keys.insert(d.escalations[0].key.clone());
            pages += usize::from(!d.escalations[0].repeat);
        }
    }
    assert_eq!(retries, 7, "3 + 40/10, rounded down");
    assert_eq!(pages, 1, "one page for the scope, not one per VM");
    assert_eq!(keys.len(), 1, "one key for the scope's run");
    // The reason names the guard, the scope and the figures.
    let d = step(
        &e,
        &mut h,
        &failure(
            "vm-x",
            "westeurope",
            "vm_agent",
            1,
            start + Duration::seconds(41),
        ),
    );
    assert_eq!(
        d.guard.unwrap().reason,
        "retry budget exhausted in westeurope/vm_agent: 7 retries for 41 failures in 10m, budget 10% + 3"
    );
}

#[test]
fn the_retry_budget_is_per_scope_and_host_wide() {
    let mut g = only(|g| g.retry_budget.enabled = true);
    g.retry_budget.min_retries = 2;
    g.retry_budget.host_min_retries = 2;
    g.retry_budget.ratio = 0.0;
    let e = engine(g);
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    // Two retries in eastus spend eastus's floor, not northeurope's...
    for i in 0..2 {
        let d = step(
            &e,
            &mut h,
            &failure(&format!("a{i}"), "eastus", "vm_agent", 1, start),
        );
        assert_eq!(d.action, Action::Retry);
    }
    let d = step(&e, &mut h, &failure("a2", "eastus", "vm_agent", 1, start));
    assert_eq!(guard_of(&d), Some(GuardName::RetryBudget));
    assert_eq!(d.guard.unwrap().scope, "eastus/vm_agent");
    // ... but the host-wide budget has the same floor: two retries in all.
    let d = step(
        &e,
        &mut h,
        &failure("b0", "northeurope", "vm_agent", 1, start),
    );
    let g = d.guard.expect("host-wide budget spent");
    assert_eq!((g.name, g.scope.as_str()), (GuardName::RetryBudget, "*"));
    assert!(g.reason.contains("host-wide"), "{}", g.reason);
    // Ten minutes later the window has moved on.
    let later = start + Duration::minutes(11);
    let d = step(&e, &mut h, &failure("a3", "eastus", "vm_agent", 1, later));
    assert_eq!(d.action, Action::Retry);
}

#[test]
fn the_storm_guard_holds_a_scope_past_its_threshold_until_the_cooldown_after_it_falls() {
    let e = engine(only(|g| g.storm.enabled = true));
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    let mut pages = Vec::new();
    for i in 0..30 {
        let at = start + Duration::seconds(5 * i);
        let d = step(
            &e,
            &mut h,
            &failure(&format!("vm-{i}"), "eastus", "vm_agent", 1, at),
        );
        if i < 19 {
            assert_eq!(
                d.action,
                Action::Retry,
                "failure {}: below the threshold",
                i + 1
            );
        } else {
            assert_eq!(guard_of(&d), Some(GuardName::Storm), "failure {}", i + 1);
            assert_eq!(d.escalations[0].severity, keel_engine::Severity::Critical);
            pages.extend(
                d.escalations
                    .iter()
                    .filter(|e| !e.repeat)
                    .map(|e| e.key.clone()),
            );
        }
    }
    assert_eq!(pages.len(), 1, "exactly one page for the storm");
    let first = pages[0].clone();
    let d = step(
        &e,
        &mut h,
        &failure(
            "vm-n",
            "eastus",
            "vm_agent",
            1,
            start + Duration::seconds(150),
        ),
    );
    assert!(d
        .guard
        .unwrap()
        .reason
        .starts_with("storm guard: 31 failures in eastus/vm_agent in 5m (threshold 20)"));
    // Another scope is not held.
    let d = step(
        &e,
        &mut h,
        &failure(
            "other",
            "eastus",
            "quota",
            1,
            start + Duration::seconds(150),
        ),
    );
    assert_eq!(d.action, Action::Retry);
    // The last storm-level failure was at 150 s: the rate is below the threshold once it has
    // left the 5-minute window, and 15 minutes of cooldown later a failure is retried again;
    // before that it is still held.
    let held = start + Duration::seconds(150 + 300 + 899);
    let d = step(
        &e,
        &mut h,
        &failure("late-1", "eastus", "vm_agent", 1, held),
    );
    assert_eq!(
        guard_of(&d),
        Some(GuardName::Storm),
        "cooldown still running"
    );
    assert!(d.escalations.iter().all(|e| e.repeat && e.key == first));
    let resumed = start + Duration::seconds(150 + 300 + 900 + 1);
    let d = step(
        &e,
        &mut h,
        &failure("late-2", "eastus", "vm_agent", 1, resumed),
    );
    assert_eq!(d.action, Action::Retry, "resumed after the cooldown: {d:?}");
}

#[test]
fn the_flap_guard_escalates_a_resource_past_its_attempts_and_resets_after_a_healthy_period() {
    let e = engine(only(|g| g.flap.enabled = true));
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    for n in 1..=3 {
        let at = start + Duration::minutes(5 * n);
        let d = step(&e, &mut h, &failure("web-9", "eastus", "internal", n, at));
        assert_eq!(d.action, Action::Retry, "attempt {n}");
    }
    let d = step(
        &e,
        &mut h,
        &failure(
            "web-9",
            "eastus",
            "internal",
            4,
            start + Duration::minutes(20),
        ),
    );
    let g = d.guard.as_ref().expect("fourth attempt held");
    assert_eq!((g.name, g.scope.as_str()), (GuardName::Flap, "web-9"));
    assert!(!d.escalations[0].repeat, "the first flap of web-9 pages");
    // Another VM is not affected.
    let d = step(
        &e,
        &mut h,
        &failure(
            "web-10",
            "eastus",
            "internal",
            1,
            start + Duration::minutes(21),
        ),
    );
    assert_eq!(d.action, Action::Retry);
    // Healthy (no failure) for over an hour: the count starts again. A health event saying
    // available does not count as a failure.
    step(&e, &mut h, &healthy("web-9", start + Duration::minutes(30)));
    let back = start + Duration::minutes(20 + 61);
    let d = step(&e, &mut h, &failure("web-9", "eastus", "internal", 1, back));
    assert_eq!(d.action, Action::Retry, "{d:?}");
}

#[test]
fn guards_hold_nothing_that_is_not_a_remediation_of_a_failure_and_off_means_off() {
    let e = engine(GuardConfig::off());
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    for i in 0..100 {
        let d = step(
            &e,
            &mut h,
            &failure(&format!("vm-{i}"), "eastus", "vm_agent", 1, start),
        );
        assert_eq!(d.action, Action::Retry);
    }
    // Maintenance drains are not remediations of failures: no guard, whatever the storm.
    let drain = Engine::builder()
        .add_source(
            "d.yaml",
            "policies:\n  - name: drain\n    on: [maintenance]\n    action: drain\n",
        )
        .build()
        .unwrap();
    for i in 0..30 {
        let ev = Event::from_json_str(&format!(
            r#"{{"id":"azure.scheduled_events:{i}","time":"2021-10-13T14:00:00Z","source":"azure.scheduled_events","kind":"maintenance",
            "resource":{{"name":"vm-{i}","region":"eastus"}},"maintenance":{{"type":"reboot","status":"scheduled"}}}}"#
        ))
        .unwrap();
        let d = step(&drain, &mut h, &ev);
        assert_eq!(d.action, Action::Drain);
    }
}

#[test]
fn guards_survive_a_history_rebuilt_from_the_recorded_events_and_decisions() {
    let e = engine(GuardConfig::default());
    let mut h = History::new();
    let mut log = Vec::new();
    let start = t("2021-10-13T14:00:00Z");
    for i in 0..25 {
        let ev = failure(
            &format!("vm-{i}"),
            "eastus",
            "vm_agent",
            1,
            start + Duration::seconds(i),
        );
        let d = step(&e, &mut h, &ev);
        log.push((ev, d));
    }
    // A restarted host replays its store into a new history, as `rebuild_history` does.
    let mut rebuilt = History::new();
    for (ev, d) in &log {
        rebuilt.record(ev);
        rebuilt.record_decision(ev, d);
    }
    let next = failure(
        "vm-next",
        "eastus",
        "vm_agent",
        1,
        start + Duration::seconds(30),
    );
    let a = step(&e, &mut h, &next);
    let b = step(&e, &mut rebuilt, &next);
    assert_eq!(a, b);
    assert_eq!(guard_of(&b), Some(GuardName::Storm));
    assert!(b.escalations.iter().all(|e| e.repeat));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random arrival of failures across scopes: per scope, a retry is allowed only within
    /// ratio x first attempts + floor of its window, the budget holds one back only when spent,
    /// and each scope with a hold pages exactly once in its run.
    #[test]
    fn retries_stay_within_budget_and_each_scope_pages_once(
        arrivals in proptest::collection::vec((0usize..4, 0i64..1200, 1i64..3), 1..200)
    ) {
        let e = engine(GuardConfig::default());
        let cfg = GuardConfig::default();
        let mut h = History::new();
        let start = t("2021-10-13T14:00:00Z");
        let regions = ["eastus", "westeurope", "northeurope", "japaneast"];
        let mut arrivals = arrivals;
        arrivals.sort_by_key(|a| a.1);
        // Per scope: (time, is first attempt, retried)
        let mut seen: HashMap<&str, Vec<(Timestamp, bool, bool)>> = HashMap::new();
        let mut pages: HashMap<&str, usize> = HashMap::new();
        let mut holds: HashMap<&str, usize> = HashMap::new();
        for (n, (r, s, attempt)) in arrivals.iter().enumerate() {
            let at = start + Duration::seconds(*s);
            let ev = failure(&format!("vm-{n}"), regions[*r], "vm_agent", *attempt, at);
            let d = step(&e, &mut h, &ev);
            let retried = d.action == Action::Retry;
            prop_assert!(retried || d.guard.is_some());
            pages.entry(regions[*r]).or_default();
            *holds.entry(regions[*r]).or_default() += usize::from(d.guard.is_some());
            for esc in d.escalations.iter().filter(|e| !e.repeat) {
                prop_assert!(esc.policy.starts_with("guard."));
                *pages.entry(regions[*r]).or_default() += 1;
            }
            let list = seen.entry(regions[*r]).or_default();
            list.push((at, *attempt == 1, retried));
            // The budget over the window ending now.
            let from = at - Duration::seconds(cfg.retry_budget.window_s);
            let (firsts, retries) = list
                .iter()
                .filter(|(t, _, _)| *t > from)
                .fold((0u32, 0u32), |(f, r), (_, first, re)| {
                    (f + u32::from(*first), r + u32::from(*re))
                });
            let budget = cfg.retry_budget.ratio * f64::from(firsts)
                + f64::from(cfg.retry_budget.min_retries);
            // A retry is allowed only within the budget of the window it is decided in...
            if retried {
                prop_assert!(
                    f64::from(retries) <= budget,
                    "{} retries for {} firsts in {}", retries, firsts, regions[*r]
                );
            }
            // ... and the budget holds one back only when it is spent (here or host-wide).
            if guard_of(&d) == Some(GuardName::RetryBudget)
                && d.guard.as_ref().is_some_and(|g| g.scope != "*")
            {
                prop_assert!(f64::from(retries + 1) > budget);
            }
        }
        // All arrivals fall within 20 minutes, less than one page gap: a region whose actions
        // a guard held pages exactly once (the policy here never escalates), others never.
        for (region, n) in pages {
            let want = usize::from(holds[region] > 0);
            prop_assert_eq!(n, want, "{} paged {} times", region, n);
        }
    }
}

/// A guard whose hold lands on the same decision as a policy's escalation for the scope does
/// not page a second time.
#[test]
fn a_guard_holding_the_decision_a_policy_escalates_in_does_not_page_again() {
    let e = Engine::builder()
        .add_source(
            "p.yaml",
            r#"
policies:
  - name: retry-all
    on: [operation_failure]
    action: retry
  - name: incident
    on: [operation_failure]
    when: >
      history.resources({"resource.region": event.resource.region}, duration("15m")) >= 4
    action: escalate
    params: { dedup: { by: [resource.region] } }
"#,
        )
        .build()
        .unwrap();
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    let mut pages = 0;
    for i in 0..4 {
        let d = step(
            &e,
            &mut h,
            &failure(&format!("vm-{i}"), "eastus", "internal", 1, start),
        );
        pages += d.escalations.iter().filter(|e| !e.repeat).count();
        if i == 3 {
            // The fourth retry is past the budget and the fourth VM makes the incident.
            assert_eq!(guard_of(&d), Some(GuardName::RetryBudget));
            assert_eq!(d.escalations.len(), 2, "{d:?}");
        }
    }
    assert_eq!(pages, 1);
}
