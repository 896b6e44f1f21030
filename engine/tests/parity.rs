//! The native evaluator and the `cel` interpreter agree: random expressions over the natively
//! lowered shapes, on random events, give the same value or both fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;

use keel_engine::__private::parity_check;
use keel_engine::{Event, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Expressions
// ---------------------------------------------------------------------------------------

/// Strategies for expressions of each static type, all fully parenthesized.
#[derive(Clone)]
struct Exprs {
    b: BoxedStrategy<String>,
    i: BoxedStrategy<String>,
    s: BoxedStrategy<String>,
    t: BoxedStrategy<String>,
    d: BoxedStrategy<String>,
}

fn pick(items: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(items)
        .prop_map(str::to_string)
        .boxed()
}

const STR_FIELDS: &[&str] = &[
    "event.failure.code",
    "event.resource.os",
    "event.resource.region",
    "event.resource.name",
    "event.maintenance.type",
    "event.resource.tags.team",
    "event.failure.message",
    "event.id",
];
/// Literal patterns for `matches` (lowered natively with the pattern compiled at load).
const PATTERNS: &[&str] = &[
    "\"^web-[0-9]+$\"",
    "\"Artifact\"",
    "\"\"",
    "\"(?i)WINDOWS\"",
    "\"^$\"",
    "\"a|b\"",
];
const INT_FIELDS: &[&str] = &[
    "event.failure.attempt",
    "event.maintenance.duration_s",
    "event.failure.http_status",
    "event.failure.retry_after_s",
];
const BOOL_FIELDS: &[&str] = &[
    "event.failure.transient",
    "event.maintenance.inferred",
    "event.resource.is_self",
];
const TIME_FIELDS: &[&str] = &[
    "now",
    "event.time",
    "event.maintenance.not_before",
    "event.maintenance.not_after",
];
const HAS: &[&str] = &[
    "has(event.resource.os)",
    "has(event.resource.region)",
    "has(event.resource.tags.team)",
    "has(event.maintenance)",
    "has(event.failure)",
    "has(event.health)",
    "has(event.maintenance.not_before)",
    "has(event.maintenance.duration_s)",
    "has(event.failure.retry_after_s)",
    "has(event.failure.message)",
    "has(event.resource.is_self)",
    "\"team\" in event.resource.tags",
];
/// Includes every value of `maintenance.type` the events use, so that most comparisons with
/// it pass the load-time enum check.
const STR_LITS: &[&str] = &[
    "\"\"",
    "\"windows\"",
    "\"linux\"",
    "\"win\"",
    "\"ux\"",
    "\"eastus2\"",
    "\"east\"",
    "\"reboot\"",
    "\"freeze\"",
    "\"redeploy\"",
    "\"ArtifactVersionNotFound\"",
    "\"Artifact\"",
    "\"team-a\"",
    "\"ü\"",
];
const INT_LITS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "10",
    "600",
    "-1",
    "9223372036854775807",
    "-9223372036854775807",
    "4611686018427387904",
    "3037000500",
];
const TIME_LITS: &[&str] = &[
    "timestamp(\"2021-10-13T14:05:03Z\")",
    "timestamp(\"2021-10-13T16:05:03+02:00\")",
    "timestamp(\"2021-10-13T14:05:00.5Z\")",
    "timestamp(\"1970-01-01T00:00:00Z\")",
    "timestamp(\"0001-01-01T00:00:00Z\")",
    "timestamp(\"9999-12-31T23:59:59Z\")",
    "timestamp(\"9999-12-31T23:59:59.999999999Z\")",
];
const DUR_LITS: &[&str] = &[
    "duration(\"0\")",
    "duration(\"0s\")",
    "duration(\"1s\")",
    "duration(\"90s\")",
    "duration(\"15m\")",
    "duration(\"1h\")",
    "duration(\"1h30m\")",
    "duration(\"1.5h\")",
    "duration(\"-1h\")",
    "duration(\"0.3s\")",
    "duration(\"300ms\")",
    "duration(\"1us\")",
    "duration(\"1ns\")",
    "duration(\"87600h\")",
    "duration(\"2562047h\")",
    "duration(\"-2562047h\")",
];
const OTHER_BOOL: &[&str] = &[
    "true",
    "false",
    "(null == null)",
    "(1.5 < 2.5)",
    "(1u >= 2u)",
    "(2.0 == 2.0)",
];

fn leaves() -> Exprs {
    Exprs {
        b: prop_oneof![pick(OTHER_BOOL), pick(BOOL_FIELDS), pick(HAS)].boxed(),
        i: prop_oneof![pick(INT_FIELDS), pick(INT_LITS)].boxed(),
        s: prop_oneof![pick(STR_FIELDS), pick(STR_LITS)].boxed(),
        t: prop_oneof![pick(TIME_FIELDS), pick(TIME_LITS)].boxed(),
        d: pick(DUR_LITS),
    }
}

fn cmp_op() -> BoxedStrategy<&'static str> {
    proptest::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]).boxed()
}

fn ternary(c: &BoxedStrategy<String>, x: &BoxedStrategy<String>) -> BoxedStrategy<String> {
    (c.clone(), x.clone(), x.clone())
        .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})"))
        .boxed()
}

fn binop(
    a: &BoxedStrategy<String>,
    ops: &'static [&'static str],
    b: &BoxedStrategy<String>,
) -> BoxedStrategy<String> {
    (a.clone(), proptest::sample::select(ops), b.clone())
        .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
        .boxed()
}

fn cmp(x: &BoxedStrategy<String>) -> BoxedStrategy<String> {
    (x.clone(), cmp_op(), x.clone())
        .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
        .boxed()
}

const QUANTIFIERS: &[&str] = &["all", "exists", "exists_one"];
/// A detail's fields (`message` and `target` may be absent: reading one is then an error).
const DETAIL_FIELDS: &[&str] = &["d.code", "d.message", "d.target"];
const DETAIL_HAS: &[&str] = &["has(d.code)", "has(d.message)", "has(d.target)"];
const DETAIL_LITS: &[&str] = &[
    "\"VMExtensionProvisioningError\"",
    "\"ArtifactVersionNotFound\"",
    "\"\"",
    "\"VM\"",
    "\"extensions/agent\"",
];

/// The body of a quantifier over `event.failure.details`: tests of the detail `d`, alone or
/// with a test of the level below (which may read the event, or fail).
fn detail_body(p: &Exprs) -> BoxedStrategy<String> {
    let str_fn = proptest::sample::select(&["startsWith", "endsWith", "contains"][..]);
    let detail_str = prop_oneof![pick(DETAIL_FIELDS), pick(DETAIL_LITS)];
    let atom = prop_oneof![
        (
            pick(DETAIL_FIELDS),
            prop_oneof![pick(DETAIL_LITS), p.s.clone()]
        )
            .prop_map(|(a, b)| format!("({a} == {b})")),
        (pick(DETAIL_FIELDS), str_fn, detail_str).prop_map(|(a, f, b)| format!("{a}.{f}({b})")),
        pick(DETAIL_HAS),
        (pick(DETAIL_FIELDS), pick(PATTERNS)).prop_map(|(a, re)| format!("{a}.matches({re})")),
    ]
    .boxed();
    prop_oneof![
        2 => atom.clone(),
        2 => (atom.clone(), prop::sample::select(&["&&", "||"][..]), prop_oneof![atom.clone(), p.b.clone()])
            .prop_map(|(a, o, b)| format!("({a} {o} {b})")),
        1 => atom.prop_map(|a| format!("!{a}")),
    ]
    .boxed()
}

/// One level deeper: every composite built from the level below, or the level below itself.
fn step(p: &Exprs) -> Exprs {
    let str_list = proptest::collection::vec(pick(STR_LITS), 0..4).prop_map(|v| v.join(", "));
    let int_list = proptest::collection::vec(pick(INT_LITS), 0..4).prop_map(|v| v.join(", "));
    let str_fn = proptest::sample::select(&["startsWith", "endsWith", "contains"][..]);
    Exprs {
        b: prop_oneof![
            3 => p.b.clone(),
            2 => binop(&p.b, &["&&", "||"], &p.b),
            1 => p.b.clone().prop_map(|a| format!("!{a}")),
            1 => ternary(&p.b, &p.b),
            2 => cmp(&p.i),
            2 => cmp(&p.s),
            2 => cmp(&p.t),
            1 => cmp(&p.d),
            1 => binop(&p.b, &["==", "!=", "<", ">="], &p.b),
            1 => (p.i.clone(), int_list).prop_map(|(a, l)| format!("({a} in [{l}])")),
            1 => (p.s.clone(), str_list).prop_map(|(a, l)| format!("({a} in [{l}])")),
            1 => (p.s.clone(), str_fn, p.s.clone())
                .prop_map(|(a, f, b)| format!("{a}.{f}({b})")),
            1 => (pick(QUANTIFIERS), detail_body(p))
                .prop_map(|(q, body)| format!("event.failure.details.{q}(d, {body})")),
            1 => (p.s.clone(), pick(PATTERNS), any::<bool>()).prop_map(|(a, re, method)| {
                if method {
                    format!("{a}.matches({re})")
                } else {
                    format!("matches({a}, {re})")
                }
            }),
        ]
        .boxed(),
        i: prop_oneof![
            3 => p.i.clone(),
            2 => binop(&p.i, &["+", "-", "*"], &p.i),
            1 => ternary(&p.b, &p.i),
        ]
        .boxed(),
        s: prop_oneof![
            3 => p.s.clone(),
            1 => binop(&p.s, &["+"], &p.s),
            1 => ternary(&p.b, &p.s),
        ]
        .boxed(),
        t: prop_oneof![
            3 => p.t.clone(),
            2 => binop(&p.t, &["+", "-"], &p.d),
            1 => binop(&p.d, &["+"], &p.t),
            1 => ternary(&p.b, &p.t),
        ]
        .boxed(),
        d: prop_oneof![
            3 => p.d.clone(),
            2 => binop(&p.t, &["-"], &p.t),
            2 => binop(&p.d, &["+", "-"], &p.d),
            1 => ternary(&p.b, &p.d),
        ]
        .boxed(),
    }
}

fn exprs(depth: usize) -> Exprs {
    let mut e = leaves();
    for _ in 0..depth {
        e = step(&e);
    }
    e
}

/// A boolean expression most of the time (what a `when` is), sometimes another type.
fn expression() -> BoxedStrategy<String> {
    let e = exprs(4);
    prop_oneof![6 => e.b, 1 => e.i, 1 => e.s, 1 => e.t, 1 => e.d].boxed()
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

/// Times inside CEL's range, at its edges, and a year 0000 one that is outside it.
const TIMES: &[&str] = &[
    "2021-10-13T14:05:00Z",
    "2021-10-13T14:05:03Z",
    "2021-10-13T15:00:00.123456789Z",
    "2021-10-13T14:05:03+02:00",
    "1970-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0000-06-01T00:00:00Z",
];

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    proptest::option::weighted(0.7, s).boxed()
}

fn time() -> BoxedStrategy<String> {
    pick(TIMES)
}

fn insert(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v);
    }
}

fn resource() -> impl Strategy<Value = Value> {
    (
        opt(pick(&["windows", "linux", "", "Windows"])),
        opt(pick(&["eastus2", "westeurope", ""])),
        opt(pick(&["web-1", "win-east"])),
        proptest::sample::select(&[0u8, 1, 2][..]),
        opt(any::<bool>()),
    )
        .prop_map(|(os, region, name, tags, is_self)| {
            let mut m = Map::new();
            insert(&mut m, "os", os.map(Value::from));
            insert(&mut m, "region", region.map(Value::from));
            insert(&mut m, "name", name.map(Value::from));
            insert(&mut m, "is_self", is_self.map(Value::from));
            match tags {
                1 => insert(&mut m, "tags", Some(json!({"team": "team-a"}))),
                2 => insert(&mut m, "tags", Some(json!({"other": "x", "team": ""}))),
                _ => {}
            }
            Value::Object(m)
        })
}

fn int_value() -> BoxedStrategy<i64> {
    prop_oneof![
        0i64..700,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(-1i64),
        Just(4_611_686_018_427_387_904i64),
    ]
    .boxed()
}

fn maintenance() -> impl Strategy<Value = Value> {
    (
        pick(&["reboot", "freeze", "redeploy"]),
        opt(time()),
        opt(time()),
        opt(int_value()),
        any::<bool>(),
    )
        .prop_map(|(ty, nb, na, dur, inferred)| {
            let mut m = Map::new();
            m.insert("type".into(), ty.into());
            m.insert("status".into(), "scheduled".into());
            insert(&mut m, "not_before", nb.map(Value::from));
            insert(&mut m, "not_after", na.map(Value::from));
            insert(&mut m, "duration_s", dur.map(Value::from));
            m.insert("inferred".into(), inferred.into());
            Value::Object(m)
        })
}

fn failure() -> impl Strategy<Value = Value> {
    (
        pick(&["ArtifactVersionNotFound", "Artifact", "", "X"]),
        int_value(),
        opt(int_value()),
        opt(int_value()),
        any::<bool>(),
        opt(pick(&["the artifact was not found", ""])),
        proptest::collection::vec(
            (
                pick(&[
                    "VMExtensionProvisioningError",
                    "ArtifactVersionNotFound",
                    "",
                ]),
                opt(pick(&["extensions/agent failed", ""])),
                opt(pick(&["extensions/agent", "VM"])),
            ),
            0..4,
        ),
    )
        .prop_map(
            |(code, attempt, http, retry_after, transient, message, details)| {
                let mut m = Map::new();
                m.insert("operation".into(), "create".into());
                m.insert("code".into(), code.into());
                m.insert("category".into(), "vm_agent".into());
                m.insert("attempt".into(), attempt.into());
                insert(&mut m, "http_status", http.map(Value::from));
                insert(&mut m, "retry_after_s", retry_after.map(Value::from));
                m.insert("transient".into(), transient.into());
                insert(&mut m, "message", message.map(Value::from));
                let details: Vec<Value> = details
                    .into_iter()
                    .map(|(code, message, target)| {
                        let mut d = Map::new();
                        d.insert("code".into(), code.into());
                        insert(&mut d, "message", message.map(Value::from));
                        insert(&mut d, "target", target.map(Value::from));
                        Value::Object(d)
                    })
                    .collect();
                m.insert("details".into(), details.into());
                Value::Object(m)
            },
        )
}

/// An event with each section present or not, whatever its kind says.
fn event() -> impl Strategy<Value = Event> {
    (
        pick(&["maintenance", "health", "operation_failure"]),
        time(),
        resource(),
        opt(maintenance()),
        opt(failure()),
        any::<bool>(),
    )
        .prop_map(|(kind, time, resource, m, f, health)| {
            let mut ev = json!({
                "id": "ingest:1",
                "time": time,
                "source": "ingest",
                "kind": kind,
                "resource": resource,
            });
            if let Some(m) = m {
                ev["maintenance"] = m;
            }
            if let Some(f) = f {
                ev["failure"] = f;
            }
            if health {
                ev["health"] = json!({"state": "degraded"});
            }
            Event::from_json_str(&ev.to_string()).unwrap()
        })
}

fn now() -> impl Strategy<Value = Timestamp> {
    time().prop_map(|t| t.parse::<Timestamp>().unwrap())
}

// ---------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------

/// Checks one expression on one event; `Ok(false)` when it is not lowered natively.
fn agree(expr: &str, ev: &Event, now: Timestamp) -> Result<bool, TestCaseError> {
    let Some((native, interp)) = parity_check(expr, ev, now) else {
        return Ok(false);
    };
    match (&native, &interp) {
        (Ok(a), Ok(b)) => prop_assert_eq!(
            a,
            b,
            "different values for {}\non {:?}\nat {}",
            expr,
            ev,
            now
        ),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(
            false,
            "native {:?} but interpreter {:?} for {}\non {:?}\nat {}",
            native,
            interp,
            expr,
            ev,
            now
        ),
    }
    Ok(true)
}

#[test]
fn native_and_interpreter_agree_on_random_expressions() {
    // PROPTEST_CASES raises the count for a longer search.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let total = Cell::new(0usize);
    let lowered = Cell::new(0usize);
    let evaluated = Cell::new(0usize);
    let strategy = (expression(), proptest::collection::vec((event(), now()), 4));
    let result = runner.run(&strategy, |(expr, cases)| {
        total.set(total.get() + 1);
        let mut native = false;
        for (ev, now) in &cases {
            native = agree(&expr, ev, now.to_owned())?;
            if !native {
                break;
            }
            evaluated.set(evaluated.get() + 1);
        }
        if native {
            lowered.set(lowered.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (total, lowered) = (total.get(), lowered.get());
    eprintln!(
        "{lowered} of {total} expressions lowered natively, {} evaluations compared",
        evaluated.get()
    );
    assert!(total >= cases as usize);
    assert!(
        lowered * 100 >= total * 80,
        "only {lowered} of {total} generated expressions were lowered natively"
    );
}

/// The generator is not vacuous: it produces both outcomes, errors on both sides, and every
/// type.
#[test]
fn generator_covers_values_and_errors() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let seen_true = Cell::new(false);
    let seen_false = Cell::new(false);
    let seen_err = Cell::new(false);
    let seen_other = Cell::new(false);
    runner
        .run(&(expression(), event(), now()), |(expr, ev, now)| {
            if let Some((n, _)) = parity_check(&expr, &ev, now) {
                match n.as_deref() {
                    Ok("Bool(true)") => seen_true.set(true),
                    Ok("Bool(false)") => seen_false.set(true),
                    Ok(_) => seen_other.set(true),
                    Err(_) => seen_err.set(true),
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(seen_true.get() && seen_false.get() && seen_err.get() && seen_other.get());
}

// ---------------------------------------------------------------------------------------
// Hand-picked cases, including the edges the random search found
// ---------------------------------------------------------------------------------------

fn sample_event(extra: Value) -> Event {
    let mut ev = json!({
        "id": "azure.arm:op-1",
        "time": "2021-10-13T14:05:00Z",
        "source": "azure.arm",
        "kind": "operation_failure",
        "resource": {"os": "windows", "region": "eastus2", "tags": {"team": "team-a"}},
        "failure": {"operation": "create", "code": "ArtifactVersionNotFound",
                    "category": "vm_agent", "attempt": 1}
    });
    for (k, v) in extra.as_object().unwrap() {
        ev[k] = v.clone();
    }
    Event::from_json_str(&ev.to_string()).unwrap()
}

/// `expr` is lowered natively, and both evaluators give `want` (`None`: both fail).
fn expect(expr: &str, ev: &Event, now: Timestamp, want: Option<&str>) {
    let (native, interp) =
        parity_check(expr, ev, now).unwrap_or_else(|| panic!("{expr} is not lowered natively"));
    match (&native, &interp, want) {
        (Ok(a), Ok(b), Some(w)) => {
            assert_eq!(a, b, "{expr}");
            assert_eq!(a, w, "{expr}");
        }
        (Err(_), Err(_), None) => {}
        _ => panic!("{expr}: native {native:?}, interpreter {interp:?}, want {want:?}"),
    }
}

#[test]
fn hand_picked_expressions_agree() {
    let ev = sample_event(json!({}));
    let now: Timestamp = "2021-10-13T14:05:03Z".parse().unwrap();
    // (expression, expected native outcome: Some(value) or None for an error)
    let cases: &[(&str, Option<&str>)] = &[
        ("event.resource.os == \"windows\"", Some("Bool(true)")),
        ("event.resource.zone == \"1\"", None),
        // `&&` and `||` absorb an error when the other side decides.
        ("event.resource.zone == \"1\" && false", Some("Bool(false)")),
        ("false && event.resource.zone == \"1\"", Some("Bool(false)")),
        ("event.resource.zone == \"1\" || true", Some("Bool(true)")),
        ("true || event.resource.zone == \"1\"", Some("Bool(true)")),
        ("event.resource.zone == \"1\" && true", None),
        ("event.resource.zone == \"1\" || false", None),
        (
            "has(event.resource.zone) && event.resource.zone == \"1\"",
            Some("Bool(false)"),
        ),
        ("has(event.maintenance.type)", None),
        ("has(event.maintenance)", Some("Bool(false)")),
        ("\"team\" in event.resource.tags", Some("Bool(true)")),
        (
            "event.resource.tags.team.startsWith(\"team\")",
            Some("Bool(true)"),
        ),
        ("event.resource.tags.owner == \"x\"", None),
        (
            "event.failure.code.matches(\"^Artifact\")",
            Some("Bool(true)"),
        ),
        (
            "matches(event.failure.code, \"Found$\")",
            Some("Bool(true)"),
        ),
        ("event.resource.zone.matches(\"1\")", None),
        ("event.failure.attempt in [1, 2]", Some("Bool(true)")),
        ("event.failure.code in []", Some("Bool(false)")),
        (
            "!(event.failure.attempt > 1) ? \"first\" : \"again\"",
            Some("Str(\"first\")"),
        ),
        ("event.failure.attempt + 9223372036854775807", None),
        ("event.failure.attempt * 2 - 3", Some("Int(-1)")),
        (
            "now - event.time",
            Some("Dur(TimeDelta { secs: 3, nanos: 0 })"),
        ),
        ("now > event.time + duration(\"2s\")", Some("Bool(true)")),
        ("duration(\"0\") == duration(\"0s\")", Some("Bool(true)")),
        (
            "duration(\"1.5h\") == duration(\"1h30m\")",
            Some("Bool(true)"),
        ),
        (
            "duration(\"0.3s\") == duration(\"300ms\")",
            Some("Bool(true)"),
        ),
        ("true < false", Some("Bool(false)")),
        ("\"ü\" > \"z\"", Some("Bool(true)")),
        // CEL's timestamp range ends at year 9999 and starts at year 1; durations fit an
        // i64 of nanoseconds. Arithmetic past either fails in both evaluators.
        (
            "timestamp(\"9999-12-31T23:59:59Z\") + duration(\"1s\") > now",
            None,
        ),
        (
            "timestamp(\"0001-01-01T00:00:00Z\") - duration(\"1s\") < now",
            None,
        ),
        (
            "duration(\"1s\") + timestamp(\"9999-12-31T23:59:59Z\") > now",
            None,
        ),
        (
            "now - timestamp(\"0001-01-01T00:00:00Z\") > duration(\"1h\")",
            None,
        ),
        (
            "duration(\"2562047h\") + duration(\"2562047h\") > duration(\"1h\")",
            None,
        ),
        (
            "duration(\"-2562047h\") - duration(\"2562047h\") < duration(\"1h\")",
            None,
        ),
        (
            "timestamp(\"9999-12-31T23:59:59Z\") - duration(\"1s\") > now",
            Some("Bool(true)"),
        ),
    ];
    for (expr, want) in cases {
        expect(expr, &ev, now, *want);
    }
}

/// Quantifiers over `failure.details` run natively with the interpreter's handling of
/// errors: `exists` and `all` keep an error pending until an element decides, `exists_one`
/// fails at the first.
#[test]
fn quantifiers_over_details_agree() {
    let now: Timestamp = "2021-10-13T14:05:03Z".parse().unwrap();
    let failure = |details: Value| {
        json!({"failure": {"operation": "create", "code": "VMExtensionProvisioningError",
            "category": "vm_agent", "attempt": 1, "details": details}})
    };
    let two = sample_event(failure(json!([
        {"code": "VMExtensionProvisioningError", "message": "x"},
        {"code": "ArtifactVersionNotFound", "target": "extensions/agent"}
    ])));
    let none = sample_event(failure(json!([])));
    let no_failure = sample_event(json!({"kind": "health", "failure": null,
        "health": {"state": "degraded"}}));
    let q = |body: &str, q: &str| format!("event.failure.details.{q}(d, {body})");
    let cases: Vec<(&Event, String, Option<&str>)> = vec![
        (
            &two,
            q("d.code == \"ArtifactVersionNotFound\"", "exists"),
            Some("Bool(true)"),
        ),
        (
            &two,
            q("d.code.startsWith(\"V\")", "all"),
            Some("Bool(false)"),
        ),
        (
            &two,
            q("d.code.startsWith(\"V\")", "exists_one"),
            Some("Bool(true)"),
        ),
        (&two, q("has(d.message)", "exists_one"), Some("Bool(true)")),
        (&two, q("has(d.code)", "all"), Some("Bool(true)")),
        (
            &two,
            q("d.target == \"extensions/agent\"", "exists"),
            Some("Bool(true)"),
        ),
        // The first detail decides before the second fails.
        (&two, q("d.message == \"x\"", "exists"), Some("Bool(true)")),
        (&two, q("d.message == \"nope\"", "all"), Some("Bool(false)")),
        // The second fails and nothing decides: the error stands.
        (&two, q("d.message == \"x\"", "all"), None),
        (&two, q("d.message == \"nope\"", "exists"), None),
        (&two, q("d.message == \"x\"", "exists_one"), None),
        // An error absorbed inside the body is no error.
        (
            &two,
            q("has(d.message) && d.message == \"x\"", "exists_one"),
            Some("Bool(true)"),
        ),
        (
            &two,
            q("d.code == event.failure.code", "exists_one"),
            Some("Bool(true)"),
        ),
        (&none, q("d.code == \"X\"", "exists"), Some("Bool(false)")),
        (&none, q("d.code == \"X\"", "all"), Some("Bool(true)")),
        (
            &none,
            q("d.code == \"X\"", "exists_one"),
            Some("Bool(false)"),
        ),
        (&no_failure, q("d.code == \"X\"", "exists"), None),
    ];
    for (ev, expr, want) in &cases {
        expect(expr, ev, now, *want);
    }
}

#[test]
fn event_times_outside_cel_range_agree() {
    // Year 0000 is valid RFC 3339 but before CEL's first timestamp.
    let ev = sample_event(json!({"time": "0000-06-01T00:00:00Z"}));
    let now: Timestamp = "2021-10-13T14:05:03Z".parse().unwrap();
    for expr in [
        "event.time < now",
        "event.time + duration(\"1h\") < now",
        "event.time - duration(\"1h\") < now",
        "now - event.time > duration(\"1h\")",
        "event.time == timestamp(\"0001-01-01T00:00:00Z\")",
    ] {
        let (n, i) = parity_check(expr, &ev, now).unwrap();
        assert_eq!(n.is_ok(), i.is_ok(), "{expr}: {n:?} vs {i:?}");
        if let (Ok(a), Ok(b)) = (&n, &i) {
            assert_eq!(a, b, "{expr}");
        }
    }
}

#[test]
fn out_of_range_timestamp_literals_are_not_lowered() {
    let ev = sample_event(json!({}));
    let now: Timestamp = "2021-10-13T14:05:03Z".parse().unwrap();
    assert!(parity_check("timestamp(\"0000-01-01T00:00:00Z\") < now", &ev, now).is_none());
    // ... and are load errors.
    let err = keel_engine::Engine::builder()
        .add_source(
            "t.yaml",
            "policies:\n  - name: a\n    on: [maintenance]\n    when: now > timestamp(\"0000-01-01T00:00:00Z\")\n    action: none\n",
        )
        .build()
        .unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.line(), d.column()), (4, 27));
    assert!(d.message().contains("out of range"), "{d}");
}

#[test]
fn interpreter_fallback_is_reported_as_not_lowered() {
    let ev = sample_event(json!({}));
    let now: Timestamp = "2021-10-13T14:05:03Z".parse().unwrap();
    for expr in [
        "event.failure.details.exists(d, size(d.code) > 3)",
        "event.failure.details.exists(event, event.code == \"X\")",
        "event.failure.details.map(d, d.code).exists(c, c == \"X\")",
        "event.failure.details.exists(d, d.code == \"X\" && [1].all(x, x > 0))",
        "event.failure.details.exists(d, d == {\"code\": \"X\"})",
        "event.failure.code.matches(event.resource.os)",
        "size(event.failure.code) > 3",
        "event.failure.attempt / 2 == 0",
        "event.failure.attempt == 1u",
    ] {
        assert!(parity_check(expr, &ev, now).is_none(), "{expr}");
    }
    // Does not compile at all.
    assert!(parity_check("event.failure.attempt ==", &ev, now).is_none());
}

#[test]
fn string_conversion_matches_the_interpreter() {
    let ev = keel_engine::Event::from_json_str(
        r#"{"id":"e","time":"2021-10-13T14:05:00Z","source":"azure.arm","kind":"operation_failure",
        "failure":{"operation":"create","code":"X","category":"internal","attempt":3}}"#,
    )
    .unwrap();
    let now = ev.time;
    for expr in [
        r#"string(event.failure.attempt) == "3""#,
        r#"string(event.failure.code) + "!" == "X!""#,
        r#""attempt " + string(event.failure.attempt) == "attempt 3""#,
    ] {
        let (native, interp) =
            keel_engine::__private::parity_check(expr, &ev, now).expect("lowered natively");
        assert_eq!(native, interp, "{expr}");
        assert_eq!(native.as_deref(), Ok("Bool(true)"), "{expr}");
    }
}
