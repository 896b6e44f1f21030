//! Evaluation cost budget: comprehensions over large event collections, or lists a policy
//! builds itself, stop at `MAX_EVAL_COST` with an error in `Decision.errors`; the policy does
//! not match and the others still resolve. Normal policies are unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_engine::{Action, Ctx, Decision, Engine, Event, LoadError, MAX_EVAL_COST};

/// Policy `costly` (priority 10) with `when`, and `plain` (priority 1), natively evaluated,
/// which matches every test event.
fn engine(when: &str) -> Result<Engine, LoadError> {
    let yaml = format!(
        "policies:\n  - name: costly\n    on: [operation_failure]\n    when: '{}'\n    action: retry_without_agent\n    priority: 10\n  - name: plain\n    on: [operation_failure]\n    when: event.failure.attempt == 1\n    action: retry\n    priority: 1\n",
        when.replace('\'', "''")
    );
    Engine::builder().add_source("p.yaml", yaml).build()
}

/// An operation failure with `tags` tags (`t0`…) and `details` failure details.
fn event(tags: usize, details: usize) -> Event {
    let tags: Vec<String> = (0..tags).map(|i| format!("\"t{i}\":\"v{i}\"")).collect();
    let details: Vec<String> = (0..details)
        .map(|i| format!("{{\"code\":\"C{i}\"}}"))
        .collect();
    Event::from_json_str(&format!(
        r#"{{"id":"e","time":"2021-10-13T14:05:00Z","source":"azure.arm","kind":"operation_failure",
        "resource":{{"name":"web-1","os":"windows","tags":{{{}}}}},
        "failure":{{"operation":"create","code":"X","category":"vm_agent","attempt":1,
                    "details":[{}]}}}}"#,
        tags.join(","),
        details.join(",")
    ))
    .unwrap()
}

fn decide(when: &str, ev: &Event) -> Decision {
    engine(when).unwrap().decide(ev, &Ctx::new(ev.time))
}

/// The costly policy errored on the budget, did not match, and `plain` decided.
fn assert_over_budget(d: &Decision) {
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert_eq!(d.errors[0].policy, "costly");
    assert!(
        d.errors[0].message.contains("cost budget exceeded"),
        "{:?}",
        d.errors
    );
    assert_eq!(d.action, Action::Retry);
    assert_eq!(d.policy.as_deref(), Some("plain"));
}

#[test]
fn a_nested_all_over_a_hundred_thousand_element_list_is_an_error_entry() {
    let ev = event(0, 100_000);
    let d = decide(
        "event.failure.details.all(a, event.failure.details.all(b, a.code != \"\" && b.code != \"\"))",
        &ev,
    );
    assert_over_budget(&d);
}

#[test]
fn a_nested_exists_over_a_hundred_thousand_tags_is_an_error_entry() {
    // `exists` absorbs errors of its predicate (`error || true` is true): the budget error
    // stands anyway.
    let ev = event(100_000, 0);
    let d = decide(
        "event.resource.tags.exists(k, event.resource.tags.exists(j, j == \"none\") || k == \"t99999\")",
        &ev,
    );
    assert_over_budget(&d);
}

#[test]
fn a_policy_building_a_huge_list_is_an_error_entry() {
    let ev = event(2_000, 0);
    let d = decide(
        "size(event.resource.tags.map(k, event.resource.tags.map(j, k + j))) > 0",
        &ev,
    );
    assert_over_budget(&d);
    // A list of copies of the event's list.
    let ev = event(0, 5_000);
    let d = decide(
        "size(event.failure.details.map(d, event.failure.details)) > 0",
        &ev,
    );
    assert_over_budget(&d);
    // Concatenation in a loop: every element copies the whole list.
    let ev = event(0, 5_000);
    let d = decide(
        "event.failure.details.exists(d, size(event.failure.details + event.failure.details) == 0)",
        &ev,
    );
    assert_over_budget(&d);
}

#[test]
fn nests_over_literal_lists_beyond_the_budget_are_load_errors() {
    let list = format!(
        "[{}]",
        (0..100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let when = format!("{list}.all(a, {list}.all(b, {list}.all(c, a + b + c >= 0)))");
    let err = engine(&when).unwrap_err();
    assert!(
        err.diagnostics()[0]
            .message()
            .contains(&format!("the evaluation cost budget is {MAX_EVAL_COST}")),
        "{err}"
    );
    // Two levels (ten thousand elements) load and decide.
    let when = format!("{list}.all(a, {list}.all(b, a + b >= 0))");
    let d = decide(&when, &event(0, 0));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.policy.as_deref(), Some("costly"));
}

#[test]
fn comprehensions_within_the_budget_decide_as_before() {
    // One pass over a hundred thousand elements fits.
    let ev = event(100_000, 100_000);
    for when in [
        "event.resource.tags.exists(k, k == \"t99999\")",
        "event.failure.details.all(d, d.code.startsWith(\"C\"))",
        "size(event.failure.details.filter(d, d.code == \"C7\")) == 1",
        "event.failure.details.exists_one(d, d.code == \"C7\")",
        "size(event.failure.details.map(d, d.code)) == 100000",
    ] {
        let d = decide(when, &ev);
        assert!(d.errors.is_empty(), "{when}: {:?}", d.errors);
        assert_eq!(d.policy.as_deref(), Some("costly"), "{when}");
    }
    // Small events, nested comprehensions, errors absorbed as before.
    let ev = event(20, 20);
    for (when, matches) in [
        ("event.resource.tags.all(k, event.resource.tags.exists(j, j == k))", true),
        ("event.failure.details.exists(d, d.code == \"C3\") && event.resource.tags.exists(k, k == \"t3\")", true),
        ("event.resource.tags.exists(k, k == \"nope\")", false),
        ("[1, 2, 3].map(x, x * 2) == [2, 4, 6]", true),
        ("[0, 1].exists(x, 1 / x == 1)", true),
    ] {
        let d = decide(when, &ev);
        assert!(d.errors.is_empty(), "{when}: {:?}", d.errors);
        let want = if matches { "costly" } else { "plain" };
        assert_eq!(d.policy.as_deref(), Some(want), "{when}");
    }
}
