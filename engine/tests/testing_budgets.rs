//! Budgets in `keel test` sequences: held, released and escalated decisions on the virtual
//! clock, the expectations that must fail and do, invalid files with positions, and the
//! properties of the gate over generated sequences (arrival order, capacity, deadlines).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel_engine::testing::{self, StepResult, TestOptions, TestReport};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/testing/budgets")
        .join(name)
}

fn step<'a>(r: &'a TestReport, suffix: &str) -> &'a StepResult {
    r.steps()
        .find(|s| s.id.ends_with(suffix))
        .unwrap_or_else(|| panic!("no step {suffix}"))
}

#[test]
fn held_decisions_are_released_oldest_first_and_escalate_at_their_deadline() {
    let r = testing::run(&data("ok"), &TestOptions::default()).unwrap();
    let failed: Vec<_> = r.steps().filter(|s| !s.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The report carries what the gate did.
    let c = step(&r, "::the case's budgets replace the file's::c");
    assert_eq!(c.held.len(), 1);
    assert_eq!(c.held[0].scope, "two/web");
    assert!(c.held[0]
        .reason
        .starts_with("held: budget two/web full, 2/2 in flight, holder test:"));
    assert_eq!(
        c.held[0].deadline.unwrap().to_rfc3339(),
        "2026-03-01T00:10:10+00:00"
    );
    let look = step(&r, "::the case's budgets replace the file's::look");
    assert_eq!(look.decisions.len(), 0);
    assert_eq!(look.released.len(), 1);
    assert!(look.released[0].step.ends_with("::c"));
    assert_eq!(
        look.released[0].at.to_rfc3339(),
        "2026-03-01T00:01:00+00:00",
        "at the instant a's runbook ended, not at the look"
    );
    let esc = step(&r, "::a held drain escalates at its deadline_s::step 4");
    assert_eq!(esc.escalated.len(), 1);
    let why = esc.escalated[0].reason.as_deref().unwrap();
    assert!(
        why.starts_with(
            "held past its deadline (2026-03-01T00:11:00.000Z) by budget `per-set/web`: held: \
             budget per-set/web full, 1/1 in flight, holder test:"
        ) && why.ends_with(" until 2026-03-01T00:20:00.000Z"),
        "{why}"
    );
    // JSON and JUnit carry them too.
    let json = serde_json::to_value(&r).unwrap();
    let c = &json["files"][0]["cases"][2]["steps"];
    assert_eq!(c[2]["held"][0]["scope"], "two/web");
    assert_eq!(c[2]["held"][0]["deadline"], "2026-03-01T00:10:10Z");
    assert_eq!(c[4]["released"][0]["at"], "2026-03-01T00:01:00Z");
    assert!(c[0].get("held").is_none(), "absent when empty");
    let junit = r.to_junit();
    assert!(junit.contains("<system-out>released test:"), "{junit}");
    assert!(junit.contains("<system-out>escalated test:"), "{junit}");
}

#[test]
fn wrong_budget_expectations_fail_with_expected_and_actual() {
    let r = testing::run(&data("failing"), &TestOptions::default()).unwrap();
    assert_eq!(r.failed(), 6);
    let what = |s: &str| {
        let st = step(&r, &format!("::wrong::{s}"));
        st.failures
            .iter()
            .map(|m| (m.what.clone(), m.expected.clone(), m.actual.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        what("a"),
        [("held".into(), "held by a budget".into(), "not held".into())]
    );
    assert_eq!(what("b")[0].1, "not held");
    assert!(what("b")[0].2.starts_with("held by budget `per-set/web`"));
    assert_eq!(what("c")[0].1, "held, the reason containing \"baking\"");
    assert_eq!(what("d")[0].1, "held by budget `per-set/db`");
    // At 5m a's slot frees: b, c and d are released in arrival order (runbooks that end at
    // once free their slot at once).
    assert_eq!(
        what("e"),
        [(
            "released".into(),
            "[\"c\"]".into(),
            "[\"b\", \"c\", \"d\"]".into()
        )]
    );
    assert_eq!(
        what("f"),
        [("escalated".into(), "[\"d\"]".into(), "[]".into())]
    );
}

#[test]
fn invalid_budget_keys_are_errors_with_positions() {
    let err = testing::run(&data("invalid"), &TestOptions::default()).unwrap_err();
    let got: Vec<String> = err
        .diagnostics()
        .iter()
        .map(|d| {
            format!(
                "{}:{}: {}{}",
                d.line(),
                d.column(),
                d.message(),
                d.help().map(|h| format!(" ({h})")).unwrap_or_default()
            )
        })
        .collect();
    let all = got.join("\n");
    for want in [
        "2:62: unknown key `bakee` (did you mean `bake`?)",
        "2:22: unknown field `zonee` in `event.resource`",
        "6:67: expected a whole number from 1 to 1000000, or a percentage",
        "9:19: unknown key `runbok` in a step (did you mean `runbook`?)",
        "9:114: `by: pause`: in `keel test` only budgets hold decisions",
        "10:28: `runbook` must be an offset",
        "10:105: unknown key `hled` in `expect` (did you mean `held`?)",
        "11:39: `released` names `nope`, which is not an earlier step",
        "12:9: give the event",
        "14:5: `held`, `released`, `escalated` and `runbook` need budgets",
    ] {
        assert!(all.contains(want), "{want} in:\n{all}");
    }
}

/// One generated arrival: seconds after the start, its runbook's duration, and how far
/// ahead its NotBefore is (none: only the drain's 600 s deadline).
#[derive(Debug, Clone)]
struct Arrival {
    at: i64,
    run_s: i64,
    not_before: Option<i64>,
}

fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
    proptest::collection::vec(
        (0i64..900, 0i64..400, proptest::option::of(1i64..900)).prop_map(
            |(at, run_s, not_before)| Arrival {
                at,
                run_s,
                not_before,
            },
        ),
        1..14,
    )
    .prop_map(|mut v| {
        v.sort_by_key(|a| a.at);
        v
    })
}

/// A test file: each arrival a reboot of its own VM in availability set `web` (one unit per
/// VM), a budget of `max` in flight with `bake_s`, and a last look an hour later.
fn file(arr: &[Arrival], max: u32, bake_s: i64) -> String {
    let mut s = format!(
        "policies: p.yaml\nbudgets:\n  - {{ name: b, key: event.resource.availability_set, max_in_flight: {max}, bake: {bake_s}s }}\ncases:\n  - name: gen\n    start: 2026-03-01T00:00:00Z\n    steps:\n"
    );
    for (i, a) in arr.iter().enumerate() {
        let nb = a.not_before.map_or_else(String::new, |n| {
            let t = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap()
                + chrono::Duration::seconds(a.at + n);
            format!(", not_before: \"{}\"", t.to_rfc3339())
        });
        s.push_str(&format!(
            "      - {{ name: s{i}, at: {}s, runbook: {}s, event: {{ resource: {{ id: vm{i}, availability_set: web }}, maintenance: {{ type: reboot, status: scheduled{nb} }} }}, expect: {{ action: drain }} }}\n",
            a.at, a.run_s
        ));
    }
    s.push_str("      - { name: end, at: 3h, expect: { released: [], escalated: [] } }\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the arrivals, runbook durations and deadlines: every decision runs at once,
    /// is released once or escalates once (at exactly its deadline, never released after
    /// it); no decision starts while an older one of the group is still held (arrival order);
    /// and the slots taken (runbook plus bake) never exceed the budget.
    #[test]
    fn held_decisions_go_in_arrival_order_within_the_budget_and_their_deadlines(
        arr in arrivals(), max in 1u32..3, bake_s in 0i64..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(data("ok/p.yaml"), dir.path().join("p.yaml")).unwrap();
        let path = dir.path().join("gen.test.yaml");
        std::fs::write(&path, file(&arr, max, bake_s)).unwrap();
        let r = testing::run(&path, &TestOptions::default()).unwrap();
        let steps: Vec<&StepResult> = r.steps().collect();
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap();
        let secs = |t: chrono::DateTime<chrono::Utc>| (t - t0.with_timezone(&chrono::Utc)).num_seconds();
        let idx = |id: &str| id.rsplit("::s").next().and_then(|n| n.parse::<usize>().ok()).unwrap();
        // When each decision started (None: escalated), when each escalated, its deadline.
        let mut start: BTreeMap<usize, i64> = BTreeMap::new();
        let mut escalated: BTreeMap<usize, i64> = BTreeMap::new();
        let mut deadline: BTreeMap<usize, i64> = BTreeMap::new();
        let mut held: Vec<usize> = Vec::new();
        for (i, a) in arr.iter().enumerate() {
            let s = steps[i];
            prop_assert_eq!(s.decisions.len(), 1);
            if let Some(h) = s.held.first() {
                held.push(i);
                deadline.insert(i, secs(h.deadline.unwrap()));
                prop_assert!(h.reason.starts_with("held: budget b/web full, "), "{}", h.reason);
            } else {
                start.insert(i, a.at);
            }
        }
        for s in &steps {
            for rel in &s.released {
                let i = idx(&rel.step);
                prop_assert!(start.insert(i, secs(rel.at)).is_none(), "released twice: {i}");
            }
            for e in &s.escalated {
                let i = idx(&e.step);
                prop_assert!(escalated.insert(i, secs(e.at)).is_none(), "escalated twice: {i}");
            }
        }
        for &i in &held {
            match (start.get(&i), escalated.get(&i)) {
                (Some(st), None) => prop_assert!(*st < deadline[&i], "{i} released at {st}, deadline {}", deadline[&i]),
                (None, Some(at)) => prop_assert_eq!(*at, deadline[&i]),
                other => prop_assert!(false, "decision {i}: {other:?}"),
            }
        }
        // Arrival order: when a decision starts, every older one has started or escalated.
        for (&j, &sj) in &start {
            for i in 0..j {
                let done = start.get(&i).is_some_and(|s| *s <= sj)
                    || escalated.get(&i).is_some_and(|e| *e <= sj);
                prop_assert!(done, "{j} started at {sj} while {i} (older) still held");
            }
        }
        // Capacity: at every start, the slots taken (runbook, then bake) are within the budget.
        for (&j, &sj) in &start {
            let taken = start.iter().filter(|(&i, &si)| {
                si <= sj && sj < si + arr[i].run_s + bake_s
            }).count();
            prop_assert!(taken <= max as usize, "{taken} slots at {sj} (decision {j})");
        }
    }
}
