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
    // The policies' own escalation dedup; the retry budget would hold the fourth retry
    // (tests/guard.rs).
    let e = Engine::builder()
        .add_source("p.yaml", FLEET)
        .guards(keel_engine::GuardConfig::off())
        .build()
        .unwrap();
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
            r#"history.count({"kind": "health"}, duration("1h")) > 1 && size(event.resource.name) > 2"#,
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

/// [`step`] on the caller's clock `now` (what `keel run` does: an AWS scheduled event is
/// dated by its `NotBefore`, days ahead of the clock).
fn step_at(engine: &Engine, h: &mut History, ev: &Event, now: Timestamp) -> Decision {
    h.record_at(ev, now);
    let d = engine.decide(ev, &Ctx::new(now).with_history(h));
    h.record_decision_at(ev, &d, now);
    d
}

#[test]
fn an_event_dated_ahead_of_the_clock_does_not_make_the_incident_so_far_look_old() {
    let e = engine(FLEET);
    let mut h = History::new();
    let start = t("2021-10-13T14:00:00Z");
    let mut pages = 0;
    let fail = |h: &mut History, i: i64| {
        let at = start + Duration::seconds(i);
        let d = step_at(
            &e,
            h,
            &failure(&format!("w{i}"), "windows", "eastus", at),
            at,
        );
        d.escalations.iter().filter(|x| !x.repeat).count()
    };
    for i in 0..3 {
        pages += fail(&mut h, i);
    }
    assert_eq!(pages, 1, "three eastus failures page once");
    // Dated three days ahead, seen now.
    let ahead = failure("later", "linux", "westus", start + Duration::days(3));
    step_at(&e, &mut h, &ahead, start + Duration::seconds(3));
    assert_eq!(
        h.len(),
        4,
        "the incident's three failures are still remembered"
    );
    for i in 4..6 {
        pages += fail(&mut h, i);
    }
    assert_eq!(
        pages, 1,
        "the incident goes on: its escalation is a repeat, not a new page"
    );
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

/// A decision for `ev` with `action` and escalations keyed by `keys`, as the engine would
/// return it.
fn decision(ev: &Event, action: &str, keys: &[&str]) -> Decision {
    let escalations: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::json!({"policy": "p", "reason": "r", "key": k, "severity": "error"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "event_id": ev.id, "action": action, "escalations": escalations
    }))
    .unwrap()
}

/// An engine whose decision says whether `history.actions(<this VM>, "drain", window) >= 1`:
/// `drain` if so, the default (`none`) otherwise.
fn drained_probe(window: &str) -> Engine {
    engine(&format!(
        "policies:\n  - name: p\n    on: [operation_failure]\n    when: 'history.actions(event.resource.id, \"drain\", duration(\"{window}\")) >= 1'\n    action: drain\n"
    ))
}

fn drained_before(h: &History, ev: &Event, window: &str) -> bool {
    let d = drained_probe(window).decide(ev, &Ctx::new(ev.time).with_history(h));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    d.action == Action::Drain
}

#[test]
fn is_empty_until_the_first_record() {
    let mut h = History::new();
    assert!(h.is_empty());
    assert_eq!(h.len(), 0);
    h.record(&failure(
        "a",
        "windows",
        "eastus",
        t("2021-10-13T14:00:00Z"),
    ));
    assert!(!h.is_empty());
    assert_eq!(h.len(), 1);
}

/// The default retention is 24 hours: an event 2 hours (or 24 hours) older than the newest
/// stays, one 24 hours and a second older goes.
#[test]
fn the_default_retention_is_24_hours() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::new();
    h.record(&failure("a", "windows", "eastus", start));
    h.record(&failure(
        "b",
        "windows",
        "eastus",
        start + Duration::hours(2),
    ));
    assert_eq!(h.len(), 2, "an event 2 h old is kept");
    h.record(&failure(
        "c",
        "windows",
        "eastus",
        start + Duration::hours(24),
    ));
    assert_eq!(h.len(), 3, "an event exactly 24 h old is kept");
    h.record(&failure(
        "d",
        "windows",
        "eastus",
        start + Duration::hours(24) + Duration::seconds(1),
    ));
    assert_eq!(h.len(), 3, "an event 24 h and 1 s old is dropped");
    // And it no longer counts: only b, c, d are in a 2-day window.
    let e = engine(
        "policies:\n  - name: p\n    on: [operation_failure]\n    when: 'history.count({\"failure.category\": \"vm_agent\"}, duration(\"48h\")) == 3'\n    action: drain\n",
    );
    let probe = failure(
        "d",
        "windows",
        "eastus",
        start + Duration::hours(24) + Duration::seconds(1),
    );
    assert_eq!(
        e.decide(&probe, &Ctx::new(probe.time).with_history(&h))
            .action,
        Action::Drain
    );
}

/// An event exactly one retention period older than the one being recorded is kept; one a
/// second older is not.
#[test]
fn an_event_exactly_one_retention_period_old_is_kept() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::with_limits(100, 3600);
    h.record(&failure("a", "windows", "eastus", start));
    h.record(&failure(
        "b",
        "windows",
        "eastus",
        start + Duration::seconds(3600),
    ));
    assert_eq!(h.len(), 2);
    h.record(&failure(
        "c",
        "windows",
        "eastus",
        start + Duration::seconds(3601),
    ));
    assert_eq!(h.len(), 2, "a is now 3601 s old");
}

/// The retention is capped at 100 years (of 365 days): asking for more (even `i64::MAX`
/// seconds) keeps 100 years, no more and no less.
#[test]
fn retention_is_capped_at_100_years() {
    let start = t("1900-01-01T00:00:00Z");
    let century = Duration::days(100 * 365);
    for asked in [i64::MAX, 200 * 365 * 86400] {
        let mut h = History::with_limits(100, asked);
        h.record(&failure("a", "windows", "eastus", start));
        h.record(&failure("b", "windows", "eastus", start + century));
        assert_eq!(h.len(), 2, "{asked}: exactly 100 years old is kept");
        h.record(&failure(
            "c",
            "windows",
            "eastus",
            start + century + Duration::seconds(1),
        ));
        assert_eq!(h.len(), 2, "{asked}: 100 years and 1 s old is dropped");
    }
}

/// Decisions age out with the retention: a drain 2 hours ago is forgotten by a history that
/// keeps 1 hour, even when the query's window is longer; it is remembered by one that keeps 24.
#[test]
fn decisions_are_dropped_by_age() {
    let start = t("2021-10-13T14:00:00Z");
    let first = failure("vm1", "windows", "eastus", start);
    let later = failure("vm1", "windows", "eastus", start + Duration::hours(2));
    for (retention, remembered) in [(3600, false), (24 * 3600, true)] {
        let mut h = History::with_limits(100, retention);
        h.record(&first);
        h.record_decision(&first, &decision(&first, "drain", &[]));
        h.record(&later);
        assert_eq!(drained_before(&h, &later, "48h"), remembered, "{retention}");
    }
}

/// Decisions are bounded like events: at a limit of 2, a third decision drops the oldest.
#[test]
fn decisions_are_dropped_by_the_size_limit() {
    let start = t("2021-10-13T14:00:00Z");
    for (limit, remembered) in [(2, false), (3, true)] {
        let mut h = History::with_limits(limit, 24 * 3600);
        for (i, vm) in ["vm1", "vm2", "vm3"].into_iter().enumerate() {
            let ev = failure(vm, "windows", "eastus", start + Duration::seconds(i as i64));
            h.record(&ev);
            h.record_decision(&ev, &decision(&ev, "drain", &[]));
        }
        let probe = failure("vm1", "windows", "eastus", start + Duration::seconds(3));
        assert_eq!(
            drained_before(&h, &probe, "1h"),
            remembered,
            "limit {limit}"
        );
        // The newer ones are still there.
        let probe3 = failure("vm3", "windows", "eastus", start + Duration::seconds(3));
        assert!(drained_before(&h, &probe3, "1h"));
    }
    // A resource with several decisions loses its oldest one: vm1's drain, not its defer.
    let mut h = History::with_limits(2, 24 * 3600);
    for (i, (vm, action)) in [("vm1", "drain"), ("vm1", "defer"), ("vm2", "none")]
        .into_iter()
        .enumerate()
    {
        let ev = failure(vm, "windows", "eastus", start + Duration::seconds(i as i64));
        h.record(&ev);
        h.record_decision(&ev, &decision(&ev, action, &[]));
    }
    let probe = failure("vm1", "windows", "eastus", start + Duration::seconds(3));
    assert!(
        !drained_before(&h, &probe, "1h"),
        "the drain was the oldest decision"
    );
}

/// Remembered escalation keys are bounded too: at a limit of 4, of 10 keys only the newest 4
/// are remembered.
#[test]
fn remembered_escalation_keys_are_bounded() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::with_limits(4, 24 * 3600);
    for i in 0..10 {
        let ev = failure(
            &format!("vm{i}"),
            "windows",
            "eastus",
            start + Duration::seconds(i),
        );
        h.record(&ev);
        h.record_decision(&ev, &decision(&ev, "none", &[&format!("key-{i}")]));
        // After each decision, exactly the newest 4 keys (or all, while fewer) are remembered.
        for j in 0..10 {
            assert_eq!(
                h.fired(&format!("key-{j}")),
                j <= i && j + 4 > i,
                "key-{j} after {i}"
            );
        }
    }
    assert!(!h.fired("key-never"));
}

/// `history.actions` counts only the action asked for, and only inside the window.
#[test]
fn actions_counts_the_same_action_inside_the_window_only() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::new();
    // vm1: drained 2 hours ago, deferred a minute ago.
    let old = failure("vm1", "windows", "eastus", start);
    h.record(&old);
    h.record_decision(&old, &decision(&old, "drain", &[]));
    let recent = failure("vm1", "windows", "eastus", start + Duration::minutes(119));
    h.record(&recent);
    h.record_decision(&recent, &decision(&recent, "defer", &[]));
    let now = failure("vm1", "windows", "eastus", start + Duration::minutes(120));
    h.record(&now);
    assert!(
        !drained_before(&h, &now, "1h"),
        "a defer is not a drain; the drain is outside"
    );
    assert!(drained_before(&h, &now, "3h"), "the drain is inside 3 h");
    // Another VM's drain does not count for vm1.
    let other = failure("vm2", "windows", "eastus", start + Duration::minutes(119));
    let mut h2 = History::new();
    h2.record(&other);
    h2.record_decision(&other, &decision(&other, "drain", &[]));
    h2.record(&now);
    assert!(!drained_before(&h2, &now, "1h"));
}

/// A decision exactly one retention period older than the event being recorded is kept (like
/// an event); one a second older is not.
#[test]
fn a_decision_exactly_one_retention_period_old_is_kept() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::with_limits(100, 3600);
    let first = failure("vm1", "windows", "eastus", start);
    h.record(&first);
    h.record_decision(&first, &decision(&first, "drain", &[]));
    let edge = failure("vm1", "windows", "eastus", start + Duration::seconds(3600));
    h.record(&edge);
    assert!(drained_before(&h, &edge, "2h"), "exactly 3600 s old: kept");
    let past = failure("vm1", "windows", "eastus", start + Duration::seconds(3601));
    h.record(&past);
    assert!(!drained_before(&h, &past, "2h"), "3601 s old: dropped");
}

/// The escalation keys' bound keeps the newest keys even at a limit of 1, and when one
/// decision brings several keys at once.
#[test]
fn the_newest_escalation_keys_stay_at_any_limit() {
    let start = t("2021-10-13T14:00:00Z");
    let decide = |h: &mut History, vm: &str, s: i64, keys: &[&str]| {
        let ev = failure(vm, "windows", "eastus", start + Duration::seconds(s));
        h.record(&ev);
        h.record_decision(&ev, &decision(&ev, "none", keys));
    };
    let mut h = History::with_limits(1, 24 * 3600);
    decide(&mut h, "vm0", 0, &["a"]);
    decide(&mut h, "vm1", 1, &["b"]);
    assert!(h.fired("b") && !h.fired("a"));
    let mut h = History::with_limits(3, 24 * 3600);
    for (i, k) in ["k0", "k1", "k2"].into_iter().enumerate() {
        decide(&mut h, &format!("vm{i}"), i as i64, &[k]);
    }
    decide(&mut h, "vm3", 3, &["x", "y", "z"]);
    for k in ["x", "y", "z"] {
        assert!(h.fired(k), "{k}");
    }
    for k in ["k0", "k1", "k2"] {
        assert!(!h.fired(k), "{k} is older than the newest 3");
    }
}

/// `history.resources` counts a resource once however often it is seen, also after the
/// history swept its unused interned strings (resources are compared by their interned
/// string).
#[test]
fn a_resource_seen_again_after_a_sweep_of_unused_strings_is_one_resource() {
    let start = t("2021-10-13T14:00:00Z");
    // At a limit of 2 events, the first event's strings already pass the sweep's threshold.
    let mut h = History::with_limits(2, 24 * 3600);
    h.record(&failure("vm1", "windows", "eastus", start));
    let again = failure("vm1", "windows", "eastus", start + Duration::seconds(1));
    h.record(&again);
    assert_eq!(h.len(), 2);
    let e = engine(
        "policies:\n  - name: p\n    on: [operation_failure]\n    when: 'history.resources({\"resource.region\": \"eastus\"}, duration(\"1h\")) == 1'\n    action: drain\n",
    );
    let d = e.decide(&again, &Ctx::new(again.time).with_history(&h));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.action, Action::Drain, "one VM, one resource");
}

/// `history.count`'s window is `(end - window, end]`, `end` being the decided event's time:
/// an event recorded after it (out of order) and one exactly a window old are not counted.
#[test]
fn count_windows_exclude_later_events_and_the_window_start() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::new();
    for (vm, m) in [("a", 0), ("b", 60), ("c", 90)] {
        h.record(&failure(
            vm,
            "windows",
            "eastus",
            start + Duration::minutes(m),
        ));
    }
    let probe = failure("b", "windows", "eastus", start + Duration::minutes(60));
    for n in 0..4 {
        let e = engine(&format!(
            "policies:\n  - name: p\n    on: [operation_failure]\n    when: 'history.count({{\"failure.category\": \"vm_agent\"}}, duration(\"1h\")) == {n}'\n    action: drain\n"
        ));
        let d = e.decide(&probe, &Ctx::new(probe.time).with_history(&h));
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.action == Action::Drain, n == 1, "count == {n}");
    }
}

/// `history.actions`' window is `(end - window, end]` too: a drain exactly a window old is out,
/// one a second younger is in.
#[test]
fn actions_windows_exclude_the_window_start() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::new();
    let first = failure("vm1", "windows", "eastus", start);
    h.record(&first);
    h.record_decision(&first, &decision(&first, "drain", &[]));
    let inside = failure("vm1", "windows", "eastus", start + Duration::seconds(3599));
    assert!(drained_before(&h, &inside, "1h"));
    let edge = failure("vm1", "windows", "eastus", start + Duration::seconds(3600));
    assert!(!drained_before(&h, &edge, "1h"));
}

/// Integer fields (the fault and update domains) are remembered, so a history filter can
/// count by them.
#[test]
fn history_filters_on_integer_fields() {
    let start = t("2021-10-13T14:00:00Z");
    let ev = |vm: &str, fd: i64, s: i64| {
        Event::from_json_str(&format!(
            r#"{{"id":"azure.arm:{vm}","time":"{}","source":"azure.arm","kind":"operation_failure",
            "resource":{{"id":"{vm}","region":"eastus","fault_domain":{fd},"update_domain":{fd}}},
            "failure":{{"operation":"create","code":"X","category":"vm_agent","attempt":1}}}}"#,
            (start + Duration::seconds(s)).to_rfc3339()
        ))
        .unwrap()
    };
    let mut h = History::new();
    h.record(&ev("a", 1, 0));
    h.record(&ev("b", 1, 1));
    h.record(&ev("c", 2, 2));
    let probe = ev("c", 2, 2);
    for (path, fd, want) in [
        ("resource.fault_domain", 1, 2),
        ("resource.fault_domain", 2, 1),
        ("resource.update_domain", 1, 2),
    ] {
        let e = engine(&format!(
            "policies:\n  - name: p\n    on: [operation_failure]\n    when: 'history.count({{\"{path}\": {fd}}}, duration(\"1h\")) == {want}'\n    action: drain\n"
        ));
        let d = e.decide(&probe, &Ctx::new(probe.time).with_history(&h));
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.action, Action::Drain, "{path} == {fd}");
    }
}

/// Escalation keys expire with the retention, each at its own time, also when newer keys
/// were fired since (the sweep runs once the oldest may have expired).
#[test]
fn escalation_keys_expire_one_retention_period_after_they_fired() {
    let start = t("2021-10-13T14:00:00Z");
    let mut h = History::with_limits(100, 3600);
    let decide = |h: &mut History, vm: &str, s: i64, keys: &[&str]| {
        let ev = failure(vm, "windows", "eastus", start + Duration::seconds(s));
        h.record(&ev);
        h.record_decision(&ev, &decision(&ev, "none", keys));
    };
    decide(&mut h, "vm0", 0, &["a"]);
    decide(&mut h, "vm1", 10, &["b"]);
    decide(&mut h, "vm2", 3600, &[]);
    assert!(h.fired("a") && h.fired("b"), "exactly 3600 s old: kept");
    decide(&mut h, "vm3", 3601, &[]);
    assert!(!h.fired("a") && h.fired("b"), "a is 3601 s old, b 3591 s");
    decide(&mut h, "vm4", 3611, &["c"]);
    assert!(!h.fired("b") && h.fired("c"));
}
