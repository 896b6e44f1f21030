//! The policy test runner's own tests, including cases that must fail and do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use keel_engine::testing::{self, TestOptions};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/testing")
        .join(name)
}

/// A load error's diagnostics as `line:column: message`.
fn messages(err: keel_engine::LoadError) -> Vec<String> {
    err.diagnostics()
        .iter()
        .map(|d| format!("{}:{}: {}", d.line(), d.column(), d.message()))
        .collect()
}

fn failures_of(report: &testing::TestReport, case: &str) -> Vec<String> {
    report
        .steps()
        .filter(|s| s.id.ends_with(&format!("::{case}")))
        .flat_map(|s| s.failures.iter().map(|m| m.what.clone()))
        .collect()
}

#[test]
fn cases_that_must_fail_do() {
    let r = testing::run(&data("failing"), &TestOptions::default()).unwrap();
    assert!(!r.passed());
    assert_eq!(r.failed(), 8);
    assert!(failures_of(&r, "right").is_empty());
    assert_eq!(failures_of(&r, "wrong action"), ["action"]);
    assert_eq!(failures_of(&r, "wrong policy"), ["policy"]);
    assert_eq!(failures_of(&r, "missing escalation"), ["escalations"]);
    assert_eq!(failures_of(&r, "unexpected escalation"), ["escalations"]);
    assert_eq!(failures_of(&r, "should not match"), ["not_matched"]);
    // A runtime error fails a case that does not expect it, and only that case.
    assert_eq!(failures_of(&r, "unexpected runtime error"), ["errors"]);
    assert!(failures_of(&r, "expected runtime error").is_empty());
    // State is carried across a sequence: the second page is a repeat of the first.
    assert!(failures_of(&r, "sequence::step 1").is_empty());
    assert_eq!(failures_of(&r, "sequence::step 2"), ["escalations"]);
    assert_eq!(failures_of(&r, "sequence::totals"), ["totals.pages"]);
}

#[test]
fn a_wrong_expectation_shows_expected_and_actual() {
    let r = testing::run(&data("failing"), &TestOptions::default()).unwrap();
    let step = r
        .steps()
        .find(|s| s.id.ends_with("::wrong action"))
        .unwrap();
    assert_eq!(step.failures[0].expected, "acknowledge");
    assert_eq!(step.failures[0].actual, "drain");
    assert_eq!(step.decisions.len(), 1);
}

#[test]
fn run_pattern_selects_cases() {
    let r = testing::run(&data("failing"), &TestOptions::default().run("policy")).unwrap();
    let ids: Vec<&str> = r.steps().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].ends_with("p.test.yaml::wrong policy"));
    // With a filter, coverage is partial and unreached files are not reported.
    assert!(r.uncovered_files.is_empty());
}

#[test]
fn invalid_test_files_are_errors_with_positions_not_passes() {
    let msgs = messages(testing::run(&data("invalid"), &TestOptions::default()).unwrap_err());
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("4:13: `expect` is empty")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("6:12: invalid event: unknown variant `rebot`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("give the event")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("12:15: unknown key `acton`")),
        "{msgs:?}"
    );
}

/// A step's `at` reads `keel_engine::parse_duration`'s grammar in whole seconds: `1m30s` is an
/// offset, and a bad one is an error at its position that names it.
#[test]
fn step_offsets_take_the_one_duration_grammar() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "policies:\n  - name: a\n    on: [maintenance]\n    action: drain\n",
    )
    .unwrap();
    let ev =
        "event: { maintenance: { type: reboot, status: scheduled } }, expect: { action: drain }";
    std::fs::write(
        dir.path().join("p.test.yaml"),
        format!(
            "cases:\n  - name: s\n    start: 2021-10-13T14:00:00Z\n    steps:\n      - {{ at: 1m30s, {ev} }}\n      - {{ at: 1.5h, {ev} }}\n      - {{ at: 2h1500ms, {ev} }}\n"
        ),
    )
    .unwrap();
    let msgs = messages(testing::run(dir.path(), &TestOptions::default()).unwrap_err());
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].starts_with(
            "6:15: `at` must be an offset like 0s, 30s, 15m, 2h, 1h30m: `1.5h`: fractions are not supported"
        ),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("7:15: `at` must be an offset like 0s, 30s, 15m, 2h, 1h30m: `2h1500ms` is not a whole number of seconds"),
        "{msgs:?}"
    );
}

#[test]
fn a_directory_without_tests_is_an_error() {
    let dir = std::env::temp_dir().join(format!("keel-no-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = testing::run(&dir, &TestOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no test files"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreached_policy_files_fail_the_run() {
    let r = testing::run(&data("uncovered"), &TestOptions::default()).unwrap();
    assert_eq!(r.failed(), 0);
    assert!(!r.passed());
    assert_eq!(r.uncovered_files.len(), 1);
    assert!(r.uncovered_files[0].ends_with("b.yaml"));
    let never: Vec<&str> = r.never_matched().map(|c| c.policy.as_str()).collect();
    assert_eq!(never, ["ack-freezes"]);
}

#[test]
fn mutation_check_finds_vacuous_cases() {
    let m = testing::mutation_check(&data("vacuous"), &TestOptions::default()).unwrap();
    assert_eq!(m.baseline_failures, 0);
    assert_eq!(m.tried, 4);
    assert_eq!(m.survivors.len(), 4, "{:?}", m.survivors);
    let m = testing::mutation_check(&data("failing"), &TestOptions::default()).unwrap();
    assert!(m.baseline_failures > 0);
    assert!(m.survivors.is_empty() && m.tried == 0);
}

#[test]
fn the_standard_library_passes_is_covered_and_is_not_vacuous() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let r = testing::run(&root, &TestOptions::default()).unwrap();
    let failed: Vec<_> = r
        .steps()
        .filter(|s| !s.passed)
        .map(|s| (&s.id, &s.failures))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(r.uncovered_files.is_empty(), "{:?}", r.uncovered_files);
    let never: Vec<&str> = r.never_matched().map(|c| c.policy.as_str()).collect();
    assert!(never.is_empty(), "{never:?}");
    let m = testing::mutation_check(&root, &TestOptions::default()).unwrap();
    assert!(m.survivors.is_empty(), "{:?}", m.survivors);
    assert!(m.tried >= 80);
    // Every policy says which incident or behaviour it encodes.
    let all = keel_engine::Engine::from_dir(&root).unwrap();
    let bare: Vec<String> = all
        .policies()
        .filter(|p| p.description.as_deref().is_none_or(|d| d.trim().len() < 20))
        .map(|p| p.name.clone())
        .collect();
    assert!(bare.is_empty(), "policies without a description: {bare:?}");
}

#[test]
fn junit_names_are_stable_and_escaped() {
    let r = testing::run(&data("failing"), &TestOptions::default()).unwrap();
    let x = r.to_junit();
    assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites"));
    assert!(x.contains("tests=\"11\" failures=\"8\""), "{x}");
    assert!(x.contains("p.test.yaml::sequence::step 2\""), "{x}");
    // Located at the case's line; without a clock every time is 0.
    assert!(
        x.contains("p.test.yaml:5: action: expected acknowledge, got drain\""),
        "{x}"
    );
    assert!(x.contains("time=\"0.000000\""), "{x}");
    assert!(r.steps().all(|s| s.time_s == 0.0 && s.line > 0));
    // The same run gives the same report.
    let again = testing::run(&data("failing"), &TestOptions::default()).unwrap();
    assert_eq!(again.to_junit(), x);
    // With a clock, each step's time is the clock's difference around it.
    fn ticking() -> std::time::Duration {
        static T: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::time::Duration::from_millis(T.fetch_add(250, std::sync::atomic::Ordering::Relaxed))
    }
    let timed = testing::run(
        &data("failing"),
        &TestOptions::default().with_clock(ticking),
    )
    .unwrap();
    assert!(
        timed.steps().all(|s| s.time_s == 0.25),
        "{:?}",
        timed.steps().map(|s| s.time_s).collect::<Vec<_>>()
    );
    assert!(timed.to_junit().contains("time=\"0.250000\""));
}

/// `expect.guard` asserts which blast-radius guard held the action (`null`: none); a guard
/// that does not exist is an error at its position.
#[test]
fn expect_guard_asserts_the_guard_that_held_the_action() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "policies:\n  - name: r\n    on: [operation_failure]\n    action: retry\n",
    )
    .unwrap();
    let step = |vm: &str, guard: &str| {
        format!("      - {{ at: 0s, event: {{ resource: {{ id: {vm}, region: eastus }}, failure: {{ operation: create, code: X, category: internal }} }}, expect: {{ guard: {guard} }} }}\n")
    };
    // Three retries fit the floor of the default retry budget; the fourth is held. The last
    // step expects the wrong guard (`storm`) and fails.
    let cases = format!(
        "cases:\n  - name: s\n    start: 2021-10-13T14:00:00Z\n    steps:\n{}{}{}{}{}",
        step("a", "null"),
        step("b", "null"),
        step("c", "null"),
        step("d", "retry_budget"),
        step("e", "storm"),
    );
    std::fs::write(dir.path().join("p.test.yaml"), &cases).unwrap();
    let r = testing::run(dir.path(), &TestOptions::default()).unwrap();
    let failed: Vec<(String, String, String)> = r
        .steps()
        .flat_map(|s| {
            s.failures
                .iter()
                .map(|m| (m.what.clone(), m.expected.clone(), m.actual.clone()))
        })
        .collect();
    assert_eq!(
        failed,
        vec![("guard".into(), "storm".into(), "retry_budget".into())]
    );
    std::fs::write(
        dir.path().join("p.test.yaml"),
        cases.replace("guard: storm", "guard: stomr"),
    )
    .unwrap();
    let msgs = messages(testing::run(dir.path(), &TestOptions::default()).unwrap_err());
    assert!(
        msgs.iter().any(|m| m.contains("unknown guard `stomr`")),
        "{msgs:?}"
    );
}
