//! Decision resolution: ranking, escalations, defaults, fast and full mode, runtime errors,
//! retry and defer timing, and the standard policies on the 2021-10-13 events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use chrono::Duration;
use keel_engine::{
    dedup_key, fields, Action, Ctx, Decision, Engine, Event, Mode, Outcome, Severity, Timestamp,
    DEFAULT_DEDUP_WINDOW_S,
};
use serde_json::{json, Value};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn engine(yaml: &str) -> Engine {
    match Engine::builder().add_source("t.yaml", yaml).build() {
        Ok(e) => e,
        Err(e) => panic!("policies do not load:\n{e}"),
    }
}

fn event(v: &Value) -> Event {
    Event::from_json_str(&v.to_string()).unwrap()
}

const NOW: &str = "2021-10-13T14:05:03Z";

fn now() -> Timestamp {
    ts(NOW)
}

fn fast(e: &Engine, ev: &Event) -> Decision {
    e.decide(ev, &Ctx::new(now()))
}

fn full(e: &Engine, ev: &Event) -> Decision {
    e.decide(ev, &Ctx::new(now()).with_mode(Mode::Full))
}

/// An operation failure; `patch` is merged into the top level, `failure` into `failure`.
fn failure_with(resource: Value, failure: Value) -> Event {
    let mut f = json!({
        "operation": "create",
        "code": "ArtifactVersionNotFound",
        "category": "vm_agent",
        "attempt": 1
    });
    for (k, v) in failure.as_object().unwrap() {
        f[k] = v.clone();
    }
    event(&json!({
        "id": "azure.arm:op-1",
        "time": "2021-10-13T14:05:00Z",
        "source": "azure.arm",
        "kind": "operation_failure",
        "resource": resource,
        "failure": f
    }))
}

fn win_failure() -> Event {
    failure_with(
        json!({"id": "vm-1", "name": "web-1", "os": "windows", "region": "eastus2"}),
        json!({}),
    )
}

fn maintenance(not_before: Option<&str>) -> Event {
    let mut m = json!({"type": "reboot", "status": "scheduled", "duration_s": 300});
    if let Some(nb) = not_before {
        m["not_before"] = json!(nb);
    }
    event(&json!({
        "id": "azure.scheduled_events:ev-1",
        "time": "2021-10-13T14:00:00Z",
        "source": "azure.scheduled_events",
        "kind": "maintenance",
        "resource": {"id": "vm-1", "name": "web-1", "os": "linux", "region": "westeurope"},
        "maintenance": m
    }))
}

fn names(v: &[keel_engine::Matched]) -> Vec<&str> {
    v.iter().map(|m| m.policy.as_str()).collect()
}

fn outcome(d: &Decision, policy: &str) -> Outcome {
    d.trace
        .outcome(policy)
        .unwrap_or_else(|| panic!("no trace entry for {policy}: {:?}", d.trace))
}

// ---------------------------------------------------------------------------------------
// Ranking
// ---------------------------------------------------------------------------------------

#[test]
fn higher_priority_wins_whatever_the_action() {
    let e = engine(
        "policies:
  - name: low-drain
    on: [operation_failure]
    action: drain
    priority: 10
  - name: high-ack
    on: [operation_failure]
    action: acknowledge
    priority: 20
    reason: high wins
",
    );
    let d = fast(&e, &win_failure());
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(d.policy.as_deref(), Some("high-ack"));
    assert_eq!(d.reason.as_deref(), Some("high wins"));
    assert_eq!(d.event_id, "azure.arm:op-1");

    let d = full(&e, &win_failure());
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(names(&d.matched), ["high-ack", "low-drain"]);
    assert_eq!(d.matched[0].priority, 20);
    assert_eq!(d.matched[1].action, Action::Drain);
}

#[test]
fn negative_priorities_rank_below_the_default_zero() {
    let e = engine(
        "policies:
  - name: neg
    on: [operation_failure]
    action: drain
    priority: -5
  - name: zero
    on: [operation_failure]
    action: none
",
    );
    let d = fast(&e, &win_failure());
    assert_eq!(d.policy.as_deref(), Some("zero"));
    assert_eq!(d.not_evaluated, ["neg"]);
}

#[test]
fn equal_priority_ties_break_by_action_severity_then_name() {
    // Written in the opposite order of their rank.
    let e = engine(
        "policies:
  - name: a-none
    on: [operation_failure]
    action: none
  - name: a-ack
    on: [operation_failure]
    action: acknowledge
  - name: a-defer
    on: [operation_failure]
    action: defer
    params: { delay: 60 }
  - name: a-retry
    on: [operation_failure]
    action: retry
  - name: a-rwa
    on: [operation_failure]
    action: retry_without_agent
  - name: z-drain
    on: [operation_failure]
    action: drain
  - name: b-drain
    on: [operation_failure]
    action: drain
",
    );
    let d = full(&e, &win_failure());
    assert_eq!(d.action, Action::Drain);
    assert_eq!(d.policy.as_deref(), Some("b-drain"), "name breaks the tie");
    let want = [
        "b-drain", "z-drain", "a-rwa", "a-retry", "a-defer", "a-ack", "a-none",
    ];
    assert_eq!(names(&d.matched), want);
    // The trace and `policies()` are in the same rank order.
    let trace: Vec<&str> = d.trace.iter().map(|(p, _)| p).collect();
    assert_eq!(trace, want);
    let infos: Vec<String> = e.policies().map(|p| p.name).collect();
    assert_eq!(infos, want);

    // Peel the winners off one by one: each next action wins in turn.
    let order = [
        ("drain", Action::Drain),
        ("retry_without_agent", Action::RetryWithoutAgent),
        ("retry", Action::Retry),
        ("defer", Action::Defer),
        ("acknowledge", Action::Acknowledge),
        ("none", Action::None),
    ];
    for i in 0..order.len() {
        let mut src = String::from("policies:\n");
        // Lower-severity actions first in the file.
        for (j, (name, _)) in order.iter().enumerate().skip(i).rev() {
            src.push_str(&format!(
                "  - name: p{j}\n    on: [operation_failure]\n    action: {name}\n"
            ));
            if *name == "defer" {
                src.push_str("    params: { delay: 60 }\n");
            }
        }
        let d = fast(&engine(&src), &win_failure());
        assert_eq!(d.action, order[i].1, "{src}");
        assert_eq!(d.policy.as_deref(), Some(format!("p{i}").as_str()));
    }
}

// ---------------------------------------------------------------------------------------
// Escalations and dedup keys
// ---------------------------------------------------------------------------------------

const ESCALATING: &str = r#"policies:
  - name: retry-it
    on: [operation_failure]
    action: retry
    priority: 100
  - name: page-region
    on: [operation_failure]
    when: event.failure.category == "vm_agent"
    action: escalate
    reason_expr: '"agent missing in " + event.resource.region'
    params:
      severity: critical
      dedup: { by: [resource.region], window: 1h }
  - name: page-vm
    on: [operation_failure]
    when: event.failure.code == "ArtifactVersionNotFound"
    action: escalate
    priority: 500
    params: { severity: warning }
  - name: page-never
    on: [operation_failure]
    when: event.failure.code == "SomethingElse"
    action: escalate
"#;

#[test]
fn escalations_are_collected_separately_from_the_winner() {
    let e = engine(ESCALATING);
    for d in [fast(&e, &win_failure()), full(&e, &win_failure())] {
        assert_eq!(d.action, Action::Retry, "an escalation never wins");
        assert_eq!(d.policy.as_deref(), Some("retry-it"));
        let esc: Vec<&str> = d.escalations.iter().map(|e| e.policy.as_str()).collect();
        assert_eq!(esc, ["page-vm", "page-region"]);
        assert_eq!(d.escalations[0].severity, Severity::Warning);
        assert_eq!(d.escalations[1].severity, Severity::Critical);
        assert_eq!(d.escalations[1].reason, "agent missing in eastus2");
        // Without reason or description the reason is the name.
        assert_eq!(d.escalations[0].reason, "page-vm");
        // One escalation per key: no two share one.
        assert_ne!(d.escalations[0].key, d.escalations[1].key);
        assert_eq!(d.escalations[0].key.len(), 64);
        // Matching escalate policies are listed as matched too.
        assert!(names(&d.matched).contains(&"page-region"));
        assert!(names(&d.matched).contains(&"page-vm"));
        assert!(!names(&d.matched).contains(&"page-never"));
    }
}

#[test]
fn dedup_key_groups_vms_by_region_within_the_window() {
    let e = engine(ESCALATING);
    let key = |id: &str, region: &str, time: &str| {
        let mut ev = failure_with(
            json!({"id": id, "os": "linux", "region": region}),
            json!({}),
        );
        ev.time = ts(time);
        let d = fast(&e, &ev);
        let esc = d
            .escalations
            .iter()
            .find(|x| x.policy == "page-region")
            .unwrap();
        (esc.key.clone(), ev)
    };
    let (k1, ev1) = key("vm-1", "eastus2", "2021-10-13T14:05:00Z");
    let (k2, _) = key("vm-2", "eastus2", "2021-10-13T14:59:59Z");
    let (k3, _) = key("vm-3", "westeurope", "2021-10-13T14:05:00Z");
    let (k4, _) = key("vm-1", "eastus2", "2021-10-13T15:00:00Z");
    assert_eq!(k1, k2, "same region, same hour bucket");
    assert_ne!(k1, k3, "another region");
    assert_ne!(k1, k4, "the next window bucket");

    // The key is the public function of policy name, dedup paths and bucket.
    let region = fields::lookup("resource.region").unwrap();
    assert_eq!(k1, dedup_key("page-region", &[region], &ev1, 3600));
    // Pinned: hosts of different versions in one fleet must compute the same key. SHA-256 of
    // the name, 0x1f, `resource.region=eastus2`, 0x1e and the hour bucket (453926).
    assert_eq!(
        k1,
        "5ff7660e6f45029a2ca2f0800641e46976a6ab2caab0715d032dddf0892c8e26"
    );
    assert_ne!(k1, dedup_key("page-regio", &[region], &ev1, 3600));
    assert_ne!(k1, dedup_key("page-region", &[region], &ev1, 60));

    // Without `dedup.by` the key is per resource id, with the default window.
    let id = fields::lookup("resource.id").unwrap();
    let vm_key = |vm: &str| {
        let ev = failure_with(
            json!({"id": vm, "os": "linux", "region": "eastus2"}),
            json!({}),
        );
        let d = fast(&e, &ev);
        let k = d
            .escalations
            .iter()
            .find(|x| x.policy == "page-vm")
            .unwrap()
            .key
            .clone();
        assert_eq!(k, dedup_key("page-vm", &[id], &ev, DEFAULT_DEDUP_WINDOW_S));
        k
    };
    assert_ne!(vm_key("vm-1"), vm_key("vm-2"));
    assert_eq!(vm_key("vm-1"), vm_key("vm-1"));
}

#[test]
fn dedup_key_distinguishes_absent_from_empty_and_values() {
    let region = fields::lookup("resource.region").unwrap();
    let with = |r: Value| failure_with(json!({ "region": r }), json!({}));
    let absent = failure_with(json!({}), json!({}));
    let k_absent = dedup_key("p", &[region], &absent, 3600);
    let k_empty = dedup_key("p", &[region], &with(json!("")), 3600);
    let k_a = dedup_key("p", &[region], &with(json!("a")), 3600);
    assert_ne!(k_absent, k_empty);
    assert_ne!(k_empty, k_a);
    // A window of 0 or less is treated as 1 second, never a division by zero.
    assert_eq!(
        dedup_key("p", &[region], &absent, 0),
        dedup_key("p", &[region], &absent, 1)
    );
}

/// The dedup key of `policy`'s escalation when `e` decides `ev`.
fn esc_key(e: &Engine, ev: &Event, policy: &str) -> String {
    let d = fast(e, ev);
    match d.escalations.iter().find(|x| x.policy == policy) {
        Some(x) => x.key.clone(),
        None => panic!("no escalation by {policy}: {d:?}"),
    }
}

#[test]
fn dedup_by_int_bool_and_time_fields_keys_on_their_values() {
    // Grouping pages by a number, a flag or a time (`failure.http_status`, `failure.transient`,
    // `maintenance.not_before`) must separate events that differ only there: were the value
    // left out, every event of the resource would share one key and its later pages be
    // dropped as repeats.
    let e = engine(
        r#"policies:
  - name: page-by-status
    on: [operation_failure]
    action: escalate
    params: { dedup: { by: [failure.http_status] } }
  - name: page-by-transient
    on: [operation_failure]
    action: escalate
    params: { dedup: { by: [failure.transient] } }
  - name: page-by-window
    on: [maintenance]
    action: escalate
    params: { dedup: { by: [maintenance.not_before] } }
"#,
    );
    let vm = json!({"id": "vm-1", "name": "web-1", "region": "eastus2"});
    let failure = |status: i64, transient: bool| {
        failure_with(
            vm.clone(),
            json!({ "http_status": status, "transient": transient }),
        )
    };
    let status = |ev: &Event| esc_key(&e, ev, "page-by-status");
    assert_eq!(status(&failure(409, true)), status(&failure(409, false)));
    assert_ne!(status(&failure(409, true)), status(&failure(500, true)));
    let transient = |ev: &Event| esc_key(&e, ev, "page-by-transient");
    assert_eq!(
        transient(&failure(409, true)),
        transient(&failure(500, true))
    );
    assert_ne!(
        transient(&failure(409, true)),
        transient(&failure(409, false))
    );
    let window = |nb: Duration| {
        let ev = maintenance(Some(&(now() + nb).to_rfc3339()));
        esc_key(&e, &ev, "page-by-window")
    };
    assert_eq!(window(Duration::minutes(30)), window(Duration::minutes(30)));
    assert_ne!(window(Duration::minutes(30)), window(Duration::minutes(90)));
}

#[test]
fn dedup_by_paths_all_absent_falls_back_to_the_resource() {
    // A bare event with none of the `dedup.by` values must not merge with unrelated
    // resources' events under one key: the resource's name stands in for the missing values.
    let e = engine(
        r#"policies:
  - name: page-region
    on: [operation_failure]
    action: escalate
    params: { dedup: { by: [resource.region] } }
"#,
    );
    let key = |name: &str| {
        let ev = failure_with(json!({ "id": name, "name": name }), json!({}));
        esc_key(&e, &ev, "page-region")
    };
    assert_eq!(key("web-1"), key("web-1"));
    assert_ne!(key("web-1"), key("web-2"));
}

// ---------------------------------------------------------------------------------------
// Defaults, fast and full mode
// ---------------------------------------------------------------------------------------

#[test]
fn default_action_applies_when_nothing_matches() {
    let src = "policies:
  - name: only-linux
    on: [operation_failure]
    when: event.resource.os == \"linux\"
    action: drain
";
    let d = fast(&engine(src), &win_failure());
    assert_eq!(d.action, Action::None);
    assert_eq!(d.policy, None);
    assert_eq!(d.reason, None);
    assert!(d.matched.is_empty());
    assert!(d.params.is_empty());
    assert!(d.retry.is_none() && d.due.is_none());

    let e = Engine::builder()
        .add_source("t.yaml", src)
        .default_action(Action::Acknowledge)
        .build()
        .unwrap();
    let d = fast(&e, &win_failure());
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(d.policy, None);

    // A policy for another kind never applies.
    let d = fast(&e, &maintenance(None));
    assert_eq!(d.action, Action::Acknowledge);
    assert!(d.matched.is_empty());
}

const RANKED: &str = r#"policies:
  - name: top
    on: [operation_failure]
    when: event.failure.attempt >= 1
    action: retry_without_agent
    priority: 100
  - name: middle
    on: [operation_failure]
    action: drain
    priority: 50
  - name: bottom
    on: [operation_failure]
    when: event.resource.os == "windows"
    action: retry
    priority: 10
  - name: esc-low
    on: [operation_failure]
    when: event.failure.category == "vm_agent"
    action: escalate
    priority: -100
  - name: esc-false
    on: [operation_failure]
    when: event.failure.attempt > 10
    action: escalate
    priority: -100
"#;

#[test]
fn fast_mode_skips_lower_candidates_but_evaluates_every_escalation() {
    let e = engine(RANKED);
    let d = fast(&e, &win_failure());
    assert_eq!(d.action, Action::RetryWithoutAgent);
    assert_eq!(d.policy.as_deref(), Some("top"));
    assert_eq!(d.not_evaluated, ["middle", "bottom"]);
    assert_eq!(names(&d.matched), ["top", "esc-low"]);
    assert_eq!(d.escalations.len(), 1);
    assert_eq!(d.escalations[0].policy, "esc-low");
    assert!(d.trace.is_empty(), "no trace in fast mode");

    let d = full(&e, &win_failure());
    assert_eq!(d.policy.as_deref(), Some("top"));
    assert!(d.not_evaluated.is_empty());
    assert_eq!(names(&d.matched), ["top", "middle", "bottom", "esc-low"]);
    assert_eq!(d.escalations.len(), 1);
    assert_eq!(outcome(&d, "esc-false"), Outcome::False);
    assert_eq!(d.trace.len(), e.len());
}

#[test]
fn full_mode_trace_records_every_outcome() {
    let e = engine(
        r#"policies:
  - name: other-kind
    on: [health]
    action: drain
    priority: 90
  - name: indexed-miss
    on: [operation_failure]
    when: event.failure.code == "OtherCode" && event.failure.attempt > 0
    action: drain
    priority: 80
  - name: indexed-miss-in
    on: [operation_failure]
    when: event.resource.region in ["westeurope", "northeurope"]
    action: drain
    priority: 75
  - name: errored
    on: [operation_failure]
    when: event.resource.os == "windows"
    action: drain
    priority: 70
  - name: false-one
    on: [operation_failure]
    when: event.failure.attempt > 5
    action: drain
    priority: 60
  - name: matched-one
    on: [operation_failure]
    when: event.failure.code == "ArtifactVersionNotFound"
    action: retry
    priority: 50
  - name: also-matched
    on: [operation_failure]
    action: none
    priority: 40
"#,
    );
    // No `os`, so `errored` fails at run time.
    let ev = failure_with(json!({"id": "vm-9", "region": "eastus2"}), json!({}));
    let d = full(&e, &ev);
    let got: Vec<(&str, Outcome)> = d.trace.iter().collect();
    assert_eq!(
        got,
        [
            ("other-kind", Outcome::SkippedByIndex),
            ("indexed-miss", Outcome::SkippedByIndex),
            ("indexed-miss-in", Outcome::SkippedByIndex),
            ("errored", Outcome::Errored),
            ("false-one", Outcome::False),
            ("matched-one", Outcome::Matched),
            ("also-matched", Outcome::Matched),
        ]
    );
    assert_eq!(d.policy.as_deref(), Some("matched-one"));
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].policy, "errored");

    // The index selects on the value: with the other code the policy is evaluated.
    let ev = failure_with(
        json!({"id": "vm-9", "region": "northeurope", "os": "linux"}),
        json!({"code": "OtherCode"}),
    );
    let d = full(&e, &ev);
    assert_eq!(outcome(&d, "indexed-miss"), Outcome::Matched);
    assert_eq!(outcome(&d, "indexed-miss-in"), Outcome::Matched);
    assert_eq!(outcome(&d, "errored"), Outcome::SkippedByIndex);
    assert_eq!(outcome(&d, "matched-one"), Outcome::SkippedByIndex);
    assert_eq!(d.policy.as_deref(), Some("indexed-miss"));
    assert!(d.errors.is_empty());

    // Serializes and reads back unchanged.
    let text = serde_json::to_string(&d).unwrap();
    let back: Decision = serde_json::from_str(&text).unwrap();
    assert_eq!(back, d);
}

// ---------------------------------------------------------------------------------------
// Runtime errors
// ---------------------------------------------------------------------------------------

#[test]
fn runtime_error_is_recorded_and_others_still_decide() {
    let e = engine(
        r#"policies:
  - name: needs-os
    on: [operation_failure]
    when: event.resource.os == "windows"
    action: retry_without_agent
    priority: 100
  - name: guarded
    on: [operation_failure]
    when: has(event.resource.os) && event.resource.os == "windows"
    action: drain
    priority: 90
  - name: absorbed
    on: [operation_failure]
    when: event.resource.os == "windows" && event.failure.attempt > 100
    action: drain
    priority: 80
  - name: fallback
    on: [operation_failure]
    when: event.failure.category == "vm_agent"
    action: retry
    priority: 10
"#,
    );
    let no_os = failure_with(json!({"id": "vm-1", "region": "eastus2"}), json!({}));
    let d = fast(&e, &no_os);
    assert_eq!(d.action, Action::Retry);
    assert_eq!(d.policy.as_deref(), Some("fallback"));
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert_eq!(d.errors[0].policy, "needs-os");
    assert!(
        d.errors[0].message.contains("os"),
        "{}",
        d.errors[0].message
    );

    let d = full(&e, &no_os);
    assert_eq!(outcome(&d, "needs-os"), Outcome::Errored);
    // has() guards the read: with `os` absent the policy is false, which the index proves
    // without evaluating it.
    assert_eq!(outcome(&d, "guarded"), Outcome::SkippedByIndex);
    // `&&` absorbs the error when the other side is false, as CEL has it.
    assert_eq!(outcome(&d, "absorbed"), Outcome::False);
    assert_eq!(d.errors.len(), 1);

    // With the field present, no errors at all.
    let d = full(&e, &win_failure());
    assert_eq!(d.policy.as_deref(), Some("needs-os"));
    assert!(d.errors.is_empty());
    assert_eq!(outcome(&d, "guarded"), Outcome::Matched);
}

#[test]
fn reading_a_section_the_event_lacks_is_an_error_not_a_match() {
    // A maintenance policy that is also listed for operation failures reads a missing section.
    let e = engine(
        r#"policies:
  - name: wrong-section
    on: [operation_failure]
    when: event.maintenance.duration_s > 10
    action: drain
  - name: ok
    on: [operation_failure]
    when: '!has(event.maintenance)'
    action: acknowledge
"#,
    );
    let d = full(&e, &win_failure());
    assert_eq!(outcome(&d, "wrong-section"), Outcome::Errored);
    assert!(
        d.errors[0].message.contains("maintenance"),
        "{:?}",
        d.errors
    );
    assert_eq!(d.action, Action::Acknowledge);
}

#[test]
fn reason_expr_error_falls_back_to_the_description() {
    let e = engine(
        r#"policies:
  - name: p
    description: the description
    on: [operation_failure]
    action: drain
    reason_expr: '"zone " + event.resource.zone'
"#,
    );
    let d = fast(&e, &win_failure());
    assert_eq!(d.action, Action::Drain);
    assert_eq!(d.reason.as_deref(), Some("the description"));
    assert_eq!(d.errors.len(), 1);
    assert!(
        d.errors[0].message.starts_with("`reason_expr`"),
        "{:?}",
        d.errors
    );

    let ev = failure_with(json!({"zone": "2"}), json!({}));
    let d = fast(&e, &ev);
    assert_eq!(d.reason.as_deref(), Some("zone 2"));
    assert!(d.errors.is_empty());
}

// ---------------------------------------------------------------------------------------
// Retry
// ---------------------------------------------------------------------------------------

#[test]
fn retry_not_before_uses_retry_after_then_backoff() {
    let e = engine(
        r#"policies:
  - name: retry-exp
    on: [operation_failure]
    when: event.failure.code == "Throttled"
    action: retry
    params: { delay_s: 10, backoff: exponential, max_attempts: 5 }
  - name: retry-fixed
    on: [operation_failure]
    when: event.failure.code == "Fixed"
    action: retry
    params: { delay_s: 10, backoff: fixed }
  - name: retry-now
    on: [operation_failure]
    when: event.failure.code == "NoDelay"
    action: retry
"#,
    );
    let fail = |code: &str, extra: Value| {
        let mut f = extra;
        f["code"] = json!(code);
        failure_with(json!({"id": "vm-1"}), f)
    };

    // The vendor's Retry-After wins over the policy's delay.
    let d = fast(
        &e,
        &fail("Throttled", json!({"attempt": 3, "retry_after_s": 30})),
    );
    assert_eq!(d.action, Action::Retry);
    assert_eq!(
        d.retry.as_ref().unwrap().not_before,
        Some(now() + Duration::seconds(30))
    );

    // Exponential: 10 s * 2^(attempt-1).
    for (attempt, secs) in [(1, 10), (2, 20), (3, 40), (5, 160)] {
        let d = fast(&e, &fail("Throttled", json!({ "attempt": attempt })));
        assert_eq!(
            d.retry.as_ref().unwrap().not_before,
            Some(now() + Duration::seconds(secs)),
            "attempt {attempt}"
        );
    }
    assert_eq!(
        fast(&e, &fail("Throttled", json!({})))
            .params
            .get("delay_s"),
        Some(&json!(10))
    );

    let d = fast(&e, &fail("Fixed", json!({"attempt": 3})));
    assert_eq!(
        d.retry.unwrap().not_before,
        Some(now() + Duration::seconds(10))
    );

    let d = fast(&e, &fail("NoDelay", json!({"attempt": 3})));
    let retry = d.retry.unwrap();
    assert_eq!(retry.not_before, None);
    assert_eq!(retry.request, None);
}

#[test]
fn retry_carries_the_request_and_retry_without_agent_warns() {
    let e = engine(
        r#"policies:
  - name: r
    on: [operation_failure]
    when: event.resource.os == "linux"
    action: retry
  - name: rwa
    on: [operation_failure]
    when: event.resource.os == "windows"
    action: retry_without_agent
"#,
    );
    let body = json!({"properties": {"osProfile": {"computerName": "web-1"}}});
    let linux = failure_with(json!({"os": "linux"}), json!({ "request": body.clone() }));
    let d = fast(&e, &linux);
    assert_eq!(d.action, Action::Retry);
    assert_eq!(d.retry.unwrap().request, Some(body.clone()));
    assert!(d.warnings.is_empty());

    // A body the transform refuses (not a VM create): no request to resubmit, a warning and
    // an escalation so that a human knows the retry cannot happen.
    let win = failure_with(json!({"os": "windows"}), json!({ "request": body }));
    let d = fast(&e, &win);
    assert_eq!(d.action, Action::RetryWithoutAgent);
    assert_eq!(d.retry.unwrap().request, None);
    assert_eq!(d.warnings.len(), 1);
    assert!(
        d.warnings[0].contains("retry_without_agent cannot rewrite the request"),
        "{:?}",
        d.warnings
    );
    assert_eq!(d.escalations.len(), 1);
    assert_eq!(d.escalations[0].policy, "rwa");

    // A real Windows VM create body is rewritten: no agent, no extension operations.
    let create = json!({
        "location": "eastus2",
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "imageReference": {"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter", "version": "latest"},
                "osDisk": {"createOption": "FromImage", "osType": "Windows"}
            },
            "osProfile": {"computerName": "web-1", "adminUsername": "azureuser", "windowsConfiguration": {"provisionVMAgent": true}},
            "networkProfile": {"networkInterfaces": [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic"}]}
        }
    });
    let win = failure_with(json!({"os": "windows"}), json!({ "request": create }));
    let d = fast(&e, &win);
    assert_eq!(d.action, Action::RetryWithoutAgent);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let req = d.retry.unwrap().request.unwrap();
    assert_eq!(
        req["properties"]["osProfile"]["windowsConfiguration"]["provisionVMAgent"],
        json!(false)
    );
    assert_eq!(
        req["properties"]["osProfile"]["allowExtensionOperations"],
        json!(false)
    );
}

#[test]
fn exhausted_retry_budget_cannot_win() {
    let e = engine(
        r#"policies:
  - name: retry-twice
    on: [operation_failure]
    action: retry
    priority: 100
    params: { max_attempts: 2 }
  - name: then-drain
    on: [operation_failure]
    action: drain
    priority: 10
"#,
    );
    let at = |n: i64| failure_with(json!({"id": "vm-1"}), json!({ "attempt": n }));

    for n in [1, 2] {
        let d = fast(&e, &at(n));
        assert_eq!(d.policy.as_deref(), Some("retry-twice"), "attempt {n}");
        assert!(d.warnings.is_empty());
    }
    for mode in [Mode::Fast, Mode::Full] {
        let d = e.decide(&at(3), &Ctx::new(now()).with_mode(mode));
        assert_eq!(d.action, Action::Drain);
        assert_eq!(d.policy.as_deref(), Some("then-drain"));
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("retry-twice"));
        assert!(d.warnings[0].contains("max_attempts 2"));
        assert!(!names(&d.matched).contains(&"retry-twice"));
        assert!(d.not_evaluated.is_empty());
        if mode == Mode::Full {
            assert_eq!(outcome(&d, "retry-twice"), Outcome::Exhausted);
            assert_eq!(outcome(&d, "then-drain"), Outcome::Matched);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Defer
// ---------------------------------------------------------------------------------------

#[test]
fn defer_due_from_delay_and_until() {
    let e = engine(
        r#"policies:
  - name: by-delay
    on: [maintenance]
    when: event.maintenance.duration_s < 600
    action: defer
    params: { delay: 15m }
  - name: by-until
    on: [maintenance]
    when: event.maintenance.duration_s >= 600
    action: defer
    params: { until: 'now + duration("1h")' }
"#,
    );
    let far = "2021-10-14T00:00:00Z";
    let d = fast(&e, &maintenance(Some(far)));
    assert_eq!(d.action, Action::Defer);
    assert_eq!(d.policy.as_deref(), Some("by-delay"));
    assert_eq!(d.due, Some(now() + Duration::minutes(15)));
    assert!(d.escalations.is_empty());
    assert!(d.warnings.is_empty());
    assert_eq!(d.params.get("delay"), Some(&json!("15m")));

    let mut long = maintenance(Some(far));
    long.maintenance.as_mut().unwrap().duration_s = Some(900);
    let d = fast(&e, &long);
    assert_eq!(d.policy.as_deref(), Some("by-until"));
    assert_eq!(d.due, Some(now() + Duration::hours(1)));
}

#[test]
fn deferral_past_not_before_escalates_and_warns() {
    let e = engine(
        r#"policies:
  - name: wait-an-hour
    on: [maintenance]
    action: defer
    params: { delay: 1h }
"#,
    );
    // not_before 30 minutes from now: deferring an hour overshoots it.
    let soon = (now() + Duration::minutes(30)).to_rfc3339();
    let d = fast(&e, &maintenance(Some(&soon)));
    assert_eq!(d.action, Action::Defer);
    assert_eq!(d.due, Some(now() + Duration::hours(1)));
    assert_eq!(d.escalations.len(), 1);
    assert_eq!(d.escalations[0].policy, "wait-an-hour");
    assert!(d.escalations[0]
        .reason
        .contains("past the event's not_before"));
    assert_eq!(d.warnings.len(), 1);
    assert!(d.warnings[0].contains("wait-an-hour"));

    // Not past: no escalation. No not_before: none either.
    let later = (now() + Duration::hours(2)).to_rfc3339();
    assert!(fast(&e, &maintenance(Some(&later))).escalations.is_empty());
    assert!(fast(&e, &maintenance(None)).escalations.is_empty());
}

#[test]
fn deferral_due_exactly_at_not_before_does_not_escalate() {
    // Deferring to the platform's not_before itself is on time: only a due time past it
    // overshoots, and paging for an on-time deferral would be noise.
    let e = engine(
        r#"policies:
  - name: wait-an-hour
    on: [maintenance]
    action: defer
    params: { delay: 1h }
"#,
    );
    let at = (now() + Duration::hours(1)).to_rfc3339();
    let d = fast(&e, &maintenance(Some(&at)));
    assert_eq!(d.action, Action::Defer);
    assert_eq!(d.due, Some(now() + Duration::hours(1)));
    assert!(d.escalations.is_empty(), "{:?}", d.escalations);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

/// A deferral until five minutes before the notice's `not_before`, with `acknowledge` as the
/// default action.
fn until_not_before() -> Engine {
    Engine::builder()
        .add_source(
            "t.yaml",
            r#"policies:
  - name: until-not-before
    on: [maintenance]
    action: defer
    params: { until: 'event.maintenance.not_before - duration("5m")' }
"#,
        )
        .default_action(Action::Acknowledge)
        .build()
        .unwrap()
}

#[test]
fn defer_whose_until_fails_falls_back_to_the_default_action() {
    let e = until_not_before();
    let nb = "2021-10-13T15:00:00Z";
    let d = fast(&e, &maintenance(Some(nb)));
    assert_eq!(d.action, Action::Defer);
    assert_eq!(d.due, Some(ts("2021-10-13T14:55:00Z")));

    let d = fast(&e, &maintenance(None));
    assert_eq!(d.action, Action::Acknowledge, "the default applies");
    assert_eq!(d.policy.as_deref(), Some("until-not-before"));
    assert_eq!(d.due, None);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].message.starts_with("`params.until`"));
    assert!(d.warnings[0].contains("could not compute its due time"));
}

/// A deferral to a time not after the decision has nothing to wait for: decided again at
/// it, the policy would defer to the same past time at every look of the host. The default
/// action applies instead, with a warning naming the policy and both times.
#[test]
fn defer_to_a_time_not_after_now_falls_back_to_the_default_action() {
    let e = until_not_before();
    // Notices given 3 minutes ahead (due 2 minutes ago), and exactly 5 (due now: what the
    // host's decision at the due time sees).
    for (nb, due) in [
        ("2021-10-13T14:08:03Z", "2021-10-13T14:03:03Z"),
        ("2021-10-13T14:10:03Z", NOW),
    ] {
        let d = fast(&e, &maintenance(Some(nb)));
        assert_eq!(d.action, Action::Acknowledge, "{nb}");
        assert_eq!(d.due, None);
        assert_eq!(d.policy.as_deref(), Some("until-not-before"));
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.warnings[0].contains("`until-not-before` deferred until")
                && d.warnings[0].contains(&ts(due).to_rfc3339())
                && d.warnings[0].contains("not after the decision time"),
            "{:?}",
            d.warnings
        );
    }
    // A second later is a deferral.
    let d = fast(&e, &maintenance(Some("2021-10-13T14:10:04Z")));
    assert_eq!(d.action, Action::Defer);
    assert_eq!(d.due, Some(ts("2021-10-13T14:05:04Z")));
}

// ---------------------------------------------------------------------------------------
// `now` and the interpreter fallback
// ---------------------------------------------------------------------------------------

#[test]
fn now_is_the_context_time() {
    let e = engine(
        r#"policies:
  - name: started-late
    on: [maintenance]
    when: now > event.maintenance.not_before
    action: acknowledge
  - name: soon
    on: [maintenance]
    when: event.maintenance.not_before - now < duration("10m")
    action: drain
    priority: -1
"#,
    );
    let ev = maintenance(Some("2021-10-13T15:00:00Z"));
    let at = |t: &str| e.decide(&ev, &Ctx::new(ts(t)).with_mode(Mode::Full));
    let d = at("2021-10-13T14:00:00Z");
    assert_eq!(d.action, Action::None);
    let d = at("2021-10-13T14:55:00Z");
    assert_eq!(d.action, Action::Drain);
    let d = at("2021-10-13T15:00:01Z");
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(outcome(&d, "soon"), Outcome::Matched);
}

#[test]
fn interpreter_only_policies_decide_correctly() {
    let e = engine(
        r#"policies:
  - name: detail-x
    on: [operation_failure]
    when: event.failure.details.exists(d, d.code == "X" && size(d.code) == 1) && event.resource.os == "windows"
    action: drain
    priority: 30
  - name: message-regex
    on: [operation_failure]
    when: event.failure.message.matches("artifact .* not found")
    action: retry
    priority: 20
    reason_expr: '"detail count " + string(size(event.failure.details))'
  - name: native
    on: [operation_failure]
    action: none
"#,
    );
    // `matches` with a literal pattern runs natively, and so does `exists` over the details,
    // but not with `size()` in its body: only the interpreter runs that.
    for p in e.policies() {
        assert_eq!(p.native, p.name != "detail-x", "{}", p.name);
    }
    let ev = |details: Value, message: &str| {
        failure_with(
            json!({"os": "windows"}),
            json!({"details": details, "message": message}),
        )
    };
    let d = full(&e, &ev(json!([{"code": "Y"}, {"code": "X"}]), "nothing"));
    assert_eq!(d.policy.as_deref(), Some("detail-x"));
    assert_eq!(outcome(&d, "message-regex"), Outcome::False);

    let d = full(
        &e,
        &ev(json!([{"code": "Y"}]), "the artifact 'a' was not found"),
    );
    assert_eq!(d.policy.as_deref(), Some("message-regex"));
    assert_eq!(d.reason.as_deref(), Some("detail count 1"));
    assert_eq!(outcome(&d, "detail-x"), Outcome::False);
    assert!(d.errors.is_empty(), "{:?}", d.errors);

    let d = full(&e, &ev(json!([]), "other"));
    assert_eq!(d.policy.as_deref(), Some("native"));

    // The interpreter sees a missing field as an error too.
    let no_msg = failure_with(json!({"os": "windows"}), json!({}));
    let d = full(&e, &no_msg);
    assert_eq!(outcome(&d, "message-regex"), Outcome::Errored);
    assert_eq!(d.policy.as_deref(), Some("native"));
}

// ---------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------

#[test]
fn engine_is_send_and_sync_and_decides_the_same_on_every_thread() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<Decision>();
    assert_send_sync::<Event>();

    let e = Arc::new(engine(ESCALATING));
    let events: Arc<Vec<Event>> = Arc::new(
        (0..50)
            .map(|i| {
                failure_with(
                    json!({"id": format!("vm-{i}"), "region": if i % 2 == 0 { "eastus2" } else { "westus" }}),
                    json!({"attempt": 1 + i % 3}),
                )
            })
            .collect(),
    );
    let reference: Vec<Decision> = events
        .iter()
        .map(|ev| e.decide(ev, &Ctx::new(now()).with_mode(Mode::Full)))
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = Arc::clone(&e);
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for _ in 0..20 {
                    out = events
                        .iter()
                        .map(|ev| e.decide(ev, &Ctx::new(now()).with_mode(Mode::Full)))
                        .collect();
                }
                out
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), reference);
    }
}

#[test]
fn a_window_reaching_past_what_the_bounded_history_dropped_is_warned_per_policy() {
    // A count over a window whose oldest entries the size bound dropped may be low; the
    // decision must say which policy read it, and stay silent for a window the history
    // still covers whole.
    let e = engine(
        r#"policies:
  - name: fleet-hour
    on: [operation_failure]
    when: 'history.count({"failure.category": "vm_agent"}, duration("1h")) > 100'
    action: drain
  - name: fleet-minute
    on: [operation_failure]
    when: 'history.count({"failure.category": "vm_agent"}, duration("1m")) > 100'
    action: drain
"#,
    );
    let mut h = keel_engine::History::with_limits(2, 24 * 3600);
    let start = ts("2021-10-13T14:00:00Z");
    let mut last = None;
    for i in 0..4 {
        let mut ev = win_failure();
        ev.id = format!("azure.arm:op-{i}");
        ev.time = start + Duration::minutes(10 * i);
        h.record(&ev);
        last = Some(ev);
    }
    assert_eq!(h.len(), 2);
    let ev = last.unwrap();
    let d = e.decide(&ev, &Ctx::new(now()).with_mode(Mode::Full).with_history(&h));
    let truncated: Vec<&String> = d
        .warnings
        .iter()
        .filter(|w| w.contains("size bound"))
        .collect();
    assert_eq!(truncated.len(), 1, "{:?}", d.warnings);
    assert!(truncated[0].contains("`fleet-hour`"), "{truncated:?}");

    // Nothing dropped: no warning.
    let mut whole = keel_engine::History::new();
    whole.record(&ev);
    let d = e.decide(&ev, &Ctx::new(now()).with_history(&whole));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn an_engine_debugs_as_its_policy_count_default_action_and_digest() {
    // `{:?}` of an engine ends up in logs and panics: it must say what set is loaded.
    let e = engine(ESCALATING);
    let s = format!("{e:?}");
    assert!(s.starts_with("Engine {"), "{s}");
    assert!(s.contains("policies: 4"), "{s}");
    assert!(s.contains("default_action: None"), "{s}");
    assert!(s.contains(e.digest()), "{s}");
}

// ---------------------------------------------------------------------------------------
// The standard policies on the 2021-10-13 incident
// ---------------------------------------------------------------------------------------

fn data_event(name: &str) -> Event {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/events")
        .join(name);
    Event::from_json_bytes(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn vm_agent_incident_with_the_standard_policies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/standard");
    let e = Engine::from_dir(dir).unwrap();
    let win = data_event("vm-agent-windows-2021-10-13.json");
    let lin = data_event("vm-agent-linux-2021-10-13.json");

    for mode in [Mode::Fast, Mode::Full] {
        let ctx = Ctx::new(now()).with_mode(mode);
        let dw = e.decide(&win, &ctx);
        assert_eq!(dw.action, Action::RetryWithoutAgent);
        assert_eq!(
            dw.policy.as_deref(),
            Some("azure.vm-agent-missing.retry-without-agent")
        );
        assert_eq!(
            dw.reason.as_deref(),
            Some("VM agent artifact unavailable in the region; retrying the create without the agent")
        );
        assert_eq!(dw.params.get("max_attempts"), Some(&json!(1)));
        assert!(dw.retry.is_some());
        assert!(dw.errors.is_empty(), "{:?}", dw.errors);

        let dl = e.decide(&lin, &ctx);
        assert_eq!(dl.action, Action::None);
        assert_eq!(dl.policy, None);
        assert!(dl.errors.is_empty(), "{:?}", dl.errors);

        // One VM alone is not a platform incident: the incident policy needs three VMs of the
        // region in its correlation history, and `decide` has none (it says so).
        for d in [&dw, &dl] {
            assert!(d.escalations.is_empty(), "{:?}", d.escalations);
            assert!(
                d.warnings
                    .iter()
                    .any(|w| w.contains("azure.vm-agent-missing.platform-incident")),
                "{:?}",
                d.warnings
            );
        }
    }

    // The same two events with two more Windows VMs of the region in the history: one page,
    // the same key for both.
    let mut h = keel_engine::History::new();
    let mut others = Vec::new();
    for name in ["w2", "w3"] {
        let mut o = win.clone();
        o.id = format!("azure.arm:{name}");
        o.resource.id = Some(name.into());
        o.resource.name = Some(name.into());
        others.push(o);
    }
    for ev in others.iter().chain([&win, &lin]) {
        h.record(ev);
    }
    let ctx = Ctx::new(now()).with_history(&h);
    let (dw, dl) = (e.decide(&win, &ctx), e.decide(&lin, &ctx));
    for d in [&dw, &dl] {
        assert_eq!(d.escalations.len(), 1, "{:?}", d.escalations);
        let esc = &d.escalations[0];
        assert_eq!(esc.policy, "azure.vm-agent-missing.platform-incident");
        assert_eq!(esc.severity, Severity::Critical);
        assert!(
            esc.reason
                .starts_with("VM agent artifact unavailable in eastus2"),
            "{}",
            esc.reason
        );
    }
    assert_eq!(dw.escalations[0].key, dl.escalations[0].key);

    // A second Windows attempt is past the policy's budget (attempt < 2 in `when`).
    let mut again = win.clone();
    again.failure.as_mut().unwrap().attempt = 2;
    assert_eq!(fast(&e, &again).action, Action::None);
}

/// The events `keel eval` is shown with are the normalizer's own output for ingest bodies that
/// carry the vendor's 2021-10-13 error: regenerate them with `keel normalize --from azure.arm
/// --observed-at 2021-10-13T07:02:15Z engine/tests/data/ingest/<file>` (dropping `raw`).
#[test]
fn the_2021_10_13_eval_events_are_normalizer_output() {
    use keel_engine::normalize::{normalize, Input, NormalizerState};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for os in ["windows", "linux"] {
        let body =
            std::fs::read(dir.join(format!("ingest/vm-agent-{os}-2021-10-13.json"))).unwrap();
        let at = "2021-10-13T07:02:15Z".parse().unwrap();
        let mut evs = normalize(
            "azure.arm",
            &Input::new(&body, at),
            &mut NormalizerState::default(),
        )
        .unwrap();
        assert_eq!(evs.len(), 1);
        let mut ev = evs.remove(0);
        ev.raw = None;
        let committed = data_event(&format!("vm-agent-{os}-2021-10-13.json"));
        assert_eq!(ev, committed, "{os}");
    }
}
