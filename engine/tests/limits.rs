//! Hostile expressions: deep nesting never exhausts the stack, at load or at decide time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_engine::{Action, Ctx, Engine, Event, LoadError};

fn policy(when: &str) -> String {
    format!(
        "policies:\n  - name: p\n    on: [operation_failure]\n    when: '{}'\n    action: retry\n",
        when.replace('\'', "''")
    )
}

fn load(when: &str) -> Result<Engine, LoadError> {
    Engine::builder().add_source("p.yaml", policy(when)).build()
}

fn event() -> Event {
    Event::from_json_str(
        r#"{"id":"e","time":"2021-10-13T14:05:00Z","source":"azure.arm","kind":"operation_failure",
        "resource":{"name":"web-1","os":"windows"},
        "failure":{"operation":"create","code":"X","category":"vm_agent","attempt":1}}"#,
    )
    .unwrap()
}

/// Runs `f` on a thread with a 2 MiB stack, the default of Rust threads and tokio workers.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn first_message(e: &LoadError) -> String {
    e.diagnostics()[0].message().to_string()
}

#[test]
fn deep_brackets_are_a_load_error_not_a_crash() {
    for n in [30, 200, 2000] {
        let when = format!("{}true{}", "(".repeat(n), ")".repeat(n));
        let err = on_small_stack(move || load(&when).unwrap_err());
        assert!(
            first_message(&err).contains("brackets nested more than 24 levels deep"),
            "{n}: {err}"
        );
        assert_eq!(err.diagnostics()[0].line(), 4);
    }
}

#[test]
fn moderately_nested_expressions_load_and_decide_on_a_small_stack() {
    // 20 bracket levels load (on the loader's own thread), and a 40-deep chain is decided on a
    // 512 KiB stack, natively and in the interpreter.
    let nested = format!(
        "{}event.failure.attempt{} == 1",
        "(".repeat(20),
        ")".repeat(20)
    );
    // The deepest chain the loader accepts (depth 48).
    let chain = format!("size(event.resource.name{}) > 0", " + \"a\"".repeat(43));
    for when in [nested, chain] {
        let d = on_small_stack(move || {
            let engine = load(&when).unwrap();
            engine.decide(&event(), &Ctx::new(event().time))
        });
        assert_eq!(d.action, Action::Retry);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }
}

#[test]
fn long_operator_chains_are_a_load_error() {
    let when = format!("1{} == 1", " + 1".repeat(1000));
    let err = on_small_stack(move || load(&when).unwrap_err());
    assert!(
        first_message(&err).contains("operations deep; the limit is 48"),
        "{err}"
    );
}

#[test]
fn unary_runs_and_huge_expressions_are_load_errors() {
    let err = load(&format!("{}true", "!".repeat(50))).unwrap_err();
    assert!(first_message(&err).contains("`!` or `-` in a row"), "{err}");
    let err = load(&format!("event.failure.code == \"{}\"", "x".repeat(5000))).unwrap_err();
    assert!(first_message(&err).contains("the limit is 4096"), "{err}");
    // Brackets inside string literals do not count.
    load(&format!("event.failure.code != \"{}\"", "(".repeat(100))).unwrap();
}

#[test]
fn positions_point_at_the_name_in_has_and_method_calls() {
    let err = load(r#"has(event.resource.oss) && event.resource.name.startWith("x")"#).unwrap_err();
    let d = err.diagnostics();
    assert_eq!(d.len(), 2, "{err}");
    // `    when: '` is 11 characters; `has(event.resource.` 19 more.
    assert_eq!((d[0].line(), d[0].column()), (4, 31), "{err}");
    assert!(d[0].message().contains("unknown field `oss`"));
    assert_eq!(d[0].help(), Some("did you mean `os`?"));
    assert_eq!((d[1].line(), d[1].column()), (4, 59), "{err}");
    assert!(d[1].message().contains("unknown function `startWith`"));
}

#[test]
fn shape_and_expression_problems_of_one_policy_are_all_reported() {
    let yaml = "policies:\n  - name: p\n    on: [operation_failure]\n    when: event.failure.cod == \"X\"\n    action: retry\n    params: { deadline_s: 5 }\n";
    let err = Engine::builder()
        .add_source("p.yaml", yaml)
        .build()
        .unwrap_err();
    let msgs: Vec<&str> = err.diagnostics().iter().map(|d| d.message()).collect();
    assert_eq!(msgs.len(), 2, "{err}");
    assert!(
        msgs.iter().any(|m| m.contains("unknown field `cod`")),
        "{err}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("unknown key `deadline_s`")),
        "{err}"
    );
}
