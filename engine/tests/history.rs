//! Correlation across VMs: the bounded, windowed history and its CEL surface.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use keel_engine::{Action, Ctx, Decision, Engine, Event, History, Timestamp};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn failure(vm: &str, os: &str, region: &str, at: Timestamp) -> Event {
    Event::from_json_str(&format!(
        r#"{{"id":"azure.arm:{vm}-{ts}","time":"{time}","source":"azure.arm","kind":"operation_failure",
        "resource":{{"id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{vm}","name":"{vm}","os":"{os}","region":"{region}"}},
        "failure":{{"operation":"create","code":"ArtifactVersionNotFound","category":"vm_agent","attempt":1}}}}"#,
        ts = at.timestamp(),
        time = at.to_rfc3339()
    ))
    .unwrap()
}

const FLEET: &str = r#"
policies:
  - name: vm-agent.retry-without-agent
    on: [operation_failure]
    when: event.failure.category == "vm_agent" && event.resource.os == "windows" && event.failure.attempt < 2
    action: retry_without_agent
    priority: 100
  - name: vm-agent.platform-incident
    on: [operation_failure]
    when: >
      event.failure.category == "vm_agent"
      && history.resources({"failure.category": "vm_agent", "resource.region": event.resource.region}, duration("15m")) >= 3
    action: escalate
    params: { severity: critical, dedup: { by: [resource.region, failure.category], window: 1h } }
"#;

fn engine(yaml: &str) -> Engine {
    Engine::builder()
        .add_source("p.yaml", yaml)
        .build()
        .unwrap()
}

/// Records, decides and records the decision, as a host would.
fn step(engine: &Engine, h: &mut History, ev: &Event) -> Decision {
    h.record(ev);
    let d = engine.decide(ev, &Ctx::new(ev.time).with_history(h));
    h.record_decision(ev, &d);
    d
}

#[test]
fn many_vms_in_a_region_escalate_once() {
    let e = engine(FLEET);
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    let mut pages = 0;
    let mut keys = Vec::new();
    for i in 0..10 {
        let ev = failure(
            &format!("win-{i}"),
            "windows",
            "eastus2",
            start + Duration::seconds(30 * i),
        );
        let d = step(&e, &mut h, &ev);
        assert_eq!(
            d.action,
            Action::RetryWithoutAgent,
            "every Windows VM retries without the agent"
        );
        assert!(d.errors.is_empty() && d.warnings.is_empty(), "{d:?}");
        if i < 2 {
            assert!(d.escalations.is_empty(), "not yet a pattern at VM {i}");
        }
        for esc in &d.escalations {
            keys.push(esc.key.clone());
            if !esc.repeat {
                pages += 1;
            }
        }
    }
    assert_eq!(pages, 1, "one platform incident, paged once");
    assert_eq!(keys.len(), 8, "VMs 3..10 each see the incident");
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for the incident"
    );
}

#[test]
fn independent_hosts_compute_the_same_key() {
    let e = engine(FLEET);
    let (mut a, mut b) = (History::new(), History::new());
    let start = t("2021-10-13T14:00:00Z");
    let evs: Vec<Event> = (0..4)
        .map(|i| {
            failure(
                &format!("w{i}"),
                "windows",
                "westeurope",
                start + Duration::seconds(45 * i),
            )
        })
        .collect();
    let mut ka = Vec::new();
    let mut kb = Vec::new();
    for ev in &evs {
        ka.extend(step(&e, &mut a, ev).escalations.into_iter().map(|x| x.key));
    }
    // Host B observes the same fleet events minutes later: the key uses the events' times,
    // not the moment of observation.
    for ev in &evs {
        b.record(ev);
        let d = e.decide(
            ev,
            &Ctx::new(ev.time + Duration::minutes(7)).with_history(&b),
        );
        b.record_decision(ev, &d);
        kb.extend(d.escalations.into_iter().map(|x| x.key));
    }
    assert!(!ka.is_empty() && !kb.is_empty());
    assert_eq!(ka[0], kb[0]);
}

#[test]
fn windows_end_at_the_event_and_use_event_time() {
    let e = engine(FLEET);
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    // Three failures 10 minutes apart: the third sees only two inside 15 minutes.
    for i in 0..3 {
        let d = step(
            &e,
            &mut h,
            &failure(
                &format!("v{i}"),
                "windows",
                "eastus",
                start + Duration::minutes(10 * i),
            ),
        );
        assert!(d.escalations.is_empty(), "{i}: {d:?}");
    }
    // Other regions and Linux VMs in another region do not count for eastus.
    let mut h = History::new();
    step(&e, &mut h, &failure("a", "windows", "eastus", start));
    step(&e, &mut h, &failure("b", "linux", "westus", start));
    let d = step(
        &e,
        &mut h,
        &failure("c", "windows", "eastus", start + Duration::minutes(1)),
    );
    assert!(d.escalations.is_empty());
    // The same VM failing three times is one resource.
    let mut h = History::new();
    for i in 0..3 {
        let d = step(
            &e,
            &mut h,
            &failure("same", "windows", "eastus", start + Duration::minutes(i)),
        );
        assert!(d.escalations.is_empty());
    }
}

#[test]
fn history_count_and_actions() {
    let yaml = r#"
policies:
  - name: maint.drain-once
    on: [maintenance]
    when: event.maintenance.type == "reboot" && history.actions(event.resource.id, "drain", duration("6h")) == 0
    action: drain
    priority: 10
  - name: maint.already-drained.defer
    on: [maintenance]
    when: event.maintenance.type == "reboot"
    action: defer
    params: { delay: 10m }
  - name: maint.storm
    on: [maintenance]
    when: >
      history.count({"kind": "maintenance", "resource.region": "eastus"}, duration("1h")) > 2
    action: escalate
"#;
    let e = engine(yaml);
    let mut h = History::new();
    let ev = |n: i64| {
        Event::from_json_str(&format!(
            r#"{{"id":"azure.scheduled_events:e{n}/vm1","time":"{}","source":"azure.scheduled_events","kind":"maintenance",
            "resource":{{"id":"vm1","name":"vm1","region":"eastus"}},
            "maintenance":{{"type":"reboot","status":"scheduled"}}}}"#,
            (t("2018-01-05T03:00:00Z") + Duration::minutes(20 * n)).to_rfc3339()
        ))
        .unwrap()
    };
    let d1 = step(&e, &mut h, &ev(0));
    assert_eq!(d1.action, Action::Drain);
    // Landed back on an unpatched host: maintenance-pending again. Not drained twice.
    let d2 = step(&e, &mut h, &ev(1));
    assert_eq!(d2.action, Action::Defer);
    assert!(d2.escalations.is_empty());
    let d3 = step(&e, &mut h, &ev(2));
    assert_eq!(
        d3.escalations.len(),
        1,
        "three maintenance events in an hour"
    );
}

#[test]
fn decide_without_history_warns_and_counts_nothing() {
    let e = engine(FLEET);
    let ev = failure("w", "windows", "eastus", t("2021-10-13T14:00:00Z"));
    let d = e.decide(&ev, &Ctx::new(ev.time));
    assert!(d.escalations.is_empty());
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("no correlation history was given")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn the_bound_drops_the_oldest_and_warns() {
    let e = engine(FLEET);
    let mut h = History::with_limits(4, 24 * 3600);
    let start = t("2021-10-13T14:00:00Z");
    let mut last = None;
    for i in 0..10 {
        last = Some(step(
            &e,
            &mut h,
            &failure(
                &format!("w{i}"),
                "windows",
                "eastus",
                start + Duration::seconds(i),
            ),
        ));
    }
    assert_eq!(h.len(), 4);
    let d = last.unwrap();
    assert!(
        d.warnings.iter().any(|w| w.contains("size bound")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn memory_stays_bounded_under_any_rate() {
    let mut h = History::with_limits(1000, 3600);
    let start = t("2021-10-13T14:00:00Z");
    for i in 0..100_000 {
        h.record(&failure(
            &format!("vm-{i}"),
            "windows",
            "eastus",
            start + Duration::milliseconds(i),
        ));
    }
    assert_eq!(h.len(), 1000);
    // Retention: an event a day later drops everything older than an hour.
    h.record(&failure(
        "late",
        "windows",
        "eastus",
        start + Duration::days(1),
    ));
    assert_eq!(h.len(), 1);
}

#[test]
fn history_expressions_are_checked_at_load() {
    let cases = [
        (
            r#"history.count({"failure.categry": "vm_agent"}, duration("1h")) > 1"#,
            "unknown event path `failure.categry`",
        ),
        (
            r#"history.count({"failure.message": "x"}, duration("1h")) > 1"#,
            "cannot be used in a history filter",
        ),
        (
            r#"history.count({"failure.category": "vm-agent"}, duration("1h")) > 1"#,
            "is not a value of `event.failure.category`",
        ),
        (
            r#"history.actions(event.resource.id, "drian", duration("1h")) > 1"#,
            "an action name in quotes",
        ),
        (
            r#"history.cont({"kind": "health"}, duration("1h")) > 1"#,
            "unknown history function `history.cont`",
        ),
        (
            r#"history.count({"kind": "health"}, duration("1h")) > 1 && event.resource.name.matches("^a")"#,
            "must be evaluable natively",
        ),
        (r#"history > 1"#, "`history` is only used as"),
    ];
    for (when, want) in cases {
        let yaml = format!(
            "policies:\n  - name: p\n    on: [health]\n    when: '{}'\n    action: drain\n",
            when.replace('\'', "''")
        );
        let err = Engine::builder()
            .add_source("p.yaml", yaml)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{when}: {err}");
    }
}

#[test]
fn one_future_dated_event_does_not_blind_the_history() {
    let e = engine(FLEET);
    let mut h = History::new();
    step(
        &e,
        &mut h,
        &failure("far", "windows", "westus", t("2099-01-01T00:00:00Z")),
    );
    let start = t("2021-10-13T14:00:00Z");
    let mut pages = 0;
    for i in 0..3 {
        let d = step(
            &e,
            &mut h,
            &failure(
                &format!("w{i}"),
                "windows",
                "eastus",
                start + Duration::seconds(i),
            ),
        );
        pages += d.escalations.iter().filter(|x| !x.repeat).count();
    }
    assert_eq!(pages, 1, "the three eastus failures are still one incident");
}

#[test]
fn extreme_times_and_limits_never_panic() {
    let mut h = History::with_limits(usize::MAX, i64::MAX);
    let e = engine(FLEET);
    for at in [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
    ] {
        let d = step(&e, &mut h, &failure("x", "windows", "eastus", t(at)));
        assert!(d.errors.is_empty(), "{at}: {:?}", d.errors);
    }
    let mut h = History::with_limits(0, i64::MIN);
    step(
        &e,
        &mut h,
        &failure("y", "windows", "eastus", t("0001-01-01T00:00:00Z")),
    );
}

/// A count compared with a constant is counted only up to the constant + 1 (so that a query
/// stops early in a dense window): every comparison must still give the uncapped answer.
#[test]
fn capped_history_counts_decide_every_comparison_like_the_full_count() {
    let start = t("2021-10-13T14:00:00Z");
    for n in 0..6i64 {
        let mut h = History::new();
        for i in 0..n {
            let ev = failure(&format!("vm-{i}"), "windows", "eastus2", start);
            h.record(&ev);
            h.record_decision(
                &ev,
                &engine("policies: [{name: d, on: [operation_failure], action: drain}]")
                    .decide(&ev, &Ctx::new(start).with_history(&h)),
            );
        }
        let probe = failure("vm-0", "windows", "eastus2", start);
        for op in ["==", "!=", "<", "<=", ">", ">="] {
            for k in 0..5i64 {
                let count = format!(
                    r#"history.count({{"failure.category": "vm_agent"}}, duration("1h")) {op} {k}"#
                );
                let distinct = format!(
                    r#"history.resources({{"resource.region": "eastus2"}}, duration("1h")) {op} {k}"#
                );
                let reversed = format!(
                    r#"{k} {op} history.resources({{"resource.region": "eastus2"}}, duration("1h"))"#
                );
                let want = |a: i64, b: i64| match op {
                    "==" => a == b,
                    "!=" => a != b,
                    "<" => a < b,
                    "<=" => a <= b,
                    ">" => a > b,
                    _ => a >= b,
                };
                for (expr, expect) in [
                    (count, want(n, k)),
                    (distinct, want(n, k)),
                    (reversed, want(k, n)),
                ] {
                    let yaml = format!(
                        "policies:\n  - name: p\n    on: [operation_failure]\n    when: '{expr}'\n    action: drain\n"
                    );
                    let d = engine(&yaml).decide(&probe, &Ctx::new(start).with_history(&h));
                    assert!(d.errors.is_empty(), "{expr}: {:?}", d.errors);
                    assert_eq!(d.action == Action::Drain, expect, "{expr} with {n} events");
                }
            }
        }
    }
}
